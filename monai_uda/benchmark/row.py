"""One benchmark row, in its own process: train, segment, score (``python -m monai_uda.benchmark SPEC``).

The runner (:mod:`monai_uda.benchmark.runner`) writes the row's spec and starts this process;
:func:`run_row` trains through the bundle's ``train.yaml`` (+ preset/3D overrides + the row's
switches) with the benchmark's ``configs/time_budget*.yaml`` merged in, which stops training when
the budget is spent, segments the evaluation images with the bundle's ``inference.yaml`` and
scores them with :func:`~monai_uda.metrics.evaluate.evaluate_dirs`, then does the same for every checkpoint
the label-free selection kept (:mod:`~monai_uda.benchmark.curves`). The process reports its own
peak resident memory (``resource.getrusage``), so each row's figure is its own.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import sys
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from monai_uda.benchmark.curves import evaluate_checkpoints
from monai_uda.benchmark.report import overlay
from monai_uda.files import write_text

__all__ = ["CONFIGS", "run_row", "run_spec_file"]

CONFIGS = Path(__file__).resolve().parent / "configs"
"""The benchmark's own config files (the time budgets merged after a bundle's training configs)."""


def _stages(workflow: Any) -> dict[str, dict[str, float]]:
    """Iterations and wall seconds of every ``*trainer`` of a finished training workflow (0 if it did not run)."""
    stages = {}
    for key in workflow.parser.get():
        if isinstance(key, str) and key.endswith("trainer"):
            state = getattr(workflow.parser.get_parsed_content(key), "state", None)
            times = getattr(state, "times", None) or {}
            stages[key] = {
                "iterations": int(getattr(state, "iteration", 0) or 0),
                "seconds": float(times.get("COMPLETED") or 0.0),
            }
    return stages


def _run_workflow(files: list[str], run_id: str, overrides: Mapping[str, Any]) -> Any:
    """``python -m monai.bundle run <run_id>`` in-process; returns the finished workflow."""
    from monai.bundle import create_workflow

    workflow = create_workflow(
        config_file=files, meta_file=str(Path(files[0]).parent / "metadata.json"), run_id=run_id, **overrides
    )
    workflow.run()
    workflow.finalize()
    return workflow


def run_row(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Train, segment and score one row (called in the row's own process).

    Args:
        spec: as written by :func:`run_benchmark` (``bundle``, ``spatial_dims``, ``preset_file``,
            ``overrides``, ``budget_seconds``, ``dataset_dir``, ``eval_images``, ``eval_labels``,
            ``overlay_stem``, ``overlay_path``, ``row_dir``, ``model_file``, ``budget_config``, and
            ``checkpoint_curves``: false skips :func:`~monai_uda.benchmark.curves.evaluate_checkpoints`).

    Returns:
        The row's record: the mean metrics, ``train_seconds``, ``iterations``, ``infer_seconds``,
        ``infer_megapixels_per_s``, ``peak_rss_mb`` and ``n_eval_images``; with scored checkpoints also
        ``aji_selected``, ``aji_last``, ``rank_corr`` and ``checkpoint_eval_seconds`` (``checkpoints.csv``).
    """
    from monai_uda.bundle_runner import config_files

    row_dir = Path(spec["row_dir"])
    train_dir = row_dir / "train"
    bundle, dims, preset = spec["bundle"], int(spec["spatial_dims"]), spec["preset_file"]
    overrides = dict(spec["overrides"])

    budget = CONFIGS / spec.get("budget_config", "time_budget.yaml")
    files = [*config_files(bundle, "training", dims, preset), str(budget)]
    run = {**overrides, "dataset_dir": spec["dataset_dir"], "output_dir": str(train_dir),
           "budget_seconds": spec["budget_seconds"]}
    start = time.perf_counter()
    workflow = _run_workflow(files, "training", run)
    train_seconds, stages = time.perf_counter() - start, _stages(workflow)
    del workflow

    start = time.perf_counter()
    _segment(spec, train_dir / spec["model_file"], row_dir / "pred")
    infer_seconds = time.perf_counter() - start
    metrics, megapixels, n_images = _score(spec)
    iterations = sum(int(stage["iterations"]) for stage in stages.values())
    curves = {}
    if spec.get("checkpoint_curves", True):  # every scored checkpoint and model_best.pt: one inference each
        curves = evaluate_checkpoints((train_dir / spec["model_file"]).parent, row_dir, metrics, train_seconds,
                                      iterations, partial(_checkpoint_metrics, spec))
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, KiB on Linux
    return {
        **{key: round(float(value), 4) for key, value in metrics.items()},
        **curves,
        "train_seconds": round(train_seconds, 1),
        "iterations": iterations,
        "stages": stages,
        "stage_signature": spec.get("stage_signature", ""),
        "infer_seconds": round(infer_seconds, 1),
        "infer_megapixels_per_s": round(megapixels / infer_seconds, 3) if infer_seconds > 0 else 0.0,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 1),
        "n_eval_images": n_images,
    }


def _segment(spec: Mapping[str, Any], checkpoint: Path, pred_dir: Path) -> None:
    """Segment the evaluation images with ``checkpoint`` into ``pred_dir`` by the bundle's ``inference.yaml``."""
    from monai_uda.bundle_runner import config_files

    files = config_files(spec["bundle"], "inference", int(spec["spatial_dims"]), spec["preset_file"])
    run = {**spec["overrides"], "input_dir": spec["eval_images"], "output_dir": str(pred_dir),
           "ckpt_path": str(checkpoint)}
    _run_workflow(files, "inference", run)


def _checkpoint_metrics(spec: Mapping[str, Any], checkpoint: Path, work: Path) -> dict[str, float]:
    """The mean metrics of ``checkpoint`` on the evaluation images (``work/metrics.json``; predictions removed)."""
    from monai_uda.metrics.evaluate import evaluate_dirs

    _segment(spec, checkpoint, work / "pred")
    metrics = evaluate_dirs(work / "pred", spec["eval_labels"], work / "metrics.json")["mean"]
    shutil.rmtree(work / "pred")
    return metrics


def _score(spec: Mapping[str, Any]) -> tuple[dict[str, float], float, int]:
    """The row's mean metrics, the evaluation megapixels and the number of evaluation images; draws its overlay."""
    from monai_uda.data.io import list_images, read_image, stem_of
    from monai_uda.metrics.evaluate import evaluate_dirs

    row_dir = Path(spec["row_dir"])
    pred_dir = row_dir / "pred"
    images = list_images(spec["eval_images"])
    megapixels = sum(float(math.prod(read_image(p)[1]["spatial_shape"])) for p in images) / 1e6
    metrics = evaluate_dirs(pred_dir, spec["eval_labels"], row_dir / "metrics.json")["mean"]
    image = next(p for p in images if stem_of(p) == spec["overlay_stem"])
    overlay(image, next(pred_dir.glob(f"{spec['overlay_stem']}_instances.*")), Path(spec["overlay_path"]))
    return metrics, megapixels, len(images)


def run_spec_file(spec_path: str | Path) -> None:
    """Entry of a row's process (``python -m monai_uda.benchmark SPEC``): :func:`run_row`, its record by the spec."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    record = run_row(spec)
    write_text(Path(spec["result_path"]), json.dumps(record, indent=2))
