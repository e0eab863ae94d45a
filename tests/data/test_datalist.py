from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from monai_uda.data.datalist import Datalist, check_unique_stems, export_split, get_split, load_datalist, write_datalist
from monai_uda.errors import UDAInputError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def _dataset(tmp_path: Path, content: object) -> Path:
    """A dataset folder with two images, one label and ``datalist.json`` holding ``content``."""
    root = tmp_path / "ds"
    _touch(root / "images" / "a.png")
    _touch(root / "images" / "b.png")
    _touch(root / "labels" / "a.tif")
    file = root / "datalist.json"
    file.write_text(content if isinstance(content, str) else json.dumps(content))
    return file


def _error(path: Path | str, base_dir: Path | None = None) -> str:
    with pytest.raises(UDAInputError) as info:
        load_datalist(path, base_dir)
    return str(info.value)


def test_load_resolves_paths_from_file_or_folder(tmp_path):
    file = _dataset(
        tmp_path,
        {
            "source": [{"image": "images/a.png", "label": "labels/a.tif", "id": 7}],
            "target": [{"image": "./images/../images/b.png"}],
        },
    )
    root = file.parent.resolve()
    for given in (file, file.parent, str(file)):
        datalist = load_datalist(given)
        assert isinstance(datalist, Datalist) and datalist.path == file
        assert datalist["source"] == [
            {"image": str(root / "images" / "a.png"), "label": str(root / "labels" / "a.tif"), "id": 7}
        ]
        assert datalist["target"] == [{"image": str(root / "images" / "b.png")}]
        assert datalist["validation"] == [] and datalist["test"] == []


def test_load_reads_absolute_and_parent_paths_outside_the_folder(tmp_path):
    outside = _touch(tmp_path / "elsewhere" / "c.png")
    file = _dataset(
        tmp_path,
        {"source": [{"image": str(outside), "label": "../elsewhere/c.png"}], "target": [{"image": "images/b.png"}]},
    )
    datalist = load_datalist(file)
    assert datalist["source"] == [{"image": str(outside.resolve()), "label": str(outside.resolve())}]
    assert datalist["target"] == [{"image": str(file.parent.resolve() / "images" / "b.png")}]


def test_load_reads_relative_paths_from_base_dir(tmp_path, monkeypatch):
    data = tmp_path / "store"
    image, label = _touch(data / "img" / "a.png"), _touch(data / "lab" / "a.tif")
    file = _dataset(
        tmp_path, {"source": [{"image": "img/a.png", "label": "lab/a.tif"}], "test": [{"image": "../store/img/a.png"}]}
    )
    expected = {"image": str(image.resolve()), "label": str(label.resolve())}
    assert load_datalist(file, data)["source"] == [expected]
    assert load_datalist(file, str(data))["test"] == [{"image": str(image.resolve())}]  # '..' from base_dir
    monkeypatch.chdir(tmp_path)  # a relative base_dir is read from the working folder, as MONAI does
    assert load_datalist(file, Path("store"))["source"] == [expected]
    hint = "(relative to the datalist's folder; data_root reads from another)"
    assert _error(file) == f"{file}: 'source' item 0 image 'img/a.png' does not exist {hint}"
    file.write_text(json.dumps({"source": [{"image": str(data / "gone.png")}]}))
    assert _error(file, tmp_path) == f"{file}: 'source' item 0 image '{data / 'gone.png'}' does not exist"
    file.write_text(json.dumps({"source": [{"image": "img/a.png"}]}))
    assert _error(file, tmp_path) == f"{file}: 'source' item 0 image 'img/a.png' does not exist in data_root {tmp_path}"
    assert (
        _error(file, tmp_path / "nope")
        == f"{tmp_path / 'nope'}: data_root is not a folder (relative datalist paths are read from it)"
    )
    assert _error(file, image) == f"{image}: data_root is not a folder (relative datalist paths are read from it)"


