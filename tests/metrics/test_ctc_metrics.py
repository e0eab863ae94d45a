"""Cell Tracking Challenge SEG and DET on hand-computed cases (weights w_NS=5, w_FN=10, w_FP=1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from monai_uda.cli import main
from monai_uda.data.io import write_array
from monai_uda.errors import UDAInputError
from monai_uda.metrics import (
    CTC_KEYS,
    METRIC_KEYS,
    CTCCounts,
    compute_metrics,
    ctc_counts,
    ctc_measures,
    evaluate_dirs,
    pool_ctc,
)


def _two_nuclei() -> np.ndarray:
    """Reference with non-contiguous ids: id 2 (4x4 = 16 px) and id 50000 (2x4 = 8 px)."""
    gt = np.zeros((10, 10), dtype=np.int32)
    gt[0:4, 0:4] = 2
    gt[6:8, 4:8] = 50000
    return gt


def test_perfect_result_with_other_ids_scores_one() -> None:
    gt = _two_nuclei()
    pred = np.where(gt == 2, 7, np.where(gt > 0, 300, 0))
    assert ctc_counts(pred, gt) == CTCCounts(references=2, jaccard_sum=2.0)
    assert ctc_measures(pred, gt) == {"SEG": 1.0, "DET": 1.0}


def test_empty_result_costs_the_reference_from_scratch() -> None:
    counts = ctc_counts(np.zeros((10, 10), np.uint8), _two_nuclei())
    assert counts == CTCCounts(references=2, false_negatives=2)
    assert counts.aogm_d == counts.aogm_d0 == 20
    assert ctc_measures(np.zeros((10, 10), np.uint8), _two_nuclei()) == {"SEG": 0.0, "DET": 0.0}


def test_empty_reference_leaves_seg_and_det_undefined() -> None:
    pred = np.zeros((6, 6), np.uint8)
    pred[1:3, 1:3] = 4
    counts = ctc_counts(pred, np.zeros((6, 6), np.uint8))
    assert counts == CTCCounts(false_positives=1)
    assert counts.measures() == {"SEG": None, "DET": None}
    assert ctc_measures(np.zeros((6, 6)), np.zeros((6, 6))) == {"SEG": None, "DET": None}


def test_merged_object_costs_one_split() -> None:
    gt = np.zeros((4, 8), np.uint8)
    gt[0:2, 0:2], gt[0:2, 2:4] = 1, 2  # two touching 4-px nuclei
    pred = (gt > 0).astype(np.uint8)  # one 8-px object covering both entirely
    counts = ctc_counts(pred, gt)
    assert counts == CTCCounts(references=2, jaccard_sum=1.0, splits=1)  # J = 4/8 each
    assert counts.aogm_d == 5 and counts.aogm_d0 == 20
    assert ctc_measures(pred, gt) == pytest.approx({"SEG": 0.5, "DET": 1 - 5 / 20})


def test_three_way_merge_costs_two_splits() -> None:
    gt = np.zeros((2, 6), np.uint8)
    gt[:, 0:2], gt[:, 2:4], gt[:, 4:6] = 1, 2, 3
    counts = ctc_counts((gt > 0).astype(np.uint8), gt)
    assert counts.splits == 2 and counts.aogm_d == 10
    assert counts.measures() == pytest.approx({"SEG": 1 / 3, "DET": 1 - 10 / 30})


def test_split_object_matches_only_the_part_covering_more_than_half() -> None:
    gt = np.zeros((2, 8), np.uint8)
    gt[:, :] = 1  # 16 px
    uneven = np.zeros_like(gt)
    uneven[:, :5], uneven[:, 5:] = 1, 2  # 10 px (> 8, matches) and 6 px (false positive)
    assert ctc_counts(uneven, gt) == CTCCounts(references=1, jaccard_sum=10 / 16, false_positives=1)
    assert ctc_measures(uneven, gt) == pytest.approx({"SEG": 10 / 16, "DET": 1 - 1 / 10})
    halves = np.zeros_like(gt)
    halves[:, :4], halves[:, 4:] = 1, 2  # exactly half each: no match (strictly more than half)
    assert ctc_counts(halves, gt) == CTCCounts(references=1, false_negatives=1, false_positives=2)
    assert ctc_measures(halves, gt) == {"SEG": 0.0, "DET": 0.0}  # AOGM-D 12 > AOGM-D0 10: clipped


def test_small_false_positive_costs_one() -> None:
    gt = _two_nuclei()
    pred = gt.copy()
    pred[9, 9] = 77
    assert ctc_counts(pred, gt) == CTCCounts(references=2, jaccard_sum=2.0, false_positives=1)
    assert ctc_measures(pred, gt) == pytest.approx({"SEG": 1.0, "DET": 1 - 1 / 20})


def test_partial_overlap_of_half_or_less_is_no_match() -> None:
    gt = _two_nuclei()
    pred = np.zeros_like(gt)
    pred[0:4, 0:4] = 1  # nucleus 2 found exactly
    pred[6:8, 4:6] = 2  # 4 of the 8 px of nucleus 50000: not more than half
    assert ctc_counts(pred, gt) == CTCCounts(references=2, jaccard_sum=1.0, false_negatives=1, false_positives=1)
    assert ctc_measures(pred, gt) == pytest.approx({"SEG": 0.5, "DET": 1 - 11 / 20})
    pred[6, 6] = 2  # 5 of 8 px, plus 2 px outside the nucleus: J = 5 / (8 + 2)
    pred[8, 4:6] = 2
    assert ctc_measures(pred, gt) == pytest.approx({"SEG": (1 + 5 / 10) / 2, "DET": 1.0})


def test_object_overlapping_a_second_nucleus_by_less_than_half_is_no_split() -> None:
    gt = _two_nuclei()
    pred = np.zeros_like(gt)
    pred[0:4, 0:4] = 1
    pred[6:8, 4:5] = 1  # the same object also covers 2 of the 8 px of nucleus 50000
    counts = ctc_counts(pred, gt)
    assert counts == CTCCounts(references=2, jaccard_sum=16 / 18, false_negatives=1)
    assert counts.measures() == pytest.approx({"SEG": 8 / 18, "DET": 1 - 10 / 20})


def test_3d_volume() -> None:
    gt = np.zeros((3, 4, 4), np.uint16)
    gt[0:2, 0:2, 0:2] = 1  # 8 voxels
    gt[0:3, 2:4, 2:4] = 9  # 12 voxels
    pred = np.zeros_like(gt)
    pred[0:2, 0:2, 0:2] = 3  # nucleus 1 exactly
    pred[0:2, 2:4, 2:4] = 5  # 8 of the 12 voxels of nucleus 9: J = 8/12
    pred[2, 0, 0] = 6  # one-voxel false positive
    assert ctc_counts(pred, gt) == CTCCounts(references=2, jaccard_sum=1 + 8 / 12, false_positives=1)
    assert ctc_measures(pred, gt) == pytest.approx({"SEG": (1 + 8 / 12) / 2, "DET": 1 - 1 / 20})


def test_pooling_weights_every_reference_object_not_every_image() -> None:
    one = ctc_counts(np.ones((2, 2), np.uint8), np.ones((2, 2), np.uint8))  # 1 object, perfect
    gt = np.zeros((2, 6), np.uint8)
    gt[:, 0:2], gt[:, 2:4], gt[:, 4:6] = 1, 2, 3
    three = ctc_counts(np.zeros_like(gt), gt)  # 3 objects, all missed
    pooled = pool_ctc([one, three])
    assert pooled == one + three == CTCCounts(references=4, jaccard_sum=1.0, false_negatives=3)
    assert pooled.measures() == pytest.approx({"SEG": 1 / 4, "DET": 1 - 30 / 40})


def test_compute_metrics_adds_seg_and_det_only_when_asked() -> None:
    gt = _two_nuclei()
    assert tuple(compute_metrics(gt, gt)) == METRIC_KEYS
    scores = compute_metrics(gt, gt, ctc=True)
    assert tuple(scores) == METRIC_KEYS + CTC_KEYS
    assert scores["SEG"] == scores["DET"] == 1.0


def _write_folders(tmp_path: Path) -> tuple[Path, Path]:
    gt = _two_nuclei()
    pred = gt.copy()
    pred[6:8, 4:8] = 0  # nucleus 50000 missed
    write_array(tmp_path / "gt" / "a.tif", gt)
    write_array(tmp_path / "pred" / "a_instances.tif", pred)
    empty = np.zeros((10, 10), np.uint16)
    write_array(tmp_path / "gt" / "b.tif", empty)
    write_array(tmp_path / "pred" / "b_instances.tif", empty)
    return tmp_path / "pred", tmp_path / "gt"


def test_evaluate_ctc_per_image_and_pooled_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = _write_folders(tmp_path)
    plain = evaluate_dirs(pred_dir, gt_dir)
    assert all(tuple(scores) == METRIC_KEYS for scores in [*plain["per_image"].values(), plain["mean"]])
    out = tmp_path / "m.json"
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out), "--ctc", "true"]) == 0
    saved = json.loads(out.read_text())
    assert {k: saved["per_image"]["a"][k] for k in CTC_KEYS} == pytest.approx({"SEG": 0.5, "DET": 0.5})
    assert {k: saved["per_image"]["b"][k] for k in CTC_KEYS} == {"SEG": None, "DET": None}
    assert {k: saved["mean"][k] for k in CTC_KEYS} == pytest.approx({"SEG": 0.5, "DET": 0.5})
    assert {k: saved["mean"][k] for k in METRIC_KEYS} == plain["mean"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[-6].split()[-2:] == ["SEG", "DET"] and printed[-3].split()[-2:] == ["n/a", "n/a"]


def test_evaluate_ctc_refuses_a_reference_without_objects(tmp_path: Path) -> None:
    empty = np.zeros((6, 6), np.uint16)
    write_array(tmp_path / "gt" / "a.tif", empty)
    write_array(tmp_path / "pred" / "a.tif", empty)
    assert evaluate_dirs(tmp_path / "pred", tmp_path / "gt")["mean"]["aji"] == 1.0
    with pytest.raises(UDAInputError, match="SEG and DET are undefined"):
        evaluate_dirs(tmp_path / "pred", tmp_path / "gt", ctc="true")


def test_bundle_evaluate_configs_pass_ctc(tmp_path: Path) -> None:
    from monai.bundle import ConfigParser, run

    bundles = Path(__file__).resolve().parents[2] / "bundles"
    for config in sorted(bundles.glob("*/configs/evaluate.yaml")):
        parser = ConfigParser()
        parser.read_config(str(config))
        assert parser["ctc"] is False and "@ctc)" in parser["run"][0], config
    pred_dir, gt_dir = _write_folders(tmp_path)
    configs = bundles / "cellseg_uda" / "configs"
    out = tmp_path / "m.json"
    run(
        "evaluate", config_file=str(configs / "evaluate.yaml"), meta_file=str(configs / "metadata.json"),
        pred_dir=str(pred_dir), gt_dir=str(gt_dir), out=str(out), ctc="true",
    )
    assert json.loads(out.read_text())["mean"]["DET"] == pytest.approx(0.5)
