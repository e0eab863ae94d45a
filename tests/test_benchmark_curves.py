"""Checkpoint curves of the benchmark: every scored checkpoint evaluated, rank correlation, selected vs last.

Fake runs only: ``selection.json``, ``scored/`` files whose text is their AJI and a fake evaluation
that reads it back, so every expected value is written by hand.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from monai_uda import benchmark
from monai_uda.benchmark import report
from monai_uda.benchmark.curves import curve_notes, evaluate_checkpoints, read_checkpoints
from monai_uda.data.io import read_array
from monai_uda.errors import UDAInputError


def _fake_run(model_dir: Path, scores, ajis, seconds=None, best: int | None = None) -> None:
    """Scorings at iterations 2, 4, 6, ... with ``scores``; ``scored/`` files hold their AJI; ``model_best.pt`` too."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "scored").mkdir(exist_ok=True)
    entries = []
    for k, (score, aji) in enumerate(zip(scores, ajis)):
        entry = {"iteration": 2 * (k + 1), "score": score, "foreground": 0.25}
        if seconds is not None:
            entry["seconds"] = seconds[k]
        entries.append(entry)
        (model_dir / "scored" / f"model_iteration={2 * (k + 1)}.pt").write_text(str(aji))
    (model_dir / "selection.json").write_text(json.dumps(entries))
    best = max(range(len(scores)), key=lambda k: scores[k]) if best is None else best
    (model_dir / "model_best.pt").write_text(str(ajis[best]))


def _fake_evaluate(checkpoint: Path, work: Path) -> dict[str, float]:
    """The metrics of a fake checkpoint: AJI as its text says, Dice 0.1 above."""
    aji = float(checkpoint.read_text())
    return {"aji": aji, "dice": round(aji + 0.1, 4)}


def test_checkpoints_csv_rank_correlation_and_selected(tmp_path):
    _fake_run(tmp_path / "train", [0.1, 0.3, 0.2], [0.2, 0.6, 0.4], seconds=[10.0, 20.0, 30.0])
    last = {"aji": 0.5, "dice": 0.7}
    summary = evaluate_checkpoints(tmp_path / "train", tmp_path, last, 40.0, 8, _fake_evaluate)
    # the score orders the three checkpoints as AJI does: Spearman 1; model_best.pt is iteration 4's (AJI 0.6)
    assert (summary["aji_selected"], summary["aji_last"], summary["rank_corr"]) == (0.6, 0.5, 1.0)
    lines = read_checkpoints(tmp_path / "checkpoints.csv")
    assert list(lines[0]) == ["checkpoint", "iteration", "seconds", "seconds_from", "score", "foreground",
                              "selected", "aji", "dice"]
    got = [(x["checkpoint"], x["iteration"], x["seconds"], x["seconds_from"], x["score"], x["selected"], x["aji"],
            x["dice"]) for x in lines]
    assert got == [
        ("model_iteration=2.pt", "2", "10.0", "selection.json", "0.1", "0", "0.2", "0.3"),
        ("model_iteration=4.pt", "4", "20.0", "selection.json", "0.3", "0", "0.6", "0.7"),
        ("model_iteration=6.pt", "6", "30.0", "selection.json", "0.2", "0", "0.4", "0.5"),
        ("model_best.pt", "4", "20.0", "selection.json", "0.3", "1", "0.6", "0.7"),
        ("model.pt", "8", "40.0", "train_seconds", "", "0", "0.5", "0.7"),
    ]
    # each checkpoint evaluated in its own folder (the fake writes none; the real one writes metrics.json there)
    _fake_run(tmp_path / "reversed", [0.1, 0.3, 0.2], [0.6, 0.2, 0.4])
    summary = evaluate_checkpoints(tmp_path / "reversed", tmp_path / "r", last, 40.0, 8, _fake_evaluate)
    assert summary["rank_corr"] == -1.0 and summary["aji_selected"] == 0.2  # the best score picked the worst


def test_older_selection_json_without_seconds_and_undefined_correlation(tmp_path):
    _fake_run(tmp_path / "train", [0.5, 0.5], [0.3, 0.4])  # no seconds; a constant score ranks nothing
    summary = evaluate_checkpoints(tmp_path / "train", tmp_path, {"aji": 0.45, "dice": 0.6}, 60.0, 4, _fake_evaluate)
    assert summary["rank_corr"] is None and summary["aji_selected"] == 0.3  # ties: the first best, as saved
    lines = read_checkpoints(tmp_path / "checkpoints.csv")
    # train seconds x iteration / iterations: 60 x 2/4, 60 x 4/4
    assert [(x["seconds"], x["seconds_from"]) for x in lines[:2]] == [("30.0", "estimated"), ("60.0", "estimated")]
    assert "Checkpoint seconds of r are estimated" in "\n".join(curve_notes([("r", "", tmp_path / "checkpoints.csv")]))


