from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from monai_uda.data.datalist import load_datalist
from monai_uda.data.io import read_array, read_label
from monai_uda.data.monuseg import prepare_monuseg, rasterize_aperio_xml
from monai_uda.data.prepare import prepare, prepare_dsb, prepare_folder
from monai_uda.errors import UDAInputError


def _shared_data() -> Path:
    env = os.environ.get("MONAI_UDA_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _require(name: str) -> Path:
    path = _shared_data() / name
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _region(region_id: str, vertices: list[tuple[object, object]]) -> str:
    points = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in vertices)
    return f'<Region Id="{region_id}" Type="0"><Attributes/><Vertices>{points}</Vertices></Region>'


def _square(c0: int, r0: int, c1: int, r1: int) -> list[tuple[int, int]]:
    return [(c0, r0), (c1, r0), (c1, r1), (c0, r1)]  # (X, Y) = (column, row)


def _aperio(path: Path, regions: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'<Annotations><Annotation Id="1"><Regions>{"".join(regions)}</Regions></Annotation></Annotations>')
    return path


SYNTHETIC_REGIONS = [
    _region("1", _square(1, 1, 7, 7)),  # 49 px
    _region("2", _square(5, 5, 9, 9)),  # 25 px, overlaps region 1: smaller wins
    _region("12", [(1, 1), (4, 4)]),  # 2 vertices
    _region("13", [(1, 1), ("abc", 3), (4, 4)]),  # non-numeric
    _region("14", _square(2, -5, 6, -1)),  # outside the image
    _region("3", _square(0, 9, 2, 11)),  # 9 px
    _region("4", _square(0, 9, 2, 11)),  # identical to region 3: tie, earlier wins
]


def _expected_synthetic_map() -> np.ndarray:
    label = np.zeros((12, 12), np.uint16)
    label[1:8, 1:8] = 1
    label[5:10, 5:10] = 2
    label[9:12, 0:3] = 3
    return label


def test_rasterize_overlaps_and_problems(tmp_path):
    xml = _aperio(tmp_path / "a.xml", SYNTHETIC_REGIONS)
    label, problems = rasterize_aperio_xml(xml, (12, 12))
    assert label.dtype == np.uint16
    np.testing.assert_array_equal(label, _expected_synthetic_map())
    assert problems == [
        f"{xml}: region 12: 2 vertices",
        f"{xml}: region 13: vertex 1: non-numeric coordinates X='abc' Y='3'",
        f"{xml}: region 14: zero area after clipping to the 12x12 image",
        f"{xml}: region 4: completely covered by smaller overlapping regions",
    ]
    with pytest.raises(UDAInputError) as info:
        rasterize_aperio_xml(xml, (12, 12), strict=True)
    assert str(info.value) == f"{xml}: region 12: 2 vertices"


def test_rasterize_malformed_xml(tmp_path):
    xml = tmp_path / "broken.xml"
    xml.write_text("<Annotations><Region Id='1'>")
    with pytest.raises(UDAInputError, match=re.escape(f"{xml}: malformed XML")):
        rasterize_aperio_xml(xml, (4, 4))


def _synthetic_monuseg(root: Path) -> Path:
    rgb = np.random.default_rng(0).integers(0, 255, (12, 12, 3), dtype=np.uint8)
    for part, stem in (("train", "tr1"), ("test", "te1")):
        (root / part / "images").mkdir(parents=True)
        tifffile.imwrite(root / part / "images" / f"{stem}.tif", rgb, compression="lzw")
    _png(root / "train" / "binary_masks" / "tr1.png", np.ones((12, 12), np.uint8))
    _aperio(root / "test" / "annotations" / "te1.xml", SYNTHETIC_REGIONS)
    return root


