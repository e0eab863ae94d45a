"""Instance metrics (AJI, AJI+, PQ/SQ/DQ) against hand-computed cases and a brute-force AJI."""

from __future__ import annotations

import numpy as np
import pytest

from monai_uda.errors import UDAInputError
from monai_uda.metrics import (
    aggregated_jaccard_index,
    aggregated_jaccard_index_plus,
    compute_metrics,
    contingency,
    instance_metrics,
    panoptic_quality,
)

INSTANCE_KEYS = ("aji", "aji_plus", "pq", "sq", "dq", "object_f1")


def test_perfect_match_with_non_contiguous_ids() -> None:
    gt = np.zeros((4, 6), dtype=np.uint16)
    gt[:2, :2] = 1
    gt[2:, 3:] = 2
    pred = np.where(gt == 1, 7, np.where(gt == 2, 300, 0))  # same objects, ids 7 and 300
    scores = instance_metrics(pred, gt)
    for key in INSTANCE_KEYS:
        assert scores[key] == 1.0, key
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 0, 0)


def test_merged_prediction_aji_and_aji_plus_differ() -> None:
    # GT ids 7 and 300 (non-contiguous), 6 pixels each; one prediction covers both (16 pixels)
    row_gt = [7, 7, 7, 0, 0, 300, 300, 300]
    gt = np.array([row_gt, row_gt], dtype=np.int32)
    pred = np.full((2, 8), 65535, dtype=np.uint16)
    scores = compute_metrics(pred, gt)
    # AJI: both GT nuclei take P (IoU 6/16 each): C = 6 + 6 = 12, U = 16 + 16 = 32 -> 0.375
    assert scores["aji"] == pytest.approx(12 / 32)
    # AJI+: P matches one nucleus only: C = 6, U = 16 + 6 (unmatched GT) = 22
    assert scores["aji_plus"] == pytest.approx(6 / 22)
    # IoU 0.375 <= 0.5: no match, tp=0 fp=1 fn=2 -> DQ = SQ = PQ = 0
    assert (scores["dq"], scores["sq"], scores["pq"], scores["object_f1"]) == (0.0, 0.0, 0.0, 0.0)
    # foreground: TP 12, FP 4, FN 0
    assert scores["dice"] == pytest.approx(24 / 28)
    assert scores["precision"] == pytest.approx(12 / 16)
    assert scores["recall"] == 1.0
    assert scores["iou"] == pytest.approx(12 / 16)
    assert panoptic_quality(pred, gt) == {"pq": 0.0, "sq": 0.0, "dq": 0.0, "tp": 0, "fp": 1, "fn": 2}


def test_split_nucleus() -> None:
    gt = np.ones((2, 4), dtype=np.uint8)  # one nucleus of 8 pixels
    pred = np.array([[1, 1, 1, 2], [1, 1, 1, 2]])  # P1 6 pixels, P2 2 pixels
    scores = instance_metrics(pred, gt)
    # AJI: G takes P1 (IoU 6/8): C = 6, U = 8; unused P2 adds 2 -> 6 / 10
    assert scores["aji"] == pytest.approx(0.6)
    assert scores["aji_plus"] == pytest.approx(0.6)
    # P1 matches (0.75 > 0.5): tp=1, fp=1, fn=0 -> DQ = 1 / (1 + 0.5) = 2/3, SQ = 0.75, PQ = 0.5
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 1, 0)
    assert scores["dq"] == pytest.approx(2 / 3)
    assert scores["sq"] == pytest.approx(0.75)
    assert scores["pq"] == pytest.approx(0.5)


def test_missed_nucleus_and_false_positive() -> None:
    gt = np.zeros((3, 6), dtype=np.uint8)
    gt[:2, :2] = 1  # A, 4 pixels
    gt[2, 4:] = 2  # B, 2 pixels, never predicted
    pred = np.zeros_like(gt)
    pred[:2, :2] = 5  # exactly A
    pred[0, 3:6] = 6  # false positive, 3 pixels
    scores = compute_metrics(pred, gt)
    # C = 4; U = 4 (A with P5) + 2 (B, no overlap) + 3 (unused P6) = 9
    assert scores["aji"] == pytest.approx(4 / 9)
    assert scores["aji_plus"] == pytest.approx(4 / 9)
    # tp=1 fp=1 fn=1 -> DQ = 1 / 2, SQ = 1, PQ = 0.5
    assert scores["dq"] == pytest.approx(0.5)
    assert scores["sq"] == pytest.approx(1.0)
    assert scores["pq"] == pytest.approx(0.5)
    # pixels: TP 4, FP 3, FN 2
    assert scores["dice"] == pytest.approx(8 / 13)
    assert scores["precision"] == pytest.approx(4 / 7)
    assert scores["recall"] == pytest.approx(4 / 6)
    assert scores["iou"] == pytest.approx(4 / 9)


