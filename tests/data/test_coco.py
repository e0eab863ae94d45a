from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_uda.cli import main
from monai_uda.data.coco import decode_segmentation, polygon_mask, prepare_coco, rle_counts_from_string, rle_mask
from monai_uda.data.datalist import load_datalist
from monai_uda.data.io import read_array, read_label
from monai_uda.data.prepare import prepare
from monai_uda.errors import UDAInputError


def _runs(mask: np.ndarray) -> list[int]:
    """COCO run lengths of a boolean mask: column-major, starting with a (possibly empty) 0 run."""
    flat = mask.ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def _encode(counts: list[int]) -> str:
    """pycocotools ``rleToString``: 5-bit groups, continuation bit 0x20, deltas from the fourth count."""
    text = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            text.append(chr((c | 0x20 if more else c) + 48))
    return "".join(text)


# a.png is 8 x 10: annotation 1 = two polygons (rows 1-3 x cols 1-4, rows 5-6 x cols 7-8, 16 px),
# annotation 2 = uncompressed RLE of rows 2-5 in column 3 (4 px: wins the 2 pixels it shares with 1)
A_POLYGONS = [[1, 1, 5, 1, 5, 4, 1, 4], [7, 5, 9, 5, 9, 7, 7, 7]]
A_RLE = [3 * 8 + 2, 4, 80 - 3 * 8 - 2 - 4]
# b.png is 6 x 20: compressed RLE "264KW3" = counts [2, 6, 4, 1, 107] (deltas: 1 - 6 = -5 -> 'K',
# 107 - 4 = 103 -> 'W3'): column 0 rows 2-5, column 1 rows 0-1, column 2 row 0 (7 px)
B_RLE = "264KW3"


def _expected_a(crowd: bool = False) -> np.ndarray:
    label = np.zeros((8, 10), np.uint16)
    if crowd:
        label[:] = 3  # the whole-image crowd region is the largest: it loses every shared pixel
    label[1:4, 1:5] = 1
    label[5:7, 7:9] = 1
    label[2:6, 3] = 2
    return label


def _expected_b() -> np.ndarray:
    label = np.zeros((6, 20), np.uint16)
    label[2:6, 0] = 1
    label[0:2, 1] = 1
    label[0, 2] = 1
    return label


def _coco(root: Path) -> Path:
    """``root/instances.json`` with images in ``root/images``: a.png, b.png (RGB) and c.png (no annotations)."""
    images = root / "images"
    images.mkdir(parents=True)
    Image.fromarray(np.full((8, 10), 50, np.uint8)).save(images / "a.png")
    Image.fromarray(np.full((6, 20, 3), 90, np.uint8)).save(images / "b.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(images / "c.png")
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 8, "width": 10},
            {"id": 2, "file_name": "b.png", "height": 6, "width": 20},
            {"id": 3, "file_name": "c.png", "height": 4, "width": 4},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": A_POLYGONS},
            {
                "id": 11,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": {"counts": A_RLE, "size": [8, 10]},
            },
            {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": [[0, 0, 10, 0, 10, 8, 0, 8]]},
            {
                "id": 13,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [[2, 2, 6, 6]],
            },  # 2 points: no area
            {
                "id": 20,
                "image_id": 2,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": {"counts": B_RLE, "size": [6, 20]},
            },
            {"id": 21, "image_id": 2, "category_id": 2, "iscrowd": 0, "segmentation": [[10, 1, 13, 1, 13, 3, 10, 3]]},
        ],
        "categories": [{"id": 1, "name": "nucleus"}, {"id": 2, "name": "cell"}],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_compressed_rle_decodes_hand_encoded_counts():
    assert rle_counts_from_string(B_RLE) == [2, 6, 4, 1, 107]
    assert rle_counts_from_string("T3") == [100]  # 100 = 4 + 3 * 32: 'T' = 48 + (4 | 0x20), '3' = 48 + 3
    np.testing.assert_array_equal(decode_segmentation({"counts": B_RLE, "size": [6, 20]}, (6, 20)), _expected_b() > 0)
    mask = np.random.default_rng(0).random((13, 17)) < 0.4
    mask[:, 5:9] = True  # a run longer than 32 pixels
    counts = _runs(mask)
    assert sum(counts) == mask.size and max(counts) > 32
    np.testing.assert_array_equal(rle_mask(rle_counts_from_string(_encode(counts)), (13, 17)), mask)
    with pytest.raises(ValueError, match="ends inside a count"):
        rle_counts_from_string("T")
    with pytest.raises(ValueError, match="invalid character"):
        rle_counts_from_string("2~")


