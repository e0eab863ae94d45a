from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.measure import label, regionprops

from monai_uda.data.synthetic import (
    RandSyntheticMaskd,
    SyntheticMaskDataset,
    available_presets,
    domain_image_to_classes,
    edge_class_map,
    estimate_mask_statistics,
    load_preset,
    mask_to_domain_image,
    random_ellipses,
)
from monai_uda.errors import UDAInputError


def _interior_props(instances: np.ndarray) -> list:
    """Region properties of objects not clipped by the image border."""
    props = []
    for region in regionprops(instances):
        lo, hi = np.array(region.bbox[: instances.ndim]), np.array(region.bbox[instances.ndim :])
        if lo.min() > 0 and np.all(hi < instances.shape):
            props.append(region)
    return props


def test_random_ellipses_2d_statistics():
    counts, eccentricities, semi_axes = [], [], []
    for seed in range(6):
        instances = random_ellipses((256, 256), axis_range=(13, 18), count_range=(5, 40), seed=seed)
        assert instances.dtype == np.uint16 and instances.shape == (256, 256)
        ids = np.unique(instances)[1:]
        np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))  # labels 1..k, none lost to overlap
        counts.append(len(ids))
        for region in _interior_props(instances):
            eccentricities.append(region.eccentricity)
            semi_axes.append(region.axis_major_length / 2)
    assert all(5 <= c <= 40 for c in counts) and len(set(counts)) > 1
    # discretisation moves the measured values a little around the drawn ones
    assert 0.15 < min(eccentricities) and max(eccentricities) < 0.8
    assert np.mean(eccentricities) == pytest.approx(0.5, abs=0.08)
    assert 12.0 < min(semi_axes) and max(semi_axes) < 19.0


def test_random_ellipses_no_overlap_each_object_connected_and_whole():
    instances = random_ellipses((128, 128), axis_range=(6, 9), count_range=(30, 30), seed=3)
    # every object is one connected region, so no object was painted over another
    for region in regionprops(instances):
        assert label(region.image).max() == 1
    areas = [r.area for r in _interior_props(instances)]
    # area of an ellipse pi*a*b with a in [6, 9], b = sqrt(1-e^2) a, e in [0.25, 0.75]
    assert min(areas) > np.pi * 6 * 6 * np.sqrt(1 - 0.75**2) * 0.8
    assert max(areas) < np.pi * 9 * 9 * np.sqrt(1 - 0.25**2) * 1.2