def test_3d_volume() -> None:
    gt = np.zeros((2, 2, 4), dtype=np.uint16)
    gt[:, :, 0:2] = 1  # 8 voxels
    gt[:, :, 2:4] = 2  # 8 voxels
    pred = np.zeros_like(gt)
    pred[:, :, 0:3] = 5  # 12 voxels
    pred[:, :, 3] = 9  # 4 voxels
    # pairs: (1,5) I=8 U=12 IoU 2/3; (2,5) I=4 U=16 IoU 1/4; (2,9) I=4 U=8 IoU 1/2
    table = contingency(pred, gt)
    assert table.pair_inter.tolist() == [8, 4, 4]
    assert table.pair_iou == pytest.approx([2 / 3, 1 / 4, 1 / 2])
    scores = instance_metrics(pred, gt)
    # AJI: G1 -> P5 (8/12), G2 -> P9 (4/8): C = 12, U = 20; AJI+ picks the same pairs
    assert scores["aji"] == pytest.approx(0.6)
    assert scores["aji_plus"] == pytest.approx(0.6)
    # IoU 1/2 is not > 0.5: tp=1 fp=1 fn=1 -> DQ 0.5, SQ 2/3, PQ 1/3
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 1, 1)
    assert scores["dq"] == pytest.approx(0.5)
    assert scores["sq"] == pytest.approx(2 / 3)
    assert scores["pq"] == pytest.approx(1 / 3)


def test_aji_plus_uses_the_best_one_to_one_matching() -> None:
    # G1 overlaps P1 (I 3) and P2 (I 1); G2 overlaps P1 only (I 2). Greedy per-GT would give
    # P1 to both; the one-to-one matching of maximum total IoU is G1-P2 + G2-P1 or G1-P1 alone.
    gt = np.array([[1, 1, 1, 1, 2, 2]])
    pred = np.array([[2, 1, 1, 1, 1, 1]])
    # IoU(G1,P1) = 3/(4+5-3) = 1/2, IoU(G1,P2) = 1/4, IoU(G2,P1) = 2/5
    # G1-P1 alone: 0.5; G1-P2 + G2-P1: 0.25 + 0.4 = 0.65 -> chosen
    # C = 1 + 2 = 3, U = 4 (G1 u P2) + 5 (G2 u P1) = 9
    assert aggregated_jaccard_index_plus(pred, gt) == pytest.approx(3 / 9)
    # AJI: G1 -> P1 (I 3, U 6), G2 -> P1 (I 2, U 5), unused P2 adds 1: 5 / 12
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(5 / 12)


@pytest.mark.parametrize(
    ("pred_empty", "gt_empty", "expected"), [(True, False, 0.0), (False, True, 0.0), (True, True, 1.0)]
)
def test_empty_maps(pred_empty: bool, gt_empty: bool, expected: float) -> None:
    labels = np.zeros((3, 3), dtype=np.uint8)
    labels[0, 0], labels[2, 2] = 1, 2
    pred = np.zeros_like(labels) if pred_empty else labels
    gt = np.zeros_like(labels) if gt_empty else labels
    scores = compute_metrics(pred, gt)
    assert scores == {key: expected for key in scores}
    counts = panoptic_quality(pred, gt)
    assert (counts["tp"], counts["fp"], counts["fn"]) == (0, 0 if pred_empty else 2, 0 if gt_empty else 2)


def test_bad_inputs_raise_uda_input_error() -> None:
    with pytest.raises(UDAInputError, match=r"prediction shape \(4, 4\) does not match ground-truth shape \(4, 5\)"):
        compute_metrics(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(UDAInputError, match="negative ids"):
        aggregated_jaccard_index(np.full((2, 2), -1), np.zeros((2, 2), int))
    with pytest.raises(UDAInputError, match="non-integer"):
        aggregated_jaccard_index(np.full((2, 2), 0.5), np.zeros((2, 2), int))
    with pytest.raises(UDAInputError, match="iou_threshold"):
        panoptic_quality(np.zeros((2, 2), int), np.zeros((2, 2), int), iou_threshold=0.3)


def _brute_force_aji(pred: np.ndarray, gt: np.ndarray) -> float:
    """Kumar et al. 2017, Algorithm 1, literally: full-image masks for every object pair."""
    used: set[int] = set()
    inter_sum = union_sum = 0
    for g in np.unique(gt)[1:]:
        g_mask = gt == g
        best, best_iou = None, 0.0
        for p in np.unique(pred)[1:]:
            p_mask = pred == p
            iou = (g_mask & p_mask).sum() / (g_mask | p_mask).sum()
            if iou > best_iou:
                best, best_iou = p, iou
        if best is None:
            union_sum += g_mask.sum()
            continue
        used.add(int(best))
        inter_sum += (g_mask & (pred == best)).sum()
        union_sum += (g_mask | (pred == best)).sum()
    for p in np.unique(pred)[1:]:
        if int(p) not in used:
            union_sum += (pred == p).sum()
    return inter_sum / union_sum


def test_aji_matches_brute_force_on_random_maps() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        # blocky random maps (4x4 tiles) so objects overlap partially, with sparse ids
        gt = np.kron(rng.integers(0, 6, (6, 6)), np.ones((4, 4), dtype=int)) * 11
        pred = np.roll(np.kron(rng.integers(0, 5, (6, 6)), np.ones((4, 4), dtype=int)), 2, axis=1) * 3
        assert aggregated_jaccard_index(pred, gt) == pytest.approx(_brute_force_aji(pred, gt))
