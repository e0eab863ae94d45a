"""Instance and pixel metrics for 2D and 3D segmentation (numpy only, no network code).

``compute_metrics(pred, gt)`` scores one label map; ``evaluate_dirs(pred, gt, out)`` scores a
folder of predictions against a folder of ground truth and writes a JSON report; with
``ctc=True`` both add the Cell Tracking Challenge SEG and DET measures (:mod:`.ctc`).
"""

from __future__ import annotations

from monai_uda.metrics.ctc import CTC_WEIGHTS, CTCCounts, ctc_counts, ctc_measures, pool_ctc
from monai_uda.metrics.evaluate import CTC_KEYS, METRIC_KEYS, compute_metrics, evaluate_dirs, format_table, match_files
from monai_uda.metrics.instance import (
    Contingency,
    aggregated_jaccard_index,
    aggregated_jaccard_index_plus,
    check_label_pair,
    contingency,
    instance_metrics,
    panoptic_quality,
)
from monai_uda.metrics.pixel import pixel_metrics

__all__ = [
    "CTC_KEYS",
    "CTC_WEIGHTS",
    "METRIC_KEYS",
    "CTCCounts",
    "Contingency",
    "aggregated_jaccard_index",
    "aggregated_jaccard_index_plus",
    "check_label_pair",
    "compute_metrics",
    "contingency",
    "ctc_counts",
    "ctc_measures",
    "evaluate_dirs",
    "format_table",
    "instance_metrics",
    "match_files",
    "panoptic_quality",
    "pool_ctc",
    "pixel_metrics",
]