def test_random_ellipses_seed_reproducible_and_generator_accepted():
    a = random_ellipses((64, 64), axis_range=(4, 6), seed=7)
    b = random_ellipses((64, 64), axis_range=(4, 6), seed=7)
    c = random_ellipses((64, 64), axis_range=(4, 6), seed=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_random_ellipses_3d_ellipsoids():
    instances = random_ellipses((48, 64, 64), axis_range=(6, 8), count_range=(8, 12), seed=0)
    assert instances.shape == (48, 64, 64) and instances.dtype == np.uint16
    assert 8 <= instances.max() <= 12
    props = _interior_props(instances)
    assert props
    for region in props:
        major = region.axis_major_length / 2
        assert 5.0 < major < 9.0
        # two minor axes sqrt(1-e^2) a with e <= 0.75: at least 0.66 a
        assert region.axis_minor_length / 2 > 0.55 * 6


def test_random_ellipses_crowded_stops_with_warning():
    with pytest.warns(RuntimeWarning, match="placed"):
        instances = random_ellipses((40, 40), axis_range=(13, 18), count_range=(50, 50), max_retries=10, seed=0)
    assert 1 <= instances.max() < 50


@pytest.mark.parametrize(
    "kwargs",
    [{"shape": (4,)}, {"shape": (8, 8), "axis_range": (5, 2)}, {"shape": (8, 8), "eccentricity_range": (0.5, 1.0)}],
)
def test_random_ellipses_bad_input(kwargs):
    with pytest.raises(UDAInputError):
        random_ellipses(**kwargs)


def test_edge_class_map_square_hand_computed():
    instances = np.zeros((7, 7), dtype=np.uint16)
    instances[1:6, 1:6] = 4  # 5x5 square: distances 1 (ring), 2, 3 (centre) -> 1/3, 2/3, 1
    classes = edge_class_map(instances, edge_fraction=0.4)
    expected = np.zeros((7, 7), dtype=np.uint8)
    expected[1:6, 1:6] = 1
    expected[2:5, 2:5] = 2
    np.testing.assert_array_equal(classes, expected)
    # 2/3 <= 0.7: only the centre pixel (normalised distance 1) stays interior
    assert np.argwhere(edge_class_map(instances, edge_fraction=0.7) == 2).tolist() == [[3, 3]]


def test_edge_class_map_separates_touching_objects_and_3d():
    instances = np.zeros((5, 12), dtype=np.uint16)
    instances[:, :6] = 1
    instances[:, 6:] = 2
    classes = edge_class_map(instances, edge_fraction=0.5)
    assert np.all(classes[:, 5] == 1) and np.all(classes[:, 6] == 1)  # the contact line is edge on both sides
    volume = np.zeros((7, 7, 7), dtype=np.uint16)
    volume[1:6, 1:6, 1:6] = 1
    classes3d = edge_class_map(volume, edge_fraction=0.4)
    assert classes3d[3, 3, 3] == 2 and classes3d[1, 3, 3] == 1 and classes3d[0, 0, 0] == 0
    assert (classes3d == 2).sum() == 27


def test_edge_class_map_bad_input():
    with pytest.raises(UDAInputError):
        edge_class_map(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(UDAInputError):
        edge_class_map(np.zeros((4, 4), dtype=np.uint8), edge_fraction=1.0)


def test_mask_domain_round_trip_semantic_and_ternary():
    instances = np.zeros((7, 7), dtype=np.uint16)
    instances[1:6, 1:6] = 1
    semantic = mask_to_domain_image(instances)
    assert semantic.dtype == np.float32 and set(np.unique(semantic)) == {-1.0, 1.0}
    np.testing.assert_array_equal(domain_image_to_classes(semantic), instances > 0)
    ternary = mask_to_domain_image(instances, ternary=True, edge_fraction=0.4)
    assert ternary[0, 0] == -1.0 and ternary[1, 1] == 0.0 and ternary[3, 3] == 1.0
    noisy = torch.from_numpy(
        ternary + 0.3 * np.sign(np.random.default_rng(0).standard_normal(ternary.shape)).astype(np.float32)
    )
    np.testing.assert_array_equal(domain_image_to_classes(noisy, ternary=True), edge_class_map(instances, 0.4))


def test_presets_load_and_unknown_name():
    assert {"hela", "dsb2018_fluo"} <= set(available_presets())
    hela = load_preset("hela")
    assert hela["axis_range"] == (13, 18) and hela["count_range"] == (5, 40) and hela["shape"] == (256, 256)
    with pytest.raises(UDAInputError, match="hela"):
        load_preset("no_such_preset")


def test_estimate_mask_statistics_recovers_generator_ranges():
    rng = np.random.default_rng(0)
    images, counts = [], []
    for seed in range(4):
        instances = random_ellipses((256, 256), axis_range=(8, 12), count_range=(10, 20), seed=seed)
        counts.append(instances.max())
        # bright nuclei, well separated here, on a noisy background
        grey = np.where(instances > 0, 200.0, 30.0) + rng.normal(0, 10, instances.shape)
        images.append(grey[None])  # channel-first
    stats = estimate_mask_statistics(images, patch_shape=(128, 128))
    assert 7.0 <= stats["axis_range"][0] <= stats["axis_range"][1] <= 13.0
    # counts rescaled to a quarter of the area; touching ellipses may merge into one component
    assert (
        stats["count_range"][1] <= np.ceil(max(counts) / 4) and stats["count_range"][0] >= np.floor(min(counts) / 4) - 2
    )
    dark = estimate_mask_statistics([255.0 - images[0][0]])  # dark objects on bright background
    assert 7.0 <= dark["axis_range"][0] <= dark["axis_range"][1] <= 13.0
    with pytest.raises(UDAInputError):
        estimate_mask_statistics([])
    with pytest.raises(UDAInputError):
        estimate_mask_statistics([np.zeros((4, 8, 8, 8))])


def test_synthetic_mask_dataset_items():
    dataset = SyntheticMaskDataset((128, 128), length=3, preset="hela", ternary=True)
    assert len(dataset) == 3 and dataset.count_range == (1, 10)  # 5-40 per 256x256 -> per 128x128
    item = dataset[1]
    assert item["image"].shape == (1, 128, 128) and item["image"].dtype == torch.float32
    assert set(item["image"].unique().tolist()) <= {-1.0, 0.0, 1.0} and item["label"].max() >= 1
    torch.testing.assert_close(dataset[1]["label"], item["label"])
    assert not torch.equal(dataset[0]["label"], item["label"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1]["label"], item["label"])
    dataset.set_epoch(0)
    torch.testing.assert_close(dataset[1]["label"], item["label"])
    volume = SyntheticMaskDataset((16, 32, 32), length=1, axis_range=(4, 6), count_range=(2, 4))[0]
    assert volume["image"].shape == (1, 16, 32, 32) and 2 <= volume["label"].max() <= 4
    with pytest.raises(UDAInputError):
        SyntheticMaskDataset((16, 32, 32), preset="hela")
    with pytest.raises(IndexError):
        dataset[3]


def test_rand_synthetic_maskd_seeded_like_a_monai_transform():
    transform = RandSyntheticMaskd(shape=(64, 64), axis_range=(5, 8), count_range=(3, 6))
    transform.set_random_state(seed=5)
    first = transform({"image": "synthetic", "label": "synthetic", "other": 1})
    assert first["other"] == 1 and first["image"].shape == (1, 64, 64) and 3 <= first["label"].max() <= 6
    second = transform({"image": "synthetic", "label": "synthetic"})
    assert not torch.equal(first["label"], second["label"])
    transform.set_random_state(seed=5)
    torch.testing.assert_close(transform({"image": "synthetic", "label": "synthetic"})["label"], first["label"])


def test_ternary_masks_let_the_watershed_split_touching_nuclei():
    """AD-GAN-INS route: two touching synthetic ellipses -> edge classes -> two instances."""
    from skimage.draw import ellipse

    from monai_uda.inference.postprocess import ternary_to_instances

    instances = np.zeros((40, 60), dtype=np.uint16)
    instances[ellipse(20, 18, 10, 12, shape=instances.shape)] = 1
    right = ellipse(20, 41, 10, 12, shape=instances.shape)
    instances[right] = np.where(instances[right] == 0, 2, instances[right])  # touching along a column
    assert label(instances > 0).max() == 1  # one blob in a semantic mask
    classes = domain_image_to_classes(mask_to_domain_image(instances, ternary=True), ternary=True)
    split = ternary_to_instances(classes, min_size=10)
    assert split.max() == 2
    for index in (1, 2):  # each predicted instance covers mostly one true nucleus
        overlap = np.bincount(split[instances == index], minlength=3)[1:]
        assert overlap.max() / overlap.sum() > 0.9
