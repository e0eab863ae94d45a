from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from monai_uda.inference.detection import (
    detect_tiled,
    detect_volume,
    mask_rcnn_detector,
    paint_instances,
    stitch_slices,
    tile_starts,
)

CENTRES = [
    (10, 12, 6), (30, 62, 8), (33, 100, 7), (62, 40, 7), (64, 64, 5), (70, 130, 8), (100, 20, 6), (98, 96, 8),
    (128, 62, 7), (140, 150, 6),
]


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """150x170 grey image of bright discs (several straddle 64/40 tile borders) and its instance map."""
    yy, xx = np.mgrid[:150, :170]
    truth = np.zeros((150, 170), np.int32)
    for i, (cy, cx, r) in enumerate(CENTRES, start=1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = i
    return (truth > 0).astype(np.float32)[None] * 0.8 + 0.1, truth


def fake_detect(tile: torch.Tensor) -> dict[str, torch.Tensor]:
    """Discs by thresholding: one soft mask per connected component, score from its size."""
    components, n = ndimage.label(tile[0].numpy() > 0.5)
    masks = (
        torch.stack([torch.from_numpy((components == i).astype(np.float32)) for i in range(1, n + 1)])
        if n
        else torch.zeros(0, *tile.shape[1:])
    )
    scores = masks.flatten(1).sum(1) / 1000.0 + 0.5
    return {"masks": masks[:, None], "scores": scores}


def _as_sets(instances: np.ndarray) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(instances.ravel() == i).tolist()) for i in np.unique(instances) if i}


def test_tile_starts_cover_the_axis():
    assert tile_starts(100, 40, 10) == [0, 30, 60]
    assert tile_starts(40, 40, 10) == [0] and tile_starts(30, 40, 10) == [0]
    assert tile_starts(150, 64, 24) == [0, 40, 80, 86]
    with pytest.raises(ValueError, match="exceed the overlap"):
        tile_starts(100, 16, 16)


def test_tiled_inference_reproduces_untiled_instances():
    image, truth = _scene()
    untiled = detect_tiled(image, fake_detect, tile_size=512)
    assert _as_sets(untiled) == _as_sets(truth)
    tiled = detect_tiled(image, fake_detect, tile_size=64, overlap=24)  # overlap > largest diameter (17)
    assert _as_sets(tiled) == _as_sets(untiled)  # no duplicates, no cut nuclei
    assert tiled.dtype == np.int32 and sorted(np.unique(tiled)) == list(range(len(CENTRES) + 1))
    cut = detect_tiled(image, fake_detect, tile_size=64, overlap=1)  # too small an overlap cuts nuclei
    assert _as_sets(cut) != _as_sets(truth)


def test_paint_instances_overlap_removal_duplicates_and_thresholds():
    masks = np.zeros((4, 10, 10), bool)
    masks[0, 0:5, 0:5] = True  # score 0.6
    masks[1, 3:8, 3:8] = True  # score 0.9: keeps the contested 2x2 block
    masks[2, 3:8, 3:9] = True  # duplicate of mask 1 (25 of 30 pixels claimed)
    masks[3, 9, 9] = True  # one pixel: below min_size
    out = paint_instances(masks, [0.6, 0.9, 0.8, 0.99], min_size=2)
    assert (out == 1).sum() == 25 and out[4, 4] == 1  # the 0.9 mask is painted first
    assert (out == 2).sum() == 21 and out.max() == 2 and out[9, 9] == 0
    detections = {"masks": torch.from_numpy(masks[:2, None].astype(np.float32)), "scores": torch.tensor([0.6, 0.3])}
    only_first = detect_tiled(torch.zeros(1, 10, 10), lambda tile: detections, tile_size=10, score_threshold=0.5)
    assert _as_sets(only_first) == _as_sets(masks[0].astype(int))


def test_stitch_slices_and_volume():
    a = np.zeros((8, 8), int)
    a[1:4, 1:4] = 5  # continues into slice 2
    a[5:7, 5:7] = 9  # ends
    b = np.zeros((8, 8), int)
    b[2:5, 1:4] = 1
    b[6:8, 0:2] = 2  # new
    c = np.zeros((8, 8), int)
    c[2:4, 2:4] = 3
    c[6:8, 0:2] = 4
    vol = stitch_slices([a, b, c])
    assert vol[0, 1, 1] == vol[1, 2, 1] == vol[2, 2, 2] == 1
    assert vol[0, 5, 5] == 2 and vol[1, 6, 0] == vol[2, 6, 0] == 3
    assert sorted(np.unique(vol)) == [0, 1, 2, 3]

    image, truth = _scene()
    volume = np.stack([image, image, np.roll(image, 2, axis=2)], axis=1)  # (C, Z, H, W), last slice shifted
    instances = detect_volume(volume, fake_detect, tile_size=64, overlap=24)
    assert instances.shape == (3, 150, 170) and instances.max() == len(CENTRES)
    assert np.array_equal(instances[0], instances[1]) and _as_sets(instances[0]) == _as_sets(truth)
    with pytest.raises(ValueError, match="volume"):
        detect_volume(image, fake_detect)


def test_mask_rcnn_detector_wrapper():
    class Dummy(torch.nn.Module):
        def forward(self, images):
            assert not self.training and not torch.is_grad_enabled()
            return [
                {
                    "masks": torch.ones(1, 1, *images[0].shape[1:]),
                    "scores": torch.tensor([0.7]),
                    "boxes": torch.zeros(1, 4),
                }
            ]

    detect = mask_rcnn_detector(Dummy().train())
    out = detect(torch.zeros(3, 5, 6))
    assert set(out) == {"masks", "scores"} and out["masks"].shape == (1, 1, 5, 6)
