from __future__ import annotations

import json

import numpy as np
import pytest

from monai_uda.data.inpainting import auxiliary_mask, inpaint_nuclei, nuclei_foreground, write_synthesized_dataset
from monai_uda.data.io import read_image, read_label, write_array

BACKGROUND = np.array([235.0, 190.0, 215.0])  # eosin-pink
NUCLEUS = np.array([70.0, 40.0, 130.0])  # hematoxylin-purple


def _disc(shape: tuple[int, int], cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _he_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """64x64 RGB in [0, 1]: two labelled nuclei and one unlabelled (hallucinated) blob."""
    label = np.zeros((64, 64), np.int32)
    label[_disc(label.shape, 16, 16, 6)] = 1
    label[_disc(label.shape, 44, 20, 7)] = 2
    extra = _disc(label.shape, 30, 48, 6)
    rgb = np.where(((label > 0) | extra)[..., None], NUCLEUS, BACKGROUND)
    return np.moveaxis(rgb, -1, 0).astype(np.float32) / 255.0, label, extra


def test_hematoxylin_otsu_finds_all_three_nuclei():
    image, label, extra = _he_scene()
    assert np.array_equal(nuclei_foreground(image), (label > 0) | extra)
    assert np.array_equal(auxiliary_mask(image, label), extra)  # eq 1: only the unlabelled blob


def test_inpainting_removes_the_extra_blob_and_keeps_labelled_nuclei():
    image, label, extra = _he_scene()
    painted, aux = inpaint_nuclei(image, label)
    assert np.array_equal(aux, extra)
    assert painted.dtype == image.dtype and painted.shape == image.shape
    assert np.array_equal(painted[:, label > 0], image[:, label > 0])  # labelled nuclei untouched
    assert np.array_equal(painted[:, ~extra], image[:, ~extra])  # nothing outside M_aux changes
    blob_colour = painted[:, extra].mean(axis=1) * 255.0
    assert np.abs(blob_colour - BACKGROUND).max() < 12.0  # filled with background, not nucleus colour


def test_intensity_mode_for_fluorescence_and_dark_nuclei_and_volumes():
    label = np.zeros((32, 32), np.int32)
    label[_disc(label.shape, 8, 8, 4)] = 1
    extra = _disc(label.shape, 22, 22, 4)
    grey = np.where((label > 0) | extra, 200.0, 20.0)[None].astype(np.float32)  # bright nuclei, 0-255 scale
    painted, aux = inpaint_nuclei(grey, label, stain="intensity")
    assert np.array_equal(aux, extra) and painted[0, extra].max() < 40.0 and painted.max() == 200.0
    dark = 255.0 - grey
    assert np.array_equal(auxiliary_mask(dark, label, "intensity", bright_nuclei=False), extra)
    volume = np.stack([grey, grey], axis=1)  # (C, Z, H, W): slice-wise
    painted_3d, aux_3d = inpaint_nuclei(volume, np.stack([label, label]), stain="intensity")
    assert np.array_equal(painted_3d[:, 1], painted) and aux_3d.shape == (2, 32, 32)
    assert not nuclei_foreground(np.full((1, 8, 8), 0.5)).any()  # constant image: no threshold
    with pytest.raises(ValueError, match="stain"):
        nuclei_foreground(grey, stain="dab")


def test_write_synthesized_dataset(tmp_path):
    image, label, extra = _he_scene()
    write_array(tmp_path / "in" / "a.png", np.rint(np.moveaxis(image, 0, -1) * 255).astype(np.uint8))
    write_array(tmp_path / "in" / "a_label.tif", label.astype(np.uint16))
    items = [{"image": str(tmp_path / "in" / "a.png"), "label": str(tmp_path / "in" / "a_label.tif")}]
    datalist = write_synthesized_dataset(items, tmp_path / "out", translate=lambda x: x[::-1].copy())  # swap R and B
    content = json.loads(datalist.read_text())
    assert content == {"source": [{"image": "images/a.png", "label": "labels/a.tif"}]}
    written, _ = read_image(tmp_path / "out" / "images" / "a.png")
    assert np.array_equal(read_label(tmp_path / "out" / "labels" / "a.tif"), label)
    swapped = np.rint(image[::-1] * 255)
    assert np.array_equal(written[:, label > 0], swapped[:, label > 0])
    assert np.abs(written[:, extra].mean(axis=1) - BACKGROUND[::-1]).max() < 12.0

    no_ni = write_synthesized_dataset(items, tmp_path / "no_ni", inpaint=False)  # "w/o NI" ablation
    raw, _ = read_image(no_ni.parent / "images" / "a.png")
    assert np.array_equal(raw, np.rint(image * 255))
