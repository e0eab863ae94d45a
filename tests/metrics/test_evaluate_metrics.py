"""evaluate_dirs / match_files / format_table on small label folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from monai_uda.data.io import read_label, write_array
from monai_uda.errors import UDAInputError
from monai_uda.metrics import METRIC_KEYS, compute_metrics, evaluate_dirs, format_table, match_files


def _shared_data() -> Path:
    override = os.environ.get("MONAI_UDA_SHARED_DATA")
    return Path(override) if override else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _labels() -> dict[str, np.ndarray]:
    a = np.zeros((8, 8), dtype=np.uint16)
    a[1:4, 1:4], a[5:7, 4:8] = 3, 40
    b = np.zeros((8, 8), dtype=np.uint8)
    b[2:6, 2:6] = 1
    return {"a": a, "b": b}


def _write_case(tmp_path: Path) -> tuple[Path, Path]:
    """GT ``a.png``, ``b.tif``; predictions as inference writes them plus a plain ``b.npy``."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    labels = _labels()
    write_array(gt_dir / "a.png", labels["a"])
    write_array(gt_dir / "b.tif", labels["b"])
    pred_a = labels["a"].copy()
    pred_a[5:7, 4:8] = 0  # second nucleus missed
    write_array(pred_dir / "a_instances.tif", pred_a)
    write_array(pred_dir / "a_mask.png", (pred_a > 0).astype(np.uint8) * 255)
    write_array(pred_dir / "a_overlay.png", np.full((8, 8, 3), 200, dtype=np.uint8))
    write_array(pred_dir / "b.npy", labels["b"].astype(np.int32) * 9)
    return pred_dir, gt_dir


def test_evaluate_dirs_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = _write_case(tmp_path)
    out = tmp_path / "report" / "metrics.json"
    results = evaluate_dirs(pred_dir, gt_dir, out)
    saved = json.loads(out.read_text())
    assert saved == results
    assert set(saved) == {"per_image", "mean"}
    assert sorted(saved["per_image"]) == ["a", "b"]
    for scores in [*saved["per_image"].values(), saved["mean"]]:
        assert tuple(scores) == METRIC_KEYS
        assert all(isinstance(value, float) for value in scores.values())
    # a: nucleus 3 (9 px) found exactly, nucleus 40 (8 px) missed: AJI = 9 / (9 + 8)
    assert saved["per_image"]["a"]["aji"] == pytest.approx(9 / 17)
    assert saved["per_image"]["a"]["dq"] == pytest.approx(1 / 1.5)  # tp 1, fn 1
    assert saved["per_image"]["a"]["precision"] == 1.0
    assert saved["per_image"]["b"] == {key: 1.0 for key in METRIC_KEYS}
    assert saved["mean"]["aji"] == pytest.approx((9 / 17 + 1.0) / 2)
    printed = capsys.readouterr().out
    assert printed.strip() == format_table(results)
    assert "mean" in printed.splitlines()[-1]
    # an existing folder as ``out`` receives metrics.json
    evaluate_dirs(pred_dir, gt_dir, tmp_path / "report")
    assert json.loads((tmp_path / "report" / "metrics.json").read_text()) == results


def test_match_files_prefers_instances_over_companions(tmp_path: Path) -> None:
    pred_dir, gt_dir = _write_case(tmp_path)
    pairs = match_files(pred_dir, gt_dir)
    assert {stem: (p.name, g.name) for stem, (p, g) in pairs.items()} == {
        "a": ("a_instances.tif", "a.png"),
        "b": ("b.npy", "b.tif"),
    }


def test_missing_and_extra_stems_raise(tmp_path: Path) -> None:
    pred_dir, gt_dir = _write_case(tmp_path)
    (pred_dir / "b.npy").unlink()
    with pytest.raises(UDAInputError, match=r"no prediction for ground-truth stem\(s\) b"):
        evaluate_dirs(pred_dir, gt_dir)
    write_array(pred_dir / "b.npy", _labels()["b"])
    write_array(pred_dir / "c_instances.tif", _labels()["b"])
    with pytest.raises(UDAInputError, match=r"no ground truth in .* for prediction stem\(s\) c"):
        evaluate_dirs(pred_dir, gt_dir)


def test_ambiguous_empty_and_mismatched_folders_raise(tmp_path: Path) -> None:
    pred_dir, gt_dir = _write_case(tmp_path)
    write_array(pred_dir / "b.png", _labels()["b"])
    with pytest.raises(UDAInputError, match="several prediction files match stem 'b': b.npy, b.png"):
        match_files(pred_dir, gt_dir)
    (pred_dir / "b.png").unlink()
    write_array(pred_dir / "b.npy", np.zeros((8, 9), dtype=np.uint8))
    with pytest.raises(UDAInputError, match=r"b\.npy: prediction shape \(8, 9\) does not match"):
        evaluate_dirs(pred_dir, gt_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UDAInputError, match="no image files found"):
        evaluate_dirs(tmp_path / "empty", gt_dir)
    with pytest.raises(UDAInputError, match="folder does not exist"):
        evaluate_dirs(tmp_path / "nowhere", gt_dir)


