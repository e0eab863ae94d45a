"""Pixel (semantic) metrics of the binary foreground, for label maps of any dimensionality.

The foreground is ``pred > 0`` against ``gt > 0``. The four scores come from one confusion
count; plain numpy is used because MONAI's ``get_confusion_matrix`` / ``compute_dice`` expect
one-hot batched tensors and would add a conversion, not a capability. Conventions match
:mod:`monai_uda.metrics.instance`: both foregrounds empty gives 1.0, exactly one empty 0.0.
"""

from __future__ import annotations

import numpy as np

from monai_uda.metrics.instance import check_label_pair

__all__ = ["pixel_metrics"]


def pixel_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Dice, precision, recall and IoU (Jaccard) of the binary foreground.

    With TP, FP, FN the foreground pixel counts: Dice = 2TP / (2TP + FP + FN),
    precision = TP / (TP + FP), recall = TP / (TP + FN), IoU = TP / (TP + FP + FN).

    Args:
        pred: predicted label map (instance ids or binary), any shape.
        gt: ground-truth label map of the same shape.

    Returns:
        ``{"dice", "precision", "recall", "iou"}`` as floats.

    Raises:
        UDAInputError: shapes differ or a map is not a valid label map.
    """
    pred, gt = check_label_pair(pred, gt)
    pred_fg, gt_fg = pred > 0, gt > 0
    tp = int(np.count_nonzero(pred_fg & gt_fg))
    fp = int(np.count_nonzero(pred_fg)) - tp
    fn = int(np.count_nonzero(gt_fg)) - tp
    if tp + fp == 0 or tp + fn == 0:  # an empty foreground: 1.0 if both are, else 0.0
        score = float(tp + fp + fn == 0)
        return {"dice": score, "precision": score, "recall": score, "iou": score}
    return {
        "dice": 2 * tp / (2 * tp + fp + fn),
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
        "iou": tp / (tp + fp + fn),
    }