def test_a_run_without_scored_checkpoints_evaluates_nothing(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "selection.json").write_text(json.dumps([{"iteration": 2, "score": 0.1, "foreground": 0}]))
    assert evaluate_checkpoints(tmp_path / "train", tmp_path, {"aji": 0.5}, 1.0, 2, _fake_evaluate) == {}
    assert not (tmp_path / "checkpoints.csv").exists()


#: AJI of the scored checkpoints per seed; scores [0.1, 0.3, 0.2] rank seed 0 as AJI does, seed 1 in reverse
SEED_AJIS = {0: [0.2, 0.6, 0.4], 1: [0.6, 0.2, 0.4]}


def _fake_row_with_checkpoints(spec_path, log, timeout):
    """A cellseg_uda row's process without training: scored checkpoints as the real row evaluates them."""
    spec = json.loads(spec_path.read_text())
    seed, row_dir = spec["overrides"]["seed"], Path(spec["row_dir"])
    record = {**{k: 0.5 for k in report.SUMMARY_METRICS}, "train_seconds": 40.0, "iterations": 8}
    if spec["row"] == "cellseg_uda":
        _fake_run(row_dir / "train", [0.1, 0.3, 0.2], SEED_AJIS[seed], seconds=[10.0, 20.0, 30.0])
        if spec["checkpoint_curves"]:
            record.update(evaluate_checkpoints(row_dir / "train", row_dir, {"aji": 0.5, "dice": 0.5}, 40.0, 8,
                                               _fake_evaluate))
    (row_dir / "result.json").write_text(json.dumps(record))
    log.write_text("fake\n")
    return "ok"


def test_results_gain_selected_last_and_rank_corr_with_seeds(tmp_path, sample_2d, monkeypatch):
    from monai_uda.benchmark import runner

    monkeypatch.setattr(runner, "_row_process", _fake_row_with_checkpoints)
    out, datalist = tmp_path / "bench", str(sample_2d / "datalist.json")
    benchmark.run_benchmark("mini", "source_only,cellseg_uda", 1, out, datalist=datalist, seeds=[0, 1])
    with (out / "results.csv").open() as fh:
        reader = csv.DictReader(fh)
        columns = tuple(reader.fieldnames)
        lines = {(r["row"], r["seed"]): r for r in reader}
    assert columns[columns.index("iou") + 1 : columns.index("iou") + 4] == ("aji_selected", "aji_last", "rank_corr")
    assert [lines["cellseg_uda", s][k] for s in "01" for k in ("aji_selected", "aji_last", "rank_corr")] == [
        "0.6", "0.5", "1.0", "0.2", "0.5", "-1.0"]
    assert lines["source_only", "0"]["rank_corr"] == ""  # no scored checkpoints: empty, not zero
    with (out / "results_summary.csv").open() as fh:
        summary = {r["row"]: r for r in csv.DictReader(fh)}["cellseg_uda"]
    # mean(1, -1) = 0, sample std sqrt(2); mean(0.6, 0.2) = 0.4, std 0.4 / sqrt(2) = 0.2828
    assert (summary["rank_corr_mean"], summary["rank_corr_std"]) == ("0.0", "1.4142")
    assert (summary["aji_selected_mean"], summary["aji_selected_std"]) == ("0.4", "0.2828")
    md = (out / "results.md").read_text()
    assert "| AJI selected | AJI last | rank corr |" in md
    assert "| 0.500 ± 0.000 (2) | 0.400 ± 0.283 (2) | 0.500 ± 0.000 (2) | 0.000 ± 1.414 (2) | 40 ± 0 (2) |" in md
    assert "| source_only | 0.500 ± 0.000 (2) |" in md and "| 0.500 ± 0.000 (2) | - | - | - | 40 ± 0 (2) |" in md
    assert "- `rank corr`: Spearman rank correlation" in md and "estimated" not in md
    assert read_array(out / "curves.png")[0].ndim == 3


