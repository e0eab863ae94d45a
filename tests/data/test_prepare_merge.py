"""``monai-uda prepare`` into a folder with a datalist.

The new split joins it, no split is dropped, no listed file replaced.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_uda.data.datalist import load_datalist
from monai_uda.data.prepare import prepare_folder
from monai_uda.errors import UDAInputError


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_prepare_folder_merges_splits_and_refuses_to_replace_listed_files(tmp_path: Path):
    src, tgt, clash = tmp_path / "src", tmp_path / "tgt", tmp_path / "clash"
    label = np.zeros((4, 5), np.uint8)
    label[1:3, 1:3] = 2
    _png(src / "images" / "a.png", np.full((4, 5), 9, np.uint8))
    _png(src / "labels" / "a.png", label)
    _png(tgt / "t.png", np.full((4, 5), 5, np.uint8))
    out = tmp_path / "out"
    prepare_folder(src / "images", src / "labels", out, split="source")
    prepare_folder(tgt, None, out, split="target")
    datalist = load_datalist(out)
    assert sorted(k for k, items in datalist.items() if items) == ["source", "target"]
    assert [Path(i["image"]).name for i in datalist["source"]] == ["a.png"]
    assert [Path(i["image"]).name for i in datalist["target"]] == ["t.png"]

    # a target image named like a source image would replace images/a.png (its label stays): refused, nothing written
    _png(clash / "a.png", np.full((4, 5), 1, np.uint8))
    before = (out / "images" / "a.png").read_bytes(), (out / "datalist.json").read_text()
    with pytest.raises(
        UDAInputError,
        match=re.escape(
            f"{out / 'datalist.json'}: would replace images/a.png, "
            "which split 'source' of the existing datalist still names"
        ),
    ):
        prepare_folder(clash, None, out, split="target")
    assert ((out / "images" / "a.png").read_bytes(), (out / "datalist.json").read_text()) == before

    # the same split again replaces that split only
    _png(tgt / "u.png", np.full((4, 5), 6, np.uint8))
    prepare_folder(tgt, None, out, split="target")
    written = json.loads((out / "datalist.json").read_text())
    assert written == {
        "source": [{"image": "images/a.png", "label": "labels/a.tif"}],
        "target": [{"image": "images/t.png"}, {"image": "images/u.png"}],
    }