def test_uncompressed_rle_and_polygons():
    mask = rle_mask([1, 2, 3], (2, 3))  # column-major: (0,0)=0, (1,0)=1, (0,1)=1, then 0
    np.testing.assert_array_equal(mask, [[False, True, False], [True, False, False]])
    assert polygon_mask(A_POLYGONS, (8, 10)).sum() == 16
    assert polygon_mask([[-3, -3, 2, -3, 2, 2, -3, 2]], (8, 10)).sum() == 4  # clipped: rows 0-1 x cols 0-1
    with pytest.raises(ValueError, match="add up to 5 pixels, size 2x3 has 6"):
        rle_mask([1, 2, 2], (2, 3))
    with pytest.raises(ValueError, match="polygon 0 must be a flat list"):
        polygon_mask([[1, 2, 3]], (4, 4))
    with pytest.raises(ValueError, match=r"RLE size \[4, 4\] does not match the 8x10 image"):
        decode_segmentation({"counts": [16], "size": [4, 4]}, (8, 10))
    with pytest.raises(ValueError, match="list of polygons or an RLE dict"):
        decode_segmentation({"bbox": [0, 0, 1, 1]}, (8, 10))


def test_prepare_coco_synthetic(tmp_path, capsys):
    src = _coco(tmp_path / "coco")
    datalist = load_datalist(prepare_coco(src, tmp_path / "out"))  # images/ next to the JSON by default
    assert [Path(i["image"]).name for i in datalist["source"]] == ["a.png", "b.png", "c.png"]
    labels = [read_label(i["label"]) for i in datalist["source"]]
    assert all(read_array(i["label"])[0].dtype == np.uint16 for i in datalist["source"])
    np.testing.assert_array_equal(labels[0], _expected_a())
    expected_b = _expected_b()
    expected_b[1:3, 10:13] = 2  # category 2 polygon, 6 px
    np.testing.assert_array_equal(labels[1], expected_b)
    np.testing.assert_array_equal(labels[2], np.zeros((4, 4), np.uint16))  # kept, empty
    np.testing.assert_array_equal(read_array(datalist["source"][1]["image"])[0], np.full((6, 20, 3), 90, np.uint8))
    err = capsys.readouterr().err
    assert "warning: " + f"{src}: annotation 13: zero area inside the 8x10 image" in err
    assert "coco: 3 images -> 'source', 4 instances, 1 crowd annotation(s) skipped, 1 annotation problem(s)" in err
    assert "1 image(s) without instances keep an empty label map: 'c.png'" in err

    datalist = load_datalist(
        prepare_coco(src, tmp_path / "crowd", include_crowd=True, category_ids="1", split="target", link=True)
    )
    np.testing.assert_array_equal(read_label(datalist["target"][0]["label"]), _expected_a(crowd=True))
    np.testing.assert_array_equal(read_label(datalist["target"][1]["label"]), _expected_b())  # category 2 dropped
    assert os.path.samefile(src.parent / "images" / "a.png", datalist["target"][0]["image"])
    assert "0 crowd annotation(s) skipped, 1 of other categories" in capsys.readouterr().err