def test_checkpoint_curves_false_and_rows_without_checkpoints_keep_the_output(tmp_path, sample_2d, monkeypatch):
    from monai_uda.benchmark import runner

    monkeypatch.setattr(runner, "_row_process", _fake_row_with_checkpoints)
    out = tmp_path / "bench"
    benchmark.run_benchmark("mini", "cellseg_uda", 1, out, datalist=str(sample_2d / "datalist.json"),
                            checkpoint_curves=False)
    spec = json.loads((out / "runs" / "cellseg_uda" / "spec.json").read_text())
    assert spec["checkpoint_curves"] is False
    with (out / "results.csv").open() as fh:
        assert tuple(csv.DictReader(fh).fieldnames) == benchmark.COLUMNS  # as before the curves existed
    assert not (out / "curves.png").exists() and "rank corr" not in (out / "results.md").read_text()
    # the switch is no part of the row's signature: a finished row is not retrained for it
    again = benchmark.run_benchmark("mini", "cellseg_uda", 1, out, datalist=str(sample_2d / "datalist.json"))
    assert again["skipped"] == ["cellseg_uda"]
    with pytest.raises(UDAInputError, match="--checkpoint_curves: expected true or false"):
        benchmark.main(checkpoint_curves="maybe", out=str(tmp_path / "x"))


def test_run_row_evaluates_the_checkpoints_with_its_own_inference(tmp_path, monkeypatch):
    """run_row's wiring, its workflows faked: training leaves scored files, "inference" copies a checkpoint's AJI."""
    from types import SimpleNamespace

    from monai_uda.benchmark import row
    from monai_uda.metrics import evaluate

    def workflow(files, run_id, run):
        if run_id == "training":
            _fake_run(Path(run["output_dir"]), [0.1, 0.3, 0.2], [0.2, 0.6, 0.4], seconds=[1.0, 2.0, 3.0])
        return SimpleNamespace()

    def segment(spec, checkpoint, pred_dir):
        pred_dir.mkdir(parents=True)
        (pred_dir / "aji.txt").write_text(checkpoint.read_text() if checkpoint.is_file() else "0.5")

    def evaluate_dirs(pred_dir, labels, out):
        aji = float((Path(pred_dir) / "aji.txt").read_text())
        return {"mean": {"aji": aji, "dice": aji}}

    monkeypatch.setattr(row, "_run_workflow", workflow)
    monkeypatch.setattr(row, "_stages", lambda _: {"trainer": {"iterations": 8, "seconds": 4.0}})
    monkeypatch.setattr(row, "_segment", segment)
    monkeypatch.setattr(row, "_score", lambda spec: ({"aji": 0.5, "dice": 0.5}, 1.0, 1))
    monkeypatch.setattr(evaluate, "evaluate_dirs", evaluate_dirs)
    spec = {"bundle": "cellseg_uda", "spatial_dims": 2, "preset_file": None, "overrides": {}, "budget_seconds": 1,
            "dataset_dir": "d.json", "eval_labels": "labels", "row_dir": str(tmp_path / "run"),
            "model_file": "model.pt"}
    record = row.run_row(spec)
    assert (record["aji_selected"], record["aji_last"], record["rank_corr"]) == (0.6, 0.5, 1.0)
    assert [x["aji"] for x in read_checkpoints(tmp_path / "run" / "checkpoints.csv")] == ["0.2", "0.6", "0.4", "0.6",
                                                                                          "0.5"]
    assert not (tmp_path / "run" / "checkpoints" / "model_best" / "pred").exists()  # predictions removed
    record = row.run_row({**spec, "row_dir": str(tmp_path / "off"), "checkpoint_curves": False})
    assert "rank_corr" not in record and not (tmp_path / "off" / "checkpoints.csv").exists()


def test_rows_without_checkpoint_curves_are_points_at_their_whole_training_time(tmp_path):
    curves = [("cellseg_uda", "", tmp_path / "checkpoints.csv")]
    started = '{"row": "cyc_pdam", "start": "{...}"}'  # the signature of a row started from its donor's weights
    records = [
        {"row": "cellseg_uda", "status": "ok", "aji": "0.5", "train_seconds": "900"},  # has its curve
        {"row": "mask_rcnn_source_only", "status": "ok", "aji": "0.1", "train_seconds": "600"},
        {"row": "cyc_pdam", "status": "ok", "aji": "0.2", "train_seconds": "1800", "signature": started},
        {"row": "darcnn", "status": "ok", "aji": "0.15", "train_seconds": "1200", "signature": "{}"},  # --from_scratch
        {"row": "darcnn_stage1", "status": "failed", "aji": "", "train_seconds": ""},
        {"row": "source_only", "seed": 1, "status": "ok", "aji": "0.3", "train_seconds": "90"},
    ]
    assert report.final_points(records, curves) == [
        ("mask_rcnn_source_only", "", 10.0, 0.1, None),
        ("cyc_pdam", "", 30.0, 0.2, (10.0, 0.1)),  # joined to the detector it started from
        ("darcnn", "", 20.0, 0.15, None),
        ("source_only", "1", 1.5, 0.3, None),
    ]