def test_load_refuses_what_is_not_a_regular_file(tmp_path):
    file = _dataset(tmp_path, {"source": [{"image": "images"}]})
    assert _error(file) == f"{file}: 'source' item 0 image 'images' is not a regular file (a folder, device or pipe)"
    file.write_text(json.dumps({"source": [{"image": "images/a.png", "label": "/dev/null"}]}))
    assert _error(file) == f"{file}: 'source' item 0 label '/dev/null' is not a regular file (a folder, device or pipe)"
    os.mkfifo(file.parent / "pipe.png")
    file.write_text(json.dumps({"target": [{"image": "pipe.png"}]}))
    assert _error(file) == f"{file}: 'target' item 0 image 'pipe.png' is not a regular file (a folder, device or pipe)"
    os.symlink(tmp_path / "gone.png", file.parent / "dangling.png")
    file.write_text(json.dumps({"target": [{"image": "dangling.png"}]}))
    assert _error(file).startswith(f"{file}: 'target' item 0 image 'dangling.png' does not exist (relative to")


def test_load_errors_name_the_file_and_reason(tmp_path):
    file = _dataset(tmp_path, {})
    file.write_text(json.dumps({"target": [{"image": "images/a.png"}, {"image": "images/missing.png"}]}))
    assert (
        _error(file)
        == f"{file}: 'target' item 1 image 'images/missing.png' does not exist "
        "(relative to the datalist's folder; data_root reads from another)"
    )
    file.write_text(json.dumps({"source": [], "target": []}))
    assert _error(file) == f"{file}: empty datalist"
    file.write_text(json.dumps({}))
    assert _error(file) == f"{file}: empty datalist"
    file.write_text('{"source": [\n  {"image": "images/a.png"},\n]}')
    assert _error(file).startswith(f"{file}: invalid JSON (line 3, column 1")
    file.write_text(json.dumps({"training": [{"image": "images/a.png"}]}))
    assert _error(file) == f"{file}: unknown key 'training' (expected: source, target, validation, test)"
    file.write_text(json.dumps({"source": [{"label": "labels/a.tif"}]}))
    assert _error(file) == f"{file}: 'source' item 0 has no 'image'"
    file.write_text(json.dumps({"source": {"image": "images/a.png"}}))
    assert _error(file) == f"{file}: 'source' must be a list of items, got dict"
    file.write_text(json.dumps([{"image": "images/a.png"}]))
    assert "expected a JSON object" in _error(file)
    file.write_text(json.dumps({"source": [{"image": 3}]}))
    assert _error(file) == f"{file}: 'source' item 0 image must be a non-empty path string, got 3"
    assert _error(tmp_path / "nope.json") == f"{tmp_path / 'nope.json'}: datalist file does not exist"
    assert _error(tmp_path) == f"{tmp_path}: folder has no datalist.json"


def test_load_keeps_the_name_of_a_symlinked_file(tmp_path):
    target = _touch(tmp_path / "elsewhere" / "blob-1234")
    file = _dataset(tmp_path, {"source": [{"image": "images/c.png"}]})
    os.symlink(target, file.parent / "images" / "c.png")  # e.g. a content-addressed store: outputs are named c
    assert load_datalist(file)["source"] == [{"image": str(file.parent.resolve() / "images" / "c.png")}]


def test_get_split(tmp_path):
    file = _dataset(
        tmp_path,
        {"source": [{"image": "images/a.png", "label": "labels/a.tif"}], "target": [{"image": "images/b.png"}]},
    )
    datalist = load_datalist(file)
    assert [Path(i["image"]).name for i in get_split(datalist, "source", require_labels=True)] == ["a.png"]
    assert [Path(i["image"]).name for i in get_split(datalist, "target")] == ["b.png"]
    with pytest.raises(UDAInputError) as info:
        get_split(datalist, "validation")
    assert str(info.value) == f"{file}: domain 'validation' has zero images"
    with pytest.raises(UDAInputError, match="domain 'target' item 0 .*b.png.* has no 'label'"):
        get_split(datalist, "target", require_labels=True)
    with pytest.raises(UDAInputError, match="unknown datalist key 'train'"):
        get_split(datalist, "train")
    with pytest.raises(UDAInputError) as info:  # a plain dict: no file to name
        get_split({"source": []}, "target")
    assert str(info.value) == "domain 'target' has zero images"


