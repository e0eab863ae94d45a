from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from monai_uda.inference.postprocess import binary_to_instances, relabel_sequential, remove_small, ternary_to_instances


def _discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: int = 10) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for centre in centres:
        mask[disk(centre, radius, shape=shape)] = True
    return mask


def _balls(shape: tuple[int, int, int], centres: list[tuple[int, int, int]], radius: int = 8) -> np.ndarray:
    grid = np.indices(shape)
    mask = np.zeros(shape, dtype=bool)
    for centre in centres:
        mask |= sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
    return mask


def test_touching_discs_are_split_along_the_neck():
    mask = _discs((64, 64), [(32, 22), (32, 40)])  # centres 18 apart, radius 10: they overlap
    prob = np.where(mask, 0.9, 0.1)
    instances = binary_to_instances(prob)
    assert instances.dtype == np.uint32 and instances.shape == (64, 64)
    assert instances.max() == 2
    np.testing.assert_array_equal(instances > 0, mask)
    # each disc's centre belongs to a different instance, and the split is (almost) symmetric
    assert instances[32, 22] != instances[32, 40]
    sizes = np.bincount(instances.ravel())[1:]
    assert abs(int(sizes[0]) - int(sizes[1])) <= 12


def test_single_disc_stays_whole():
    mask = _discs((64, 64), [(30, 33)], radius=12)
    instances = binary_to_instances(mask.astype(np.float32))
    assert instances.max() == 1
    np.testing.assert_array_equal(instances == 1, mask)


def test_threshold_small_objects_and_holes():
    mask = _discs((40, 40), [(20, 20)], radius=8)
    mask[20, 20] = False  # one-pixel hole: filled
    mask[2:4, 2:4] = True  # 4-pixel speck: removed with min_size=10
    instances = binary_to_instances(np.where(mask, 0.6, 0.0), threshold=0.5, min_size=10)
    assert instances.max() == 1
    assert instances[20, 20] == 1 and instances[2, 2] == 0
    assert binary_to_instances(np.where(mask, 0.4, 0.0), threshold=0.5).max() == 0


def test_empty_probability_gives_empty_instances():
    instances = binary_to_instances(np.zeros((12, 9)))
    assert instances.shape == (12, 9) and instances.dtype == np.uint32 and not instances.any()


def test_3d_touching_balls_split_and_single_ball_kept():
    two = _balls((32, 32, 48), [(16, 16, 16), (16, 16, 30)])
    instances = binary_to_instances(two)
    assert instances.max() == 2
    assert instances[16, 16, 16] != instances[16, 16, 30]
    np.testing.assert_array_equal(instances > 0, two)
    one = _balls((32, 32, 32), [(16, 15, 17)])
    assert binary_to_instances(one).max() == 1


def test_binary_rejects_wrong_dimensionality():
    with pytest.raises(ValueError, match="2D or 3D"):
        binary_to_instances(np.zeros(10))


def _two_nuclei_classes() -> np.ndarray:
    classes = np.zeros((40, 40), dtype=np.uint8)
    classes[5:35, 5:35] = 1  # one foreground block whose two interiors are separated by an edge band
    classes[8:18, 8:32] = 2
    classes[21:32, 8:32] = 2
    return classes


def test_ternary_splits_nuclei_separated_by_edge_band():
    classes = _two_nuclei_classes()
    instances = ternary_to_instances(classes)
    assert instances.max() == 2
    np.testing.assert_array_equal(instances > 0, classes > 0)
    assert instances[12, 20] != instances[26, 20]
    # the band rows 18-20 go to the nearest interior: row 18 to the top, row 20 to the bottom
    assert instances[18, 20] == instances[12, 20] and instances[20, 20] == instances[26, 20]
    # rows 5..19 vs 20..34 (row 19 is equidistant; either side), 30 columns each
    sizes = sorted(np.bincount(instances.ravel())[1:].tolist())
    assert sizes in ([420, 480], [450, 450])


def test_ternary_from_probabilities_matches_class_map():
    classes = _two_nuclei_classes()
    probs = np.stack([classes == k for k in range(3)]).astype(np.float32) * 0.8 + 0.1
    np.testing.assert_array_equal(ternary_to_instances(probs), ternary_to_instances(classes))


def test_ternary_edge_only_object_and_small_instances():
    classes = np.zeros((30, 30), dtype=np.uint8)
    classes[2:12, 2:12] = 1  # no interior: still one nucleus of 100 pixels
    classes[20:22, 20:22] = 2  # 4 pixels: smaller than min_size
    instances = ternary_to_instances(classes, min_size=10)
    assert instances.max() == 1
    assert (instances == 1).sum() == 100 and instances[21, 21] == 0


def test_ternary_rejects_wrong_channels():
    with pytest.raises(ValueError, match="background, edge, interior"):
        ternary_to_instances(np.zeros((2, 8, 8), dtype=np.float32))


def test_relabel_sequential_and_remove_small():
    out = relabel_sequential(np.array([[0, 5, 5], [9, 0, 9]]))
    np.testing.assert_array_equal(out, [[0, 1, 1], [2, 0, 2]])
    assert out.dtype == np.uint32
    mask = np.zeros((6, 6), dtype=bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal pair = one 2-pixel object (full connectivity)
    mask[4, 4] = True
    kept = remove_small(mask, 2)
    assert kept[0, 0] and kept[1, 1] and not kept[4, 4] and kept.sum() == 2
    holes = ~np.pad(np.ones((3, 3), dtype=bool), 1)  # a 9-pixel hole inside a 5x5 ring
    assert remove_small(holes, 10, holes=True).all() and not remove_small(holes, 9, holes=True).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_h_maxima_markers_equal_skimage_h_maxima_alone_and_per_component(dims):
    from scipy import ndimage
    from skimage import morphology

    from monai_uda.inference.postprocess import h_maxima_markers

    rng = np.random.default_rng(dims)
    if dims == 2:  # touching and separate discs, some at the image border
        mask = _discs((96, 128), [tuple(c) for c in rng.integers(0, (96, 128), size=(25, 2))], radius=7)
    else:
        mask = _balls((24, 40, 40), [tuple(c) for c in rng.integers(0, (24, 40, 40), size=(8, 3))], radius=6)
    distance = ndimage.gaussian_filter(ndimage.distance_transform_edt(mask).astype(np.float32), 1.0) * mask
    components, n = ndimage.label(mask, structure=np.ones((3,) * dims))
    assert n > 3
    for h in (1.0, 2.0):
        markers = h_maxima_markers(distance, h)
        assert np.array_equal(markers, morphology.h_maxima(distance, h).astype(bool) & mask)
        for label, box in enumerate(ndimage.find_objects(components), start=1):  # each component as if alone
            alone = np.where(components == label, distance, np.float32(0))[box]
            assert np.array_equal(markers[box] & (components[box] == label), morphology.h_maxima(alone, h).astype(bool))


def test_component_below_h_gets_no_marker_but_its_own_instance():
    from scipy import ndimage

    from monai_uda.inference.postprocess import h_maxima_markers

    mask = _discs((40, 60), [(20, 15)], radius=9)
    mask[5:7, 40:52] = True  # a thin bar: its distance never reaches h = 2
    distance = ndimage.distance_transform_edt(mask)
    markers = h_maxima_markers(distance, 2.0)
    assert markers[20, 15] and not markers[:, 30:].any()
    instances = binary_to_instances(mask, min_size=5, h=2.0, sigma=0.0)
    assert instances.max() == 2 and len(np.unique(instances[5:7, 40:52])) == 1 and instances[5, 40] > 0
