"""``monai-uda benchmark`` on the built-in 2D sample as a user datalist recipe, with tiny networks."""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest
from ignite.engine import Engine

from monai_uda import benchmark
from monai_uda.benchmark import report, settings
from monai_uda.benchmark.presets import BENCHMARK_PRESETS, build_for_benchmark
from monai_uda.benchmark.recipes import ROWS, Row
from monai_uda.data.io import read_array
from monai_uda.engines.budget import TimeBudget
from monai_uda.errors import UDAInputError

TINY = {
    "widths": [4, 8, 16],
    "disc_widths": [4, 4, 4, 4],
    "source_patch": [64, 64],
    "target_patch": [64, 64],
    "batch_size": 2,
}


def test_time_budget_stops_an_engine_and_reports_it():
    engine = Engine(lambda e, batch: time.sleep(0.02))
    TimeBudget(0.1).attach(engine)
    state = engine.run(range(1000), max_epochs=1)
    assert state.budget_exhausted and 3 <= state.iteration < 100

    unlimited = Engine(lambda e, batch: None)
    TimeBudget(None).attach(unlimited)
    assert unlimited.run(range(7), max_epochs=1).iteration == 7 and not unlimited.state.budget_exhausted


def test_write_results_table_csv_and_failed_row(tmp_path):
    ok = {
        "setting": "s",
        "row": "source_only",
        "bundle": "cellseg_uda",
        "status": "ok",
        "aji": 0.51234,
        "aji_plus": 0.5,
        "pq": 0.4,
        "object_f1": 0.6,
        "dice": 0.75,
        "train_seconds": 300.2,
        "iterations": 120,
        "infer_megapixels_per_s": 1.5,
        "peak_rss_mb": 900.0,
        "budget_minutes": 5.0,
        "signature": "x",
    }
    failed = {"setting": "s", "row": "cellseg_uda", "bundle": "cellseg_uda", "status": "failed", "budget_minutes": 5.0}
    benchmark.write_results(tmp_path, [ok, failed], ["# Benchmark: s"])
    with (tmp_path / "results.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == benchmark.COLUMNS
        records = list(reader)
    assert [r["status"] for r in records] == ["ok", "failed"] and records[0]["aji"] == "0.51234"
    md = (tmp_path / "results.md").read_text()
    assert "| source_only | 0.512 | 0.500 | 0.400 | 0.600 | 0.750 | 300.2 | 120 | 5 | 1.500 | 900 |" in md
    assert "| cellseg_uda | failed | - |" in md
    assert read_array(tmp_path / "results.png")[0].ndim == 3
    assert benchmark.read_results(tmp_path)["cellseg_uda"]["status"] == "failed"


def test_help_runs_nothing_and_bad_arguments_are_one_line_errors(tmp_path, capsys, sample_2d):
    assert benchmark.main(help=True) == ""
    text = capsys.readouterr().out
    assert "dsb2018_fluo->monuseg" in text and "cellseg_ssda_50" in text and "--budget-minutes" in text
    datalist = str(sample_2d / "datalist.json")
    with pytest.raises(UDAInputError, match="unknown row 'nope'"):
        benchmark.run_benchmark("mini", "nope", 1, tmp_path, datalist=datalist)
    with pytest.raises(UDAInputError, match="does not apply"):  # the sample's target images are unlabelled
        benchmark.run_benchmark("mini", "cellseg_ssda_10", 1, tmp_path, datalist=datalist)
    with pytest.raises(UDAInputError, match="unknown setting"):
        benchmark.run_benchmark("no_such_setting", None, 1, tmp_path)
    with pytest.raises(UDAInputError, match="must be positive"):
        benchmark.run_benchmark("mini", "source_only", 0, tmp_path, datalist=datalist)
    assert not (tmp_path / "results.csv").exists()


def test_rows_results_kept_after_failure_and_skipped_on_rerun(tmp_path, sample_2d, monkeypatch):
    # a row whose process fails: an invalid CellSegUDA mode
    monkeypatch.setitem(ROWS, "broken", Row("broken", "cellseg_uda", "fails on purpose", {"mode": "no_such_mode"}))
    monkeypatch.setattr(settings, "CELLSEG_UNSUPERVISED", settings.CELLSEG_UNSUPERVISED + ("broken",))
    out, datalist = tmp_path / "bench", str(sample_2d / "datalist.json")
    # 3 s budget and no iteration cap: the time budget must stop training
    summary = benchmark.run_benchmark("mini", "source_only,broken", 0.05, out, datalist=datalist, overrides=TINY)
    assert summary["ran"] == ["source_only"] and summary["failed"] == ["broken"]
    with (out / "results.csv").open() as fh:
        records = {r["row"]: r for r in csv.DictReader(fh)}
    assert records["source_only"]["status"] == "ok" and records["broken"]["status"] == "failed"
    done = records["source_only"]
    assert 1 <= int(done["iterations"]) < 1500  # stopped by the budget, not by the preset's max_iterations
    assert all(0.0 <= float(done[k]) <= 1.0 for k in ("aji", "aji_plus", "pq", "object_f1", "dice"))
    assert (
        float(done["train_seconds"]) >= 3.0
        and float(done["peak_rss_mb"]) > 50
        and float(done["infer_megapixels_per_s"]) > 0
    )
    metrics = json.loads((out / "runs" / "source_only" / "metrics.json").read_text())["mean"]
    assert np.isclose(metrics["aji"], float(done["aji"]), atol=1e-4)
    for name in ("results.md", "results.png", "overlays/source_only.png", "overlays/ground_truth.png"):
        assert (out / name).is_file(), name
    assert "mode must be one of" in (out / "logs" / "broken.log").read_text()
    assert "| broken | failed |" in (out / "results.md").read_text()

    model = out / "runs" / "source_only" / "train" / "model.pt"
    stamp = model.stat().st_mtime_ns
    again = benchmark.run_benchmark("mini", "source_only", 0.05, out, datalist=datalist, overrides=TINY)
    assert again["skipped"] == ["source_only"] and not again["ran"] and model.stat().st_mtime_ns == stamp
    assert {r["row"] for r in again["results"]} == {"source_only", "broken"}  # earlier records kept


#: a tiny DARCNN (64 px patches, frozen ResNet, few proposals); training and inference alike
DARCNN_TINY = {
    "patch": [64, 64],
    "projection_dim": 16,
    "mmd_grid": 4,
    "trainable_layers": 0,
    "detections_per_image": 10,
    "detections_per_tile": 5,
    "tile_overlap": 16,
    "detector_kwargs": {
        "rpn_pre_nms_top_n_train": 100,
        "rpn_post_nms_top_n_train": 20,
        "rpn_pre_nms_top_n_test": 100,
        "rpn_post_nms_top_n_test": 20,
        "box_batch_size_per_image": 16,
    },
}


def test_darcnn_rows_stage1_alone_and_both_stages(tmp_path, sample_2d, capsys):
    out = tmp_path / "bench"
    summary = benchmark.run_benchmark(
        "mini",
        "darcnn_stage1,darcnn",
        10,
        out,
        datalist=str(sample_2d / "datalist.json"),
        max_iterations=2,
        overrides=DARCNN_TINY,
        from_scratch=True,  # random start: no source-only detector first (tests/test_benchmark_rows.py)
    )
    assert summary["ran"] == ["darcnn_stage1", "darcnn"] and not summary["failed"]
    with (out / "results.csv").open() as fh:
        records = {r["row"]: r for r in csv.DictReader(fh)}
    assert int(records["darcnn_stage1"]["iterations"]) == 2  # stage 1 only
    assert int(records["darcnn"]["iterations"]) == 4  # 2 per stage, stage 1 taken over from darcnn_stage1
    stage1_only = out / "runs" / "darcnn_stage1" / "train"
    assert (stage1_only / "stage1" / "model.pt").is_file() and not (stage1_only / "stage2").exists()
    both = out / "runs" / "darcnn" / "train"
    assert (both / "model.pt").is_file()
    # the two-stage row continued from the very stage-1 model of the stage-1 row (a hard link) ...
    assert (both / "stage1" / "model.pt").samefile(stage1_only / "stage1" / "model.pt")
    donor = json.loads((out / "runs" / "darcnn_stage1" / "result.json").read_text())
    own = json.loads((out / "runs" / "darcnn" / "result.json").read_text())
    assert own["stages"]["stage1_trainer"]["iterations"] == 0 and own["stages"]["stage2_trainer"]["iterations"] == 2
    # ... and its train seconds include that stage's
    assert float(records["darcnn"]["train_seconds"]) == pytest.approx(
        own["train_seconds"] + donor["train_seconds"], abs=0.2
    )
    assert "darcnn: continues from the finished stage1 of row darcnn_stage1" in capsys.readouterr().out
    assert all(0.0 <= float(records[r][k]) <= 1.0 for r in records for k in ("aji", "pq", "object_f1", "dice"))


def test_results_md_lists_the_command_of_every_run_into_the_same_out(tmp_path):
    first, second = "monai-uda benchmark --rows cyc_pdam", "monai-uda benchmark --rows darcnn_stage1"
    assert report.commands(tmp_path, first) == [first]
    assert report.commands(tmp_path, second) == [first, second]
    assert report.commands(tmp_path, first) == [first, second]  # a rerun is not listed twice
    assert report.commands(tmp_path, None) == [first, second]
    assert (tmp_path / "commands.txt").read_text() == f"{first}\n{second}\n"


def test_time_budget_configs_ship_with_the_benchmark():
    from monai_uda.benchmark.row import CONFIGS

    assert {row.budget_config for row in ROWS.values()} == {p.name for p in CONFIGS.glob("time_budget*.yaml")}


def test_ad_gan_preset():
    method, batch = build_for_benchmark("ad_gan", "cpu")
    assert batch["source_image"].shape == (2, 1, 128, 128) and set(batch["source_image"].unique().tolist()) <= {
        -1.0,
        1.0,
    }
    assert batch["target_image"].shape == (2, 1, 128, 128)
    assert method.generator.encoder.layers[0].conv.out_channels == 32
    with pytest.raises(ValueError):
        build_for_benchmark("ad_gan", "gpu")


def test_cyc_pdam_preset():
    from monai_uda.methods.cyc_pdam import PDAMStage

    method, batch = build_for_benchmark("cyc_pdam", "cpu")
    assert isinstance(method, PDAMStage) and batch["source_image"].shape == (1, 3, 128, 128)
    assert batch["source_label"].max() == 16 and batch["target_image"].shape == (1, 3, 128, 128)
    with pytest.raises(ValueError, match="unknown preset"):
        build_for_benchmark("cyc_pdam", "gpu")


def test_darcnn_preset():
    from monai_uda.methods.darcnn import DARCNNStage1

    method, batch = build_for_benchmark("darcnn", "cpu")
    assert isinstance(method, DARCNNStage1)
    assert batch["source_image"].shape == batch["target_image"].shape == (1, 3, 256, 256)
    assert int(batch["source_label"].max()) == 16  # one disc per grid cell
    assert method.detector.heads["target"].detections_per_img == 50
    with pytest.raises(ValueError, match="preset"):
        build_for_benchmark("darcnn", "gpu-cluster")


def test_cellseg_uda_preset_and_unknown_bundle():
    method, batch = build_for_benchmark("cellseg_uda", "cpu")
    assert hasattr(method, "step") and batch["source_image"].shape[0] == batch["target_image"].shape[0]
    assert set(BENCHMARK_PRESETS) == {"ad_gan", "cyc_pdam", "darcnn"}
    with pytest.raises(ValueError, match="unknown bundle"):
        build_for_benchmark("no_such_bundle", "cpu")


def test_budget_preset_and_ad_gan_preset_options(tmp_path):
    """--preset collided with AD-GAN's mask preset: it is an error naming both new options."""
    with pytest.raises(UDAInputError, match=r"--budget_preset cpu\|paper.*--ad_gan_preset NAME"):
        benchmark.main(preset="cpu", out=str(tmp_path))
    with pytest.raises(UDAInputError, match="--budget_preset must be cpu or paper"):
        benchmark.main(budget_preset="gpu", out=str(tmp_path))
    with pytest.raises(UDAInputError, match="valid: auto, dsb2018_fluo, hela"):
        benchmark.main(ad_gan_preset="HeLa", out=str(tmp_path))
    assert not any(tmp_path.iterdir())  # refused before anything ran
    # the mask preset reaches the AD-GAN rows only, after the setting's own (synthetic->dsb2018_fluo: dsb2018_fluo)
    from monai_uda.benchmark.runner import _row_spec

    setting = settings.SETTINGS["synthetic->dsb2018_fluo"]
    prepared = settings.Prepared(tmp_path / "d.json", tmp_path, tmp_path, "x", [])
    choice = {"ad_gan": {"preset": "auto"}}
    ad_gan = _row_spec(ROWS["ad_gan"], setting, prepared, "cpu", 1.0, None, None, choice)[0]["overrides"]
    target = _row_spec(ROWS["target_only"], setting, prepared, "cpu", 1.0, None, None, choice)[0]["overrides"]
    default = _row_spec(ROWS["ad_gan"], setting, prepared, "cpu", 1.0, None, None)[0]["overrides"]
    assert ad_gan["preset"] == "auto" and default["preset"] == "dsb2018_fluo" and "preset" not in target


#: ``results.csv`` columns before ``--seeds`` existed: a run without ``--seeds`` must keep them
GOLDEN_COLUMNS = (
    "setting", "row", "bundle", "status", "aji", "aji_plus", "pq", "object_f1", "dice", "sq", "dq", "precision",
    "recall", "iou", "train_seconds", "iterations", "infer_seconds", "infer_megapixels_per_s", "peak_rss_mb",
    "budget_minutes", "n_eval_images", "signature",
)


def _fake_row_process(spec_path, log, timeout):
    """A row's process without training: scores that depend on the row and the seed; DARCNN's stage-1 model file."""
    from pathlib import Path

    spec = json.loads(spec_path.read_text())
    seed, row_dir = spec["overrides"]["seed"], Path(spec["row_dir"])
    aji = {"darcnn_stage1": 0.4 + 0.1 * seed, "darcnn": 0.6 + 0.02 * seed}.get(spec["row"], 0.3)
    (row_dir / "train" / "stage1").mkdir(parents=True, exist_ok=True)
    if not (row_dir / "train" / "stage1" / "model.pt").exists():  # the shared stage is taken over, not rewritten
        (row_dir / "train" / "stage1" / "model.pt").write_text(f"seed{seed}")
    stages = {"stage1_trainer": {"iterations": 2, "seconds": 1.0}}
    record = {**{k: aji for k in report.SUMMARY_METRICS}, "train_seconds": 10.0 + seed, "iterations": 2,
              "stages": stages, "stage_signature": spec["stage_signature"]}
    (row_dir / "result.json").write_text(json.dumps(record))
    log.write_text("fake\n")
    return "ok"


def test_seeds_run_every_row_per_seed_and_summarise(tmp_path, sample_2d, monkeypatch):
    from monai_uda.benchmark import runner

    monkeypatch.setattr(runner, "_row_process", _fake_row_process)
    out, datalist = tmp_path / "bench", str(sample_2d / "datalist.json")
    summary = benchmark.run_benchmark("mini", "darcnn_stage1,darcnn", 1, out, datalist=datalist, seeds=[0, 1],
                                      from_scratch=True)  # no source-only detector first: tests/test_benchmark_rows.py
    runs = ["darcnn_stage1/seed0", "darcnn_stage1/seed1", "darcnn/seed0", "darcnn/seed1"]
    assert summary["ran"] == runs and not summary["failed"]
    for name in runs:  # each (row, seed) in its own folder, trained with its seed
        assert json.loads((out / "runs" / name / "spec.json").read_text())["overrides"]["seed"] == int(name[-1])
        assert (out / "logs" / f"{name}.log").is_file()
    # DARCNN of seed k continues from the stage 1 of seed k
    for k in (0, 1):
        taken = out / "runs" / f"darcnn/seed{k}/train/stage1/model.pt"
        assert taken.samefile(out / "runs" / f"darcnn_stage1/seed{k}/train/stage1/model.pt")
        assert taken.read_text() == f"seed{k}"
    with (out / "results.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == GOLDEN_COLUMNS[:2] + ("seed",) + GOLDEN_COLUMNS[2:]
        lines = [(r["row"], r["seed"], float(r["aji"]), float(r["train_seconds"])) for r in reader]
    # darcnn's train seconds include the stage-1 seconds it took over (the fake's whole 10 + seed s)
    assert lines == [("darcnn_stage1", "0", 0.4, 10.0), ("darcnn_stage1", "1", 0.5, 11.0),
                     ("darcnn", "0", 0.6, 20.0), ("darcnn", "1", 0.62, 22.0)]
    with (out / "results_summary.csv").open() as fh:
        rows = {r["row"]: r for r in csv.DictReader(fh)}
    # by hand: mean(0.4, 0.5) = 0.45, sample std = |0.5 - 0.4| / sqrt(2) = 0.0707; 0.61 and 0.0141 for darcnn
    assert rows["darcnn_stage1"]["n"] == "2" and rows["darcnn_stage1"]["seeds"] == "0 1"
    assert float(rows["darcnn_stage1"]["aji_mean"]) == 0.45 and float(rows["darcnn_stage1"]["aji_std"]) == 0.0707
    assert float(rows["darcnn"]["aji_mean"]) == 0.61 and float(rows["darcnn"]["aji_std"]) == 0.0141
    assert float(rows["darcnn"]["train_seconds_mean"]) == 21.0
    md = (out / "results.md").read_text()
    assert "| darcnn_stage1 | 0.450 ± 0.071 (2) |" in md and "| darcnn | 0.610 ± 0.014 (2) |" in md
    assert "seeds 0, 1 (each row trained once per seed)" in md
    assert "- `darcnn`: seed 0 0.600, seed 1 0.620" in md
    # |0.61 - 0.45| = 0.16 > 0.0707 + 0.0141
    assert "not a significance test): darcnn > darcnn_stage1. Every other pair of such rows (0)" in md
    assert read_array(out / "results.png")[0].ndim == 3

    again = benchmark.run_benchmark("mini", "darcnn_stage1,darcnn", 1, out, datalist=datalist, seeds=[0, 1],
                                    from_scratch=True)
    assert again["skipped"] == runs and not again["ran"]  # finished (row, seed) runs are skipped


def test_without_seeds_the_output_is_unchanged(tmp_path, sample_2d, monkeypatch):
    from monai_uda.benchmark import runner

    monkeypatch.setattr(runner, "_row_process", _fake_row_process)
    out = tmp_path / "bench"
    summary = benchmark.run_benchmark("mini", "source_only", 1, out, datalist=str(sample_2d / "datalist.json"))
    assert summary["ran"] == ["source_only"]
    run = out / "runs" / "source_only"
    assert (run / "result.json").is_file() and not (run / "seed0").exists()
    assert json.loads((out / "runs" / "source_only" / "spec.json").read_text())["overrides"]["seed"] == 0
    with (out / "results.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == GOLDEN_COLUMNS == benchmark.COLUMNS
        assert [r["aji"] for r in reader] == ["0.3"]
    assert not (out / "results_summary.csv").exists() and (out / "overlays" / "ground_truth.png").is_file()
    md = (out / "results.md").read_text()
    assert "| source_only | 0.300 | 0.300 | 0.300 | 0.300 | 0.300 | 10 | 2 | 1 |" in md and "±" not in md
    assert ", seed 0, same data" in md and "Each row is one run, so its spread is unknown" in md


def test_beyond_spread_and_parse_seeds(tmp_path):
    a = {"n": 3, "aji_mean": 0.50, "aji_std": 0.01}
    b = {"n": 3, "aji_mean": 0.47, "aji_std": 0.01}
    c = {"n": 3, "aji_mean": 0.49, "aji_std": 0.02}
    assert report.beyond_spread(a, b) is True  # 0.03 > 0.02
    assert report.beyond_spread(a, c) is False  # 0.01 < 0.03: noise
    assert report.beyond_spread(a, {"n": 1, "aji_mean": 0.1, "aji_std": ""}) is None  # one run: spread unknown
    # a run from before --seeds (seed 0, no seed column) is not counted beside the seeded runs; failed seeds neither
    runs = [{"row": "r", "status": "ok", "aji": 0.3}, {"row": "r", "seed": 0, "status": "ok", "aji": "0.4"},
            {"row": "r", "seed": 1, "status": "ok", "aji": "0.6"}, {"row": "r", "seed": 2, "status": "failed"}]
    (r,) = report.summarize(runs)
    assert (r["n"], r["seeds"], r["aji_mean"], r["aji_std"], r["status"]) == (2, "0 1", 0.5, 0.1414, "ok")
    assert report.spread_line([r]).startswith("Fewer than two rows ran 2+ seeds")
    assert benchmark.parse_seeds(None) is None and benchmark.parse_seeds("0, 1,2") == [0, 1, 2]
    assert benchmark.parse_seeds((3, 4)) == [3, 4] and benchmark.parse_seeds(5) == [5]  # as fire passes them
    for bad, message in (("a,b", "non-negative integers"), ("-1", "non-negative"), ("", "non-negative"),
                         ("1,1", "repeats a seed")):
        with pytest.raises(UDAInputError, match=message):
            benchmark.parse_seeds(bad)
    with pytest.raises(UDAInputError, match="--seed and --seeds"):
        benchmark.main(seeds="0,1", seed=3, out=str(tmp_path))
    assert not any(tmp_path.iterdir())