def test_3d_nifti_round_trip(tmp_path: Path) -> None:
    volume = np.zeros((4, 5, 6), dtype=np.uint16)
    volume[1:3, 1:4, 1:5] = 2
    write_array(tmp_path / "gt" / "vol.nii.gz", volume)
    write_array(tmp_path / "pred" / "vol_instances.nii.gz", volume * 5)
    results = evaluate_dirs(tmp_path / "pred", tmp_path / "gt")
    assert results["mean"] == {key: 1.0 for key in METRIC_KEYS}


def test_format_table_is_aligned() -> None:
    scores = {key: 0.5 for key in METRIC_KEYS}
    table = format_table({"per_image": {"img_long_name": scores, "b": scores}, "mean": scores})
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[0].split() == ["image", *METRIC_KEYS]
    assert lines[-1].split() == ["mean"] + ["0.5000"] * len(METRIC_KEYS)
    assert [line.split()[0] for line in lines if line[0].isalpha()] == ["image", "img_long_name", "b", "mean"]


def test_real_dsb_labels_against_themselves_and_merged() -> None:
    labels_dir = _shared_data() / "dsb2018_fluo" / "labels"
    if not labels_dir.is_dir():
        pytest.skip(f"{labels_dir} not found")
    gt = read_label(sorted(labels_dir.glob("*.tif"))[0])
    assert compute_metrics(gt, gt) == {key: 1.0 for key in METRIC_KEYS}
    # the binary mask scored as one instance P covering all n nuclei (|P| = sum of |G|):
    # AJI: every G takes P, C = sum |G n P| = |P|, U = n |P| -> 1 / n
    # AJI+: P matches the largest nucleus only, C = |G_max|, U = |P| + (|P| - |G_max|)
    areas = np.bincount(gt.ravel())[1:]
    areas = areas[areas > 0]
    merged = compute_metrics((gt > 0).astype(np.uint8), gt)
    assert merged["aji"] == pytest.approx(1 / len(areas))
    assert merged["aji_plus"] == pytest.approx(areas.max() / (2 * areas.sum() - areas.max()))
    assert merged["dice"] == 1.0


def _binary_case(tmp_path: Path) -> tuple[Path, Path]:
    """GT with two nuclei; the prediction a 0/255 mask of both (one id over two separate regions)."""
    gt = np.zeros((12, 12), dtype=np.uint16)
    gt[1:5, 1:5], gt[7:11, 6:10] = 1, 2
    write_array(tmp_path / "gt" / "x.png", gt)
    write_array(tmp_path / "pred" / "x.png", (gt > 0).astype(np.uint8) * 255)
    return tmp_path / "pred", tmp_path / "gt"


def test_binary_mask_prediction_is_refused_or_labelled(tmp_path: Path) -> None:
    pred_dir, gt_dir = _binary_case(tmp_path)
    with pytest.raises(UDAInputError) as info:
        evaluate_dirs(pred_dir, gt_dir)
    assert str(info.value) == (
        f"{pred_dir / 'x.png'}: looks like a binary mask, not an instance map: id 255 covers 2 separate regions "
        "(scored as one nucleus); pass --label_components true to give each connected region its own id"
    )
    results = evaluate_dirs(pred_dir, gt_dir, label_components="true")
    assert results["mean"]["aji"] == 1.0 and results["mean"]["pq"] == 1.0


def test_instance_map_with_one_fragmented_nucleus_is_scored(tmp_path: Path) -> None:
    """Only maps with at most two ids are taken for masks: many nuclei, one in two pieces, is an instance map."""
    gt = np.zeros((12, 12), dtype=np.uint16)
    gt[0:2, 0:2], gt[4:6, 4:6], gt[8:10, 8:10] = 1, 2, 3
    pred = gt.copy()
    pred[0:2, 10:12] = 1  # nucleus 1 also here
    write_array(tmp_path / "gt" / "x.png", gt)
    write_array(tmp_path / "pred" / "x.png", pred)
    assert evaluate_dirs(tmp_path / "pred", tmp_path / "gt")["mean"]["dice"] < 1.0


def test_out_writes_through_a_symlink_refuses_a_fifo_and_respects_umask(tmp_path: Path) -> None:
    pred_dir, gt_dir = _write_case(tmp_path)
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    evaluate_dirs(pred_dir, gt_dir, link)
    assert link.is_symlink() and set(json.loads(real.read_text())) == {"per_image", "mean"}
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(UDAInputError, match="fifo.json: is a FIFO, not a regular file; refusing to replace it"):
        evaluate_dirs(pred_dir, gt_dir, fifo)
    assert fifo.exists() and not fifo.is_file()
    old = os.umask(0o027)
    try:
        evaluate_dirs(pred_dir, gt_dir, tmp_path / "new.json")
    finally:
        os.umask(old)
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640
    assert not list(tmp_path.glob(".tmp-*"))
