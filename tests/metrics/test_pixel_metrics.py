"""Foreground Dice / precision / recall / IoU against hand-computed counts."""

from __future__ import annotations

import numpy as np
import pytest

from monai_uda.errors import UDAInputError
from monai_uda.metrics import pixel_metrics


def test_instance_ids_are_reduced_to_foreground() -> None:
    gt = np.array([[1, 1, 2, 0], [0, 0, 2, 0]])  # foreground: 4 pixels
    pred = np.array([[5, 0, 5, 5], [0, 0, 0, 0]], dtype=np.uint16)  # foreground: 3 pixels
    # TP = 2 ((0,0), (0,2)), FP = 1 ((0,3)), FN = 2 ((0,1), (1,2))
    scores = pixel_metrics(pred, gt)
    assert scores["dice"] == pytest.approx(4 / 7)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 4)
    assert scores["iou"] == pytest.approx(2 / 5)


def test_boolean_3d_masks() -> None:
    gt = np.zeros((2, 3, 3), dtype=bool)
    gt[0] = True  # 9 voxels
    pred = np.zeros_like(gt)
    pred[:, 0, :] = True  # 6 voxels, 3 of them in gt
    # TP 3, FP 3, FN 6
    assert pixel_metrics(pred, gt) == pytest.approx(
        {"dice": 6 / 15, "precision": 3 / 6, "recall": 3 / 9, "iou": 3 / 12}
    )


def test_empty_foregrounds() -> None:
    empty, full = np.zeros((2, 2), int), np.ones((2, 2), int)
    assert pixel_metrics(empty, empty) == {"dice": 1.0, "precision": 1.0, "recall": 1.0, "iou": 1.0}
    assert pixel_metrics(empty, full) == {"dice": 0.0, "precision": 0.0, "recall": 0.0, "iou": 0.0}
    assert pixel_metrics(full, empty) == {"dice": 0.0, "precision": 0.0, "recall": 0.0, "iou": 0.0}


def test_shape_mismatch() -> None:
    with pytest.raises(UDAInputError, match="does not match"):
        pixel_metrics(np.zeros((2, 2, 2), int), np.zeros((2, 2), int))