def test_write_datalist_round_trip(tmp_path):
    root = tmp_path / "out"
    image = _touch(root / "images" / "a.png")
    label = _touch(root / "labels" / "a.tif")
    _touch(root / "images" / "b.png")
    written = write_datalist(
        root,
        {"test": [{"image": str(image), "label": str(label), "organ": "liver"}], "source": [{"image": "images/b.png"}]},
    )
    assert written == root / "datalist.json"
    raw = json.loads(written.read_text())
    assert list(raw) == ["source", "test"]  # canonical key order
    assert raw["test"] == [{"image": "images/a.png", "label": "labels/a.tif", "organ": "liver"}]
    assert raw["source"] == [{"image": "images/b.png"}]
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp-")] == []
    loaded = load_datalist(root)
    assert loaded["test"][0]["image"] == str(image.resolve())


def test_write_datalist_keeps_files_outside_the_folder_absolute(tmp_path):
    outside = _touch(tmp_path / "elsewhere.png")
    inside = _touch(tmp_path / "out" / "images" / "a.png")
    written = write_datalist(
        tmp_path / "out", {"source": [{"image": str(outside), "label": "../elsewhere.png"}, {"image": str(inside)}]}
    )
    assert json.loads(written.read_text())["source"] == [
        {"image": outside.as_posix(), "label": outside.as_posix()},
        {"image": "images/a.png"},
    ]
    assert load_datalist(written)["source"][0] == {"image": str(outside.resolve()), "label": str(outside.resolve())}


def test_same_stem_in_one_split_is_refused_before_writing(tmp_path):
    one, two = _touch(tmp_path / "a" / "x.png"), _touch(tmp_path / "b" / "x.tif")
    label = _touch(tmp_path / "a" / "x_label.tif")
    file = _dataset(
        tmp_path, {"test": [{"image": str(one), "label": str(label)}, {"image": str(two), "label": str(label)}]}
    )
    expected = (
        f"{file}: 'test' items 0 and 1 have the same file stem 'x' ({one.resolve()}, {two.resolve()}); "
        "files named by stem would overwrite each other"
    )
    with pytest.raises(UDAInputError) as info:
        export_split(file, "test", tmp_path / "out")
    assert str(info.value) == expected
    assert not (tmp_path / "out").exists()
    items = [{"image": "a/x.png"}, {"image": "b/y.png"}]
    assert check_unique_stems(items, "source") is items


def test_export_split_copies_items_from_anywhere(tmp_path):
    image, _ = _touch(tmp_path / "far" / "x.png"), _touch(tmp_path / "far" / "x_mask.tif")
    file = _dataset(
        tmp_path,
        {
            "test": [
                {"image": str(image), "label": "../far/x_mask.tif"},
                {"image": "images/a.png", "label": "labels/a.tif"},
            ]
        },
    )
    images, labels = export_split(file, "test", tmp_path / "out")
    assert sorted(p.name for p in images.iterdir()) == ["a.png", "x.png"]
    assert sorted(p.name for p in labels.iterdir()) == ["a.tif", "x.tif"]  # named by the image stem, for evaluate


def test_write_datalist_errors(tmp_path):
    with pytest.raises(UDAInputError, match="unknown key 'train'"):
        write_datalist(tmp_path / "out", {"train": []})
    with pytest.raises(UDAInputError, match="'target' item 0 has no 'image'"):
        write_datalist(tmp_path / "out", {"target": [{"label": "x.tif"}]})
    assert not (tmp_path / "out" / "datalist.json").exists()


@pytest.mark.parametrize("bundle", ["cellseg_uda", "ad_gan", "cyc_pdam", "darcnn"])
def test_bundle_train_config_reads_datalist_paths_from_data_root(bundle, tmp_path):
    from monai.bundle import ConfigParser

    from monai_uda.bundle_runner import bundles_dir

    data = tmp_path / "store"
    image, label = _touch(data / "img" / "a.png"), _touch(data / "lab" / "a.tif")
    file = _dataset(
        tmp_path, {"source": [{"image": "img/a.png", "label": "lab/a.tif"}], "target": [{"image": "img/a.png"}]}
    )
    parser = ConfigParser()
    parser.read_config(str(bundles_dir() / bundle / "configs" / "train.yaml"))
    assert parser["data_root"] is None  # default: the datalist's own folder
    parser.update({"dataset_dir": str(file.parent), "data_root": str(data)})
    assert parser.get_parsed_content("datalist")["source"] == [
        {"image": str(image.resolve()), "label": str(label.resolve())}
    ]