def test_prepare_coco_dispatcher_and_cli(tmp_path):
    src = _coco(tmp_path / "coco")
    moved = tmp_path / "annotations" / "instances.json"  # JSON away from its images: --images needed
    moved.parent.mkdir()
    src.rename(moved)
    with pytest.raises(
        UDAInputError, match="a.png: image file not found \\(COCO image id 1; 3 of 3 listed images are not in"
    ):
        prepare("coco", moved, tmp_path / "out")
    path = prepare(
        "coco", str(moved), str(tmp_path / "out"), images=str(tmp_path / "coco" / "images"), **{"category-ids": (2,)}
    )
    labels = [read_label(i["label"]) for i in load_datalist(path)["source"]]
    assert [int(label.max()) for label in labels] == [0, 1, 0] and int((labels[1] == 1).sum()) == 6
    argv = [
        "prepare",
        "coco",
        str(moved),
        str(tmp_path / "cli"),
        "--images",
        str(tmp_path / "coco" / "images"),
        "--category_ids",
        "1,2",
    ]
    assert main(argv) == 0  # fire turns 1,2 into a tuple
    assert len(load_datalist(tmp_path / "cli")["source"]) == 3
    assert main(["prepare", "coco", str(moved), str(tmp_path / "bad"), "--category_ids", "9"]) == 2


def _edit(src: Path, change) -> Path:
    data = json.loads(src.read_text())
    change(data)
    src.write_text(json.dumps(data))
    return src


def test_prepare_coco_errors(tmp_path):
    src = _coco(tmp_path / "coco")
    (src.parent / "images" / "c.png").unlink()
    with pytest.raises(
        UDAInputError, match="c.png: image file not found \\(COCO image id 3; 1 of 3 listed images are not in"
    ):
        prepare_coco(src, tmp_path / "out")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(src.parent / "images" / "c.png")
    with pytest.raises(UDAInputError, match="c.png: image is 4x5, its COCO record \\(id 3\\) says 4x4"):
        prepare_coco(src, tmp_path / "out")
    with pytest.raises(
        UDAInputError, match="unknown category id\\(s\\) \\[9\\] \\(categories: 1 'nucleus', 2 'cell'\\)"
    ):
        prepare_coco(src, tmp_path / "out", category_ids="1,9")
    with pytest.raises(UDAInputError, match="category_ids must be integers such as 1,2; got 'x'"):
        prepare_coco(src, tmp_path / "out", category_ids="x")
    with pytest.raises(UDAInputError, match="unknown split 'train'"):
        prepare_coco(src, tmp_path / "out", split="train")
    with pytest.raises(UDAInputError, match="output images/ folder is the input images folder"):
        prepare_coco(src, src.parent)
    _edit(src, lambda d: d["annotations"][1]["segmentation"].update(counts=[1, 2]))
    with pytest.raises(UDAInputError, match=f"{src}: annotation 11: RLE counts add up to 3 pixels, size 8x10 has 80"):
        prepare_coco(src, tmp_path / "out")
    _edit(src, lambda d: d["annotations"].append({"id": 99, "image_id": 7, "segmentation": []}))
    with pytest.raises(UDAInputError, match="annotation 99: image_id 7 is not in 'images'"):
        prepare_coco(src, tmp_path / "out")
    src.write_text('{"images": [')
    with pytest.raises(UDAInputError, match="instances.json: invalid JSON \\(line 1, column 13: Expecting value\\)"):
        prepare_coco(src, tmp_path / "out")
    src.write_text("[]")
    with pytest.raises(UDAInputError, match="not a COCO instances file: no 'images' list"):
        prepare_coco(src, tmp_path / "out")
    with pytest.raises(UDAInputError, match="missing.json: COCO annotation file does not exist"):
        prepare_coco(tmp_path / "missing.json", tmp_path / "out")
    with pytest.raises(UDAInputError, match="coco: is a folder; give the COCO instances JSON file"):
        prepare_coco(src.parent, tmp_path / "out")
