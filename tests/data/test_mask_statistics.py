"""Synthetic-mask presets and ``preset: auto`` (estimating nuclei sizes/counts from unlabelled images)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import disk
from skimage.io import imread, imsave
from skimage.measure import regionprops
from skimage.transform import rescale

from monai_uda.data.mask_statistics import AUTO, auto_mask_statistics, estimate_mask_statistics, load_preset
from monai_uda.data.synthetic import RandSyntheticMaskd
from monai_uda.errors import UDAInputError

REPO = Path(__file__).resolve().parents[2]


def _discs() -> np.ndarray:
    """128x128: two isolated discs of radius 8, a clump of two touching ones, a disc cut by the border, a speck."""
    image = np.zeros((128, 128), np.float32)
    for centre in [(30, 30), (30, 90), (90, 30), (90, 46), (64, 124)]:
        image[disk(centre, 8, shape=image.shape)] = 200.0
    image[110:112, 100:102] = 200.0  # 4 px: below min_size, noise
    return image


def test_estimate_counts_clumps_and_skips_cut_nuclei_and_specks():
    stats = estimate_mask_statistics([_discs()[None]], sigma=0)
    # radius from the isolated discs only (the clump is not convex, the cut disc touches the border):
    # a disc of radius 8 drawn on the grid has major semi-axis ~8
    assert 7.5 <= stats["axis_range"][0] <= stats["axis_range"][1] <= 8.5 and 7.5 <= stats["median_axis"] <= 8.5
    # 2 isolated + a clump of 2 (twice the area of a single disc) + the cut disc (~half a disc: 1) = 5; no speck
    assert stats["count_range"] == (5, 5) and stats["images"] == 1
    # counts per 64x64 patch: a quarter of the image's; dark nuclei on a bright background give the same
    assert estimate_mask_statistics([255.0 - _discs()], patch_shape=(64, 64), sigma=0)["count_range"] == (1, 2)
    # an image smaller than the patch is padded to it: its count stays
    assert estimate_mask_statistics([_discs()], patch_shape=(256, 256), sigma=0)["count_range"] == (5, 5)


def test_auto_finds_the_scale_of_nuclei_three_times_larger(shared_data):
    """DSB2018 images and labels upscaled x3 (nuclei ~3x the presets'): auto's radius is the labels' within 25%."""
    folder = shared_data / "dsb2018_fluo"
    paths = sorted((folder / "images").glob("*.png"))
    chosen = [paths[i] for i in np.random.default_rng(0).choice(len(paths), 8, replace=False)]
    images, truth = [], []
    for path in chosen:
        image = imread(path).astype(np.float32)
        image = image[..., :3].mean(-1) if image.ndim == 3 else image
        images.append(rescale(image, 3, order=1, preserve_range=True))
        label = rescale(imread(folder / "labels" / f"{path.stem}.tif"), 3, order=0, preserve_range=True,
                        anti_aliasing=False).astype(np.int32)  # fmt: skip
        truth += [r.axis_major_length / 2 for r in regionprops(label)]
    stats = estimate_mask_statistics(images, patch_shape=(256, 256))
    true_min, true_median, true_max = np.percentile(truth, [10, 50, 90])
    assert true_median > 2.5 * load_preset("hela")["axis_range"][1] / 2  # the setting: nuclei several times larger
    assert abs(stats["median_axis"] / true_median - 1) <= 0.25
    assert abs(stats["axis_range"][0] / true_min - 1) <= 0.3 and abs(stats["axis_range"][1] / true_max - 1) <= 0.25


def test_auto_preset_estimates_at_construction_and_logs(tmp_path, caplog):
    paths = []
    for index in range(3):
        paths.append(str(tmp_path / f"t{index}.png"))
        imsave(paths[-1], _discs().astype(np.uint8), check_contrast=False)
    with caplog.at_level(logging.INFO, logger="monai_uda.data.mask_statistics"):
        transform = RandSyntheticMaskd(shape=(64, 64), preset=AUTO, target_items=[{"image": p} for p in paths])
    lines = [r.getMessage() for r in caplog.records if "preset auto" in r.getMessage()]
    assert len(lines) == 1 and "from 3 of 3 target images" in lines[0] and "per 64x64 patch" in lines[0]
    assert 7.0 <= transform.masks.axis_range[0] <= transform.masks.axis_range[1] <= 9.0
    # smoothing (sigma 1) keeps the count: 5 per image, a quarter per 64x64 patch
    assert transform.masks.count_range == (1, 2) and transform.masks.eccentricity_range == (0.25, 0.75)
    assert auto_mask_statistics(paths, 2, (64, 64), max_images=2)["images"] == 2
    # explicit ranges win and need no images; a wrong name lists the valid ones, auto among them
    assert RandSyntheticMaskd(shape=(64, 64), preset=AUTO, axis_range=(3, 4), count_range=(1, 2)).masks.axis_range == (
        3, 4)  # fmt: skip
    with pytest.raises(UDAInputError, match=r"unknown synthetic-mask preset 'HeLa'; valid: auto, .*hela"):
        RandSyntheticMaskd(shape=(64, 64), preset="HeLa")
    with pytest.raises(UDAInputError, match="target"):
        RandSyntheticMaskd(shape=(64, 64), preset=AUTO)
    with pytest.raises(UDAInputError, match="axis_range"):
        load_preset(AUTO)


def test_bundle_default_is_auto_on_the_target_images(sample_2d, tmp_path, caplog):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "ad_gan" / "configs" / "train.yaml"))
    assert parser["preset"] == AUTO
    parser["dataset_dir"], parser["output_dir"] = str(sample_2d), str(tmp_path)
    with caplog.at_level(logging.INFO, logger="monai_uda.data.mask_statistics"):
        masks = parser.get_parsed_content("mask_transform").transforms[0].masks
    assert any("preset auto, from 4 of 4 target images" in r.getMessage() for r in caplog.records)
    assert 2.0 < masks.axis_range[0] < masks.axis_range[1] < 20.0
