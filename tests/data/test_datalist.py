from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from monai_uda.data.datalist import Datalist, get_split, load_datalist, write_datalist
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


def _error(path: Path | str) -> str:
    with pytest.raises(UDAInputError) as info:
        load_datalist(path)
    return str(info.value)


def test_load_resolves_paths_from_file_or_folder(tmp_path):
    file = _dataset(tmp_path, {"source": [{"image": "images/a.png", "label": "labels/a.tif", "id": 7}], "target": [{"image": "./images/../images/b.png"}]})
    root = file.parent.resolve()
    for given in (file, file.parent, str(file)):
        datalist = load_datalist(given)
        assert isinstance(datalist, Datalist) and datalist.path == file
        assert datalist["source"] == [{"image": str(root / "images" / "a.png"), "label": str(root / "labels" / "a.tif"), "id": 7}]
        assert datalist["target"] == [{"image": str(root / "images" / "b.png")}]
        assert datalist["validation"] == [] and datalist["test"] == []


def test_load_errors_name_the_file_and_reason(tmp_path):
    _touch(tmp_path / "outside.png")
    file = _dataset(tmp_path, {"source": [{"image": "../outside.png"}]})
    assert _error(file) == f"{file}: 'source' item 0 image '../outside.png' points outside the datalist folder {file.parent.resolve()}"
    file.write_text(json.dumps({"target": [{"image": "images/a.png"}, {"image": "images/missing.png"}]}))
    assert _error(file) == f"{file}: 'target' item 1 image 'images/missing.png' does not exist"
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


def test_load_rejects_symlink_leaving_the_folder(tmp_path):
    target = _touch(tmp_path / "elsewhere" / "c.png")
    file = _dataset(tmp_path, {"source": [{"image": "images/c.png"}]})
    os.symlink(target, file.parent / "images" / "c.png")
    assert "points outside the datalist folder" in _error(file)


def test_get_split(tmp_path):
    file = _dataset(tmp_path, {"source": [{"image": "images/a.png", "label": "labels/a.tif"}], "target": [{"image": "images/b.png"}]})
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
    written = write_datalist(root, {"test": [{"image": str(image), "label": str(label), "organ": "liver"}], "source": [{"image": "images/b.png"}]})
    assert written == root / "datalist.json"
    raw = json.loads(written.read_text())
    assert list(raw) == ["source", "test"]  # canonical key order
    assert raw["test"] == [{"image": "images/a.png", "label": "labels/a.tif", "organ": "liver"}]
    assert raw["source"] == [{"image": "images/b.png"}]
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp-")] == []
    loaded = load_datalist(root)
    assert loaded["test"][0]["image"] == str(image.resolve())


def test_write_datalist_errors(tmp_path):
    outside = _touch(tmp_path / "elsewhere.png")
    with pytest.raises(UDAInputError, match="'source' item 0 image .*elsewhere.png' is outside the datalist folder"):
        write_datalist(tmp_path / "out", {"source": [{"image": str(outside)}]})
    with pytest.raises(UDAInputError, match="unknown key 'train'"):
        write_datalist(tmp_path / "out", {"train": []})
    with pytest.raises(UDAInputError, match="'target' item 0 has no 'image'"):
        write_datalist(tmp_path / "out", {"target": [{"label": "x.tif"}]})
    assert not (tmp_path / "out" / "datalist.json").exists()