def test_prepare_monuseg_synthetic(tmp_path, capsys):
    src = _synthetic_monuseg(tmp_path / "src")
    datalist = load_datalist(prepare_monuseg(src, tmp_path / "out"))
    assert [Path(i["image"]).name for i in datalist["target"]] == ["tr1.tif"]
    assert "label" not in datalist["target"][0]  # binary masks are not instance labels
    (item,) = datalist["test"]
    np.testing.assert_array_equal(read_label(item["label"]), _expected_synthetic_map())
    assert read_array(item["label"])[0].dtype == np.uint16
    err = capsys.readouterr().err
    assert err.count("warning: ") == 4 and "region 13: vertex 1: non-numeric" in err
    assert "1 target images, 1 test images, 3 nuclei, 4 annotation problem(s)" in err
    with pytest.raises(UDAInputError, match="te1.xml: region 12: 2 vertices"):
        prepare_monuseg(src, tmp_path / "strict", strict=True)
    (src / "test" / "annotations" / "te1.xml").unlink()
    with pytest.raises(UDAInputError, match="te1.tif: no annotation file te1.xml"):
        prepare_monuseg(src, tmp_path / "out2")


def _dsb_sample(root: Path, sample_id: str, image: np.ndarray, masks: list[np.ndarray]) -> None:
    _png(root / sample_id / "images" / f"{sample_id}.png", image)
    for index, mask in enumerate(masks):
        _png(root / sample_id / "masks" / f"m{index:02d}.png", mask)


def test_prepare_dsb_synthetic(tmp_path):
    src = tmp_path / "src"
    grey = np.zeros((6, 6, 4), np.uint8)
    grey[..., :3] = np.arange(36, dtype=np.uint8).reshape(6, 6, 1)
    grey[..., 3] = 255
    first, second = np.zeros((6, 6), np.uint8), np.zeros((6, 6), np.uint8)
    first[0:3, 0:3] = 255
    second[2:5, 2:5] = 255  # overlaps the first at (2, 2): the lower id wins
    _dsb_sample(src, "a", grey, [second, first])  # sorted order: m00 = second -> id 1
    colour = np.random.default_rng(1).integers(0, 255, (6, 6, 4), dtype=np.uint8)
    _dsb_sample(src, "b", colour, [first])
    _dsb_sample(src, "c", grey, [first])
    (src / "labels.csv").write_text("ignored")
    datalist = load_datalist(prepare_dsb(src, tmp_path / "out", validation_fraction=0.3, seed=0))
    assert len(datalist["source"]) == 2 and len(datalist["validation"]) == 1  # round(0.9) = 1
    again = json.loads(prepare_dsb(src, tmp_path / "again", validation_fraction=0.3, seed=0).read_text())
    assert again == json.loads((tmp_path / "out" / "datalist.json").read_text())  # seeded
    out = tmp_path / "out"
    expected = np.zeros((6, 6), np.uint16)
    expected[0:3, 0:3] = 2
    expected[2:5, 2:5] = 1
    np.testing.assert_array_equal(read_label(out / "labels" / "a.tif"), expected)
    np.testing.assert_array_equal(read_array(out / "images" / "a.png")[0], grey[..., 0])  # grey, no alpha
    np.testing.assert_array_equal(read_array(out / "images" / "b.png")[0], colour[..., :3])  # RGB, no alpha
    assert len(load_datalist(prepare_dsb(src, tmp_path / "noval", validation_fraction=0))["source"]) == 3
    with pytest.raises(UDAInputError, match=r"validation_fraction must be in \[0, 1\)"):
        prepare_dsb(src, tmp_path / "bad", validation_fraction=1.0)
    _png(src / "c" / "masks" / "m01.png", np.zeros((5, 6), np.uint8))
    with pytest.raises(UDAInputError, match="m01.png: mask/image size mismatch: image 6x6, label 5x6"):
        prepare_dsb(src, tmp_path / "bad")


def test_prepare_folder_synthetic(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    _png(images / "x.png", np.full((4, 5), 9, np.uint8))
    _png(images / "y.png", np.full((4, 5), 7, np.uint8))
    label = np.zeros((4, 5), np.uint8)
    label[1:3, 1:3] = 3
    _png(labels / "x.png", label)
    with pytest.raises(UDAInputError, match=re.escape(f"{labels}: no label for image stem(s) 'y'")):
        prepare_folder(images, labels, tmp_path / "out")
    _png(labels / "y.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(UDAInputError, match=re.escape("y.png: mask/image size mismatch: image 4x5, label 5x4")):
        prepare_folder(images, labels, tmp_path / "out")
    _png(labels / "y.png", np.zeros((4, 5), np.uint8))
    _png(labels / "z.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(UDAInputError, match="no image for label stem\\(s\\) 'z'"):
        prepare_folder(images, labels, tmp_path / "out")
    (labels / "z.png").unlink()
    datalist = load_datalist(prepare_folder(images, labels, tmp_path / "out", split="test", link=True))
    assert [Path(i["image"]).name for i in datalist["test"]] == ["x.png", "y.png"]
    assert read_array(datalist["test"][0]["label"])[0].dtype == np.uint16
    np.testing.assert_array_equal(read_label(datalist["test"][0]["label"]), label)
    assert os.path.samefile(images / "x.png", datalist["test"][0]["image"])  # hard link, same file system
    unlabelled = load_datalist(prepare_folder(images, None, tmp_path / "target", split="target"))
    expected = [{"image": str((tmp_path / "target" / "images" / n).resolve())} for n in ("x.png", "y.png")]
    assert unlabelled["target"] == expected
    assert not os.path.samefile(images / "x.png", unlabelled["target"][0]["image"])  # a copy
    with pytest.raises(UDAInputError, match="unknown split 'train'"):
        prepare_folder(images, labels, tmp_path / "out", split="train")
    with pytest.raises(UDAInputError, match="output images/ folder is the input images folder"):
        prepare_folder(images, labels, tmp_path)


def test_prepare_dispatcher(tmp_path):
    images = tmp_path / "images"
    _png(images / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(UDAInputError) as info:
        prepare("kaggle", "a", "b")
    assert str(info.value) == "unknown dataset format 'kaggle' (choices: dsb, monuseg, folder, coco)"
    with pytest.raises(UDAInputError, match="unknown option 'seed' for 'monuseg' \\(accepted: src, strict\\)"):
        prepare("monuseg", "a", "b", seed=1)
    with pytest.raises(UDAInputError, match="missing output folder"):
        prepare("dsb", "a")
    with pytest.raises(UDAInputError, match="missing images folder"):
        prepare("folder", out=str(tmp_path / "o"))
    path = prepare("folder", str(tmp_path / "o1"), images=str(images), split="target")  # CLI: folder --images DIR OUT
    assert path == tmp_path / "o1" / "datalist.json" and len(load_datalist(path)["target"]) == 1
    path = prepare("folder", str(images), str(tmp_path / "o2"), **{"split": "target", "link": False})
    assert len(load_datalist(path)["target"]) == 1


def test_prepare_dsb_real_sample(tmp_path):
    src = _require("dsb2018_raw_sample")
    datalist = load_datalist(prepare("dsb", src, tmp_path / "dsb"))
    assert (len(datalist["source"]), len(datalist["validation"])) == (4, 1)
    sample = sorted(p for p in src.iterdir() if p.is_dir())[0]
    n_masks = len(list((sample / "masks").glob("*.png")))
    label = read_label(tmp_path / "dsb" / "labels" / f"{sample.name}.tif")
    assert label.dtype == np.uint16 and label.shape == (256, 256)
    np.testing.assert_array_equal(np.unique(label), np.arange(n_masks + 1))  # ids 1..N, each once
    assert read_array(tmp_path / "dsb" / "images" / f"{sample.name}.png")[0].shape == (256, 256)  # grey


def test_rasterize_real_monuseg():
    annotations = _require("monuseg") / "test" / "annotations"
    for xml in sorted(annotations.glob("*.xml"))[:2]:
        n_regions = len(re.findall(r"<Region\s", xml.read_text()))
        label, problems = rasterize_aperio_xml(xml, (1000, 1000))
        assert label.dtype == np.uint16 and label.shape == (1000, 1000)
        assert problems == []
        ids = np.unique(label)[1:]
        assert len(ids) == n_regions > 100 and ids.max() == n_regions


def test_prepare_monuseg_real_subset(tmp_path):
    data = _require("monuseg")
    src = tmp_path / "src"
    for part, name in (
        ("train", sorted((data / "train" / "images").glob("*.tif"))[0].name),
        ("test", "TCGA-2Z-A9J9-01A-01-TS1.tif"),
    ):
        (src / part / "images").mkdir(parents=True)
        os.symlink(data / part / "images" / name, src / part / "images" / name)
    (src / "test" / "annotations").mkdir()
    os.symlink(
        data / "test" / "annotations" / "TCGA-2Z-A9J9-01A-01-TS1.xml",
        src / "test" / "annotations" / "TCGA-2Z-A9J9-01A-01-TS1.xml",
    )
    datalist = load_datalist(prepare("monuseg", src, tmp_path / "out"))
    assert len(datalist["target"]) == 1 and "label" not in datalist["target"][0]
    label = read_label(datalist["test"][0]["label"])
    assert label.shape == (1000, 1000) and len(np.unique(label)) - 1 == 575


def test_prepare_folder_real_fluo(tmp_path):
    data = _require("dsb2018_fluo")
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for image in sorted((data / "images").glob("*.png"))[:3]:
        os.symlink(image, images / image.name)
        os.symlink(data / "labels" / f"{image.stem}.tif", labels / f"{image.stem}.tif")
    datalist = load_datalist(prepare("folder", tmp_path / "out", images=images, labels=labels))
    assert len(datalist["source"]) == 3
    for item in datalist["source"]:
        original = read_label(data / "labels" / Path(item["label"]).name)
        np.testing.assert_array_equal(read_label(item["label"]), original)
        assert original.max() > 0


def _labelled_folder(root: Path, count: int = 8) -> tuple[Path, Path]:
    """``count`` 4x4 images with one-nucleus labels, stems s0..s{count-1}."""
    for k in range(count):
        _png(root / "images" / f"s{k}.png", np.full((4, 4), k, np.uint8))
        _png(root / "labels" / f"s{k}.png", np.eye(4, dtype=np.uint8))
    return root / "images", root / "labels"


def test_prepare_marks_a_seeded_subset_of_target_labelled(tmp_path, capsys):
    from monai_uda.cli import main

    images, labels = _labelled_folder(tmp_path / "src")

    def labelled(out: str, *options: str) -> list[str]:
        argv = ["prepare", "folder", "--images", str(images), "--labels", str(labels), "--split", "target"]
        assert main([*argv, *options, str(tmp_path / out)]) == 0
        items = load_datalist(tmp_path / out)["target"]
        assert len(items) == 8 and len(list((tmp_path / out / "labels").iterdir())) == 8  # files all kept
        return [Path(item["image"]).stem for item in items if "label" in item]

    quarter = labelled("quarter", "--labelled_fraction", "0.25", "--seed", "1")
    assert len(quarter) == 2 and "labelled: 2 of 8 'target' items keep their label (seed 1)" in capsys.readouterr().err
    assert labelled("quarter_again", "--labelled_fraction", "0.25", "--seed", "1") == quarter  # seeded
    three = labelled("three", "--labelled", "3", "--seed", "1")
    assert len(three) == 3 and set(quarter) <= set(three)  # nested: a larger share keeps the smaller one's items
    assert len(labelled("tenth", "--labelled_fraction", "0.1")) == 1  # round(0.8), at least one
    assert len(labelled("all")) == 8  # without the options every label stays


def test_prepare_labelled_subset_errors(tmp_path):
    images, labels = _labelled_folder(tmp_path / "src", count=2)
    folder = {"images": str(images), "labels": str(labels)}
    cases = [
        (dict(folder, labelled=1), r"--labelled marks labelled 'target' items; add --split target \(this writes 'so"),
        (dict(folder, split="target", labelled=1, labelled_fraction=0.5), "not both"),
        (dict(folder, split="target", labelled_fraction=1.5), r"--labelled_fraction must be within \[0, 1\], got 1.5"),
        (dict(folder, split="target", labelled=-1), "--labelled must be a whole number >= 0, got -1"),
        (dict(folder, split="target", labelled=3), "--labelled 3 asks for 3 labelled items, but only 2 of the 2"),
    ]
    for options, message in cases:
        with pytest.raises(UDAInputError, match=message):
            prepare("folder", out=str(tmp_path / "out"), **options)
    with pytest.raises(UDAInputError, match="--labelled_fraction: format 'dsb' writes no 'target' list"):
        prepare("dsb", str(tmp_path), str(tmp_path / "dsb"), labelled_fraction=0.5)
    monuseg = prepare_monuseg(_synthetic_monuseg(tmp_path / "monuseg"), tmp_path / "m")  # target unlabelled
    with pytest.raises(UDAInputError, match="--labelled_fraction: no 'target' item has a 'label' to keep"):
        prepare("monuseg", str(tmp_path / "monuseg"), str(monuseg.parent), labelled_fraction=0.5)
