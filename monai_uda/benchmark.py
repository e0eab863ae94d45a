"""``monai-uda benchmark``: every method on the same data, splits, seed and time budget.

    monai-uda benchmark --setting "dsb2018_fluo->monuseg" --rows source_only,cellseg_uda \\
        --budget-minutes 5 --out bench

For each row (a method configuration, :data:`~monai_uda.benchmark_recipes.ROWS`) of a setting
(a dataset recipe, :data:`~monai_uda.benchmark_recipes.SETTINGS`) a fresh Python process
trains through the bundle's ``train.yaml`` (+ preset/3D overrides + the row's switches) with
``bundles/_benchmark/time_budget.yaml`` merged in, which stops training when the budget is
spent; it then segments the evaluation images with the bundle's ``inference.yaml`` and scores
them with :func:`~monai_uda.metrics.evaluate.evaluate_dirs`. The process reports its peak
resident memory (``resource.getrusage``), so each row's figure is its own.

Output in ``--out``: ``results.csv``, ``results.md``, ``results.png`` (bar chart) and
``overlays/<row>.png`` (every method on the same evaluation image, plus ``ground_truth.png``),
rewritten atomically after every row; ``runs/<row>/`` (checkpoints, predictions,
``metrics.json``), ``logs/<row>.log`` and the prepared data in ``data/``. A rerun skips rows
already finished with the same configuration; failed rows are recorded and retried; several
benchmark processes (e.g. one per core) may write to one ``--out``. Ablation
rows that differ from a finished row only in a later stage continue from its first stage
(:class:`~monai_uda.benchmark_recipes.SharedStage`; its time is counted in theirs).
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import math
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_uda.benchmark_recipes import (
    CPU_OVERRIDES,
    ROWS,
    SETTINGS,
    Prepared,
    Row,
    Setting,
    datalist_setting,
    describe,
    shared_data_dir,
    signature,
)
from monai_uda import word_to_bool
from monai_uda.errors import UDAInputError
from monai_uda.files import atomic_write, output_target, write_text

__all__ = ["COLUMNS", "main", "run_benchmark", "run_row", "write_results"]

COLUMNS = (
    "setting", "row", "bundle", "status", "aji", "aji_plus", "pq", "object_f1", "dice", "sq", "dq", "precision", "recall",
    "iou", "train_seconds", "iterations", "infer_seconds", "infer_megapixels_per_s", "peak_rss_mb", "budget_minutes",
    "n_eval_images", "signature",
)
"""Columns of ``results.csv``, one line per row (``status`` is ``ok``, ``failed`` or ``timeout``)."""

TABLE = (
    ("aji", "AJI"), ("aji_plus", "AJI+"), ("pq", "PQ"), ("object_f1", "object F1"), ("dice", "Dice"),
    ("train_seconds", "train s"), ("iterations", "iterations"), ("budget_minutes", "budget min"),
    ("infer_megapixels_per_s", "inference MP/s"),
    ("peak_rss_mb", "peak RSS MB"),
)
CHART_METRICS = TABLE[:5]


# ------------------------------------------------------------------ one row, in its own process


def _stages(workflow: Any) -> dict[str, dict[str, float]]:
    """Iterations and wall seconds of every ``*trainer`` of a finished training workflow (0 if it did not run)."""
    stages = {}
    for key in workflow.parser.get():
        if isinstance(key, str) and key.endswith("trainer"):
            state = getattr(workflow.parser.get_parsed_content(key), "state", None)
            times = getattr(state, "times", None) or {}
            stages[key] = {"iterations": int(getattr(state, "iteration", 0) or 0), "seconds": float(times.get("COMPLETED") or 0.0)}
    return stages


def _run_workflow(files: list[str], run_id: str, overrides: Mapping[str, Any]) -> Any:
    """``python -m monai.bundle run <run_id>`` in-process; returns the finished workflow."""
    from monai.bundle import create_workflow

    workflow = create_workflow(config_file=files, meta_file=str(Path(files[0]).parent / "metadata.json"), run_id=run_id, **overrides)
    workflow.run()
    workflow.finalize()
    return workflow


def _overlay(image_path: Path, instances_path: Path, out: Path) -> None:
    """Instance boundaries over the evaluation image (3D: the middle slice across the shortest axis)."""
    import numpy as np

    from monai_uda.data.io import read_image, read_label, write_array
    from monai_uda.inference.overlay import overlay_instances

    image, _ = read_image(image_path)
    instances = read_label(instances_path)
    if instances.ndim == 3:
        axis = int(np.argmin(instances.shape))
        index = instances.shape[axis] // 2
        image, instances = np.take(image, index, axis=axis + 1), np.take(instances, index, axis=axis)
    write_array(out, overlay_instances(image, instances))


def run_row(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Train, segment and score one row (called in the row's own process).

    Args:
        spec: as written by :func:`run_benchmark` (``bundle``, ``spatial_dims``, ``preset_file``,
            ``overrides``, ``budget_seconds``, ``dataset_dir``, ``eval_images``, ``eval_labels``,
            ``overlay_stem``, ``overlay_path``, ``row_dir``, ``model_file``, ``budget_config``).

    Returns:
        The row's record: the mean metrics, ``train_seconds``, ``iterations``, ``infer_seconds``,
        ``infer_megapixels_per_s``, ``peak_rss_mb`` and ``n_eval_images``.
    """
    from monai_uda.bundle_runner import bundles_dir, config_files
    from monai_uda.data.io import list_images, read_image, stem_of
    from monai_uda.metrics.evaluate import evaluate_dirs

    row_dir = Path(spec["row_dir"])
    train_dir, pred_dir = row_dir / "train", row_dir / "pred"
    bundle, dims, preset = spec["bundle"], int(spec["spatial_dims"]), spec["preset_file"]
    overrides = dict(spec["overrides"])

    files = config_files(bundle, "training", dims, preset) + [str(bundles_dir() / "_benchmark" / spec.get("budget_config", "time_budget.yaml"))]
    start = time.perf_counter()
    workflow = _run_workflow(files, "training", {**overrides, "dataset_dir": spec["dataset_dir"], "output_dir": str(train_dir),
                                                 "budget_seconds": spec["budget_seconds"]})
    train_seconds, stages = time.perf_counter() - start, _stages(workflow)
    del workflow

    start = time.perf_counter()
    _run_workflow(config_files(bundle, "inference", dims, preset), "inference",
                  {**overrides, "input_dir": spec["eval_images"], "output_dir": str(pred_dir),
                   "ckpt_path": str(train_dir / spec["model_file"])})
    infer_seconds = time.perf_counter() - start

    images = list_images(spec["eval_images"])
    megapixels = sum(float(math.prod(read_image(p)[1]["spatial_shape"])) for p in images) / 1e6
    metrics = evaluate_dirs(pred_dir, spec["eval_labels"], row_dir / "metrics.json")["mean"]
    image = next(p for p in images if stem_of(p) == spec["overlay_stem"])
    _overlay(image, next(pred_dir.glob(f"{spec['overlay_stem']}_instances.*")), Path(spec["overlay_path"]))
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, KiB on Linux
    return {
        **{key: round(float(value), 4) for key, value in metrics.items()},
        "train_seconds": round(train_seconds, 1), "iterations": sum(int(stage["iterations"]) for stage in stages.values()),
        "stages": stages, "stage_signature": spec.get("stage_signature", ""), "infer_seconds": round(infer_seconds, 1),
        "infer_megapixels_per_s": round(megapixels / infer_seconds, 3) if infer_seconds > 0 else 0.0,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 1), "n_eval_images": len(images),
    }


# ------------------------------------------------------------------ results files


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def read_results(out: str | Path) -> dict[str, dict[str, str]]:
    """Records of ``out/results.csv`` by row name (empty when there is none yet)."""
    path = Path(out) / "results.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        return {record["row"]: record for record in csv.DictReader(fh)}


def _cell(record: Mapping[str, Any], key: str) -> str:
    value = record.get(key, "")
    if value in ("", None):
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.3f}" if key in dict(CHART_METRICS) or key == "infer_megapixels_per_s" else f"{number:g}"


def _markdown(records: Sequence[Mapping[str, Any]], header: Sequence[str]) -> str:
    lines = list(header) + ["", "| row | " + " | ".join(title for _, title in TABLE) + " |", "|---" * (len(TABLE) + 1) + "|"]
    for record in records:
        if record.get("status") == "ok":
            cells = [_cell(record, key) for key, _ in TABLE]
        else:  # a failed or timed-out row: its status in the first column
            cells = [str(record.get("status", ""))] + ["-"] * (len(TABLE) - 1)
        lines.append(f"| {record['row']} | " + " | ".join(cells) + " |")
    lines += ["", "Rows:"] + [f"- `{r['row']}`: {ROWS[r['row']].description if r['row'] in ROWS else r.get('bundle', '')}"
                              for r in records]
    return "\n".join(lines) + "\n"


def _chart(records: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    done = [r for r in records if r.get("status") == "ok"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(done) + 2.0), 4.0))
    width = 0.8 / len(CHART_METRICS)
    x = np.arange(len(done))
    for k, (key, label) in enumerate(CHART_METRICS):
        ax.bar(x + (k - (len(CHART_METRICS) - 1) / 2) * width, [float(r[key]) for r in done], width, label=label)
    ax.set_xticks(x, [r["row"] for r in done], rotation=20, ha="right")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(ncol=len(CHART_METRICS), fontsize="small", loc="upper left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    _write_atomic(path, buffer.getvalue())


def write_results(out: str | Path, records: Sequence[Mapping[str, Any]], header: Sequence[str] = ()) -> None:
    """Write ``results.csv``, ``results.md`` and ``results.png`` of ``records`` to ``out`` (each atomically)."""
    out = Path(out)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    _write_atomic(out / "results.csv", text.getvalue().encode("utf-8"))
    _write_atomic(out / "results.md", _markdown(records, header).encode("utf-8"))
    _chart(records, out / "results.png", header[0].lstrip("# ") if header else "benchmark")


# ------------------------------------------------------------------ the whole benchmark


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_." else "-" for c in name.replace("->", "-to-"))


def prepare_setting(setting: Setting, out: Path, data_root: Path) -> Prepared:
    """The setting's data, prepared once into ``out/data/<setting>`` (reused when ``prepared.json`` exists)."""
    cache = out / "data" / _slug(setting.name)
    marker = cache / "prepared.json"
    if marker.is_file():
        return Prepared.from_json(json.loads(marker.read_text(encoding="utf-8")))
    print(f"[benchmark] preparing {setting.name} into {cache}", flush=True)
    prepared = setting.prepare(cache, data_root)
    _write_atomic(marker, json.dumps(prepared.to_json(), indent=2).encode("utf-8"))
    return prepared


def _ground_truth_overlay(prepared: Prepared, out: Path) -> None:
    from monai_uda.data.io import list_images, stem_of

    image = next(p for p in list_images(prepared.eval_images) if stem_of(p) == prepared.overlay_stem)
    label = next(p for p in list_images(prepared.eval_labels) if stem_of(p) == prepared.overlay_stem)
    _overlay(image, label, out / "overlays" / "ground_truth.png")


def _link(source: str | Path, target: str | Path) -> None:
    """Hard link (the stage's files are never written again), a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _commands(out: Path, command: str | None) -> list[str]:
    """Every command that wrote rows to ``out`` (``commands.txt``), ``command`` added once."""
    path = out / "commands.txt"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    if command and command not in lines:
        lines.append(command)
        _write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return lines


def _take_shared_stage(row: Row, stage_signature: str, out: Path, train_dir: Path) -> dict[str, Any] | None:
    """Hard-link the finished first stage of ``row.shared.row`` into ``train_dir`` (see :class:`SharedStage`).

    Returns:
        ``{"seconds": ..., "iterations": ...}`` the stage cost the donor, or ``None`` (the row
        trains every stage itself) when the donor has not finished in ``out`` with the same
        data, budget and common overrides.
    """
    stage = row.shared
    if stage is None:
        return None
    donor_dir = out / "runs" / stage.row
    result = donor_dir / "result.json"
    donor = json.loads(result.read_text(encoding="utf-8")) if result.is_file() else {}
    sources = [donor_dir / "train" / path for path in stage.paths]
    if donor.get("stage_signature") != stage_signature or not all(path.exists() for path in sources):
        print(f"[benchmark] {row.name}: no finished {stage.row} row with the same settings; training every stage", flush=True)
        return None
    for source, path in zip(sources, stage.paths):
        target = train_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, copy_function=_link)
        else:
            _link(source, target)
    stages = donor["stages"]
    if stage.with_untimed_work:  # all of the donor's training time but its later trainers'
        seconds = float(donor["train_seconds"]) - sum(v["seconds"] for k, v in stages.items() if k not in stage.trainers)
    else:
        seconds = sum(stages[key]["seconds"] for key in stage.trainers)
    print(f"[benchmark] {row.name}: continues from the finished {', '.join(stage.paths)} of row {stage.row} "
          f"({seconds:.0f} s, counted in its train seconds)", flush=True)
    return {"seconds": seconds, "iterations": sum(int(stages[key]["iterations"]) for key in stage.trainers)}


def _parse_rows(rows: str | Sequence[str] | None, setting: Setting) -> list[str]:
    from monai_uda.bundle_runner import bundle_names

    names = list(setting.rows) if rows is None else [r.strip() for r in (rows.split(",") if isinstance(rows, str) else rows) if r.strip()]
    if not names:
        raise UDAInputError("--rows is empty")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise UDAInputError(f"unknown row {unknown[0]!r}; choose from {', '.join(ROWS)}")
    unsupported = [n for n in names if n not in setting.rows]
    if unsupported:
        raise UDAInputError(f"row {unsupported[0]!r} does not apply to setting {setting.name!r} (its rows: {', '.join(setting.rows)})")
    missing = [n for n in names if ROWS[n].bundle not in bundle_names()]
    if missing:
        raise UDAInputError(f"row {missing[0]!r} needs bundle {ROWS[missing[0]].bundle!r}, which is not in the bundles folder")
    return names


def run_benchmark(
    setting: str,
    rows: str | Sequence[str] | None = None,
    budget_minutes: float = 5.0,
    out: str | Path = "benchmark",
    datalist: str | Path | None = None,
    data_root: str | Path | None = None,
    spatial_dims: int = 2,
    preset: str | None = "cpu",
    max_iterations: int | None = None,
    row_timeout_minutes: float | None = None,
    command: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``rows`` of ``setting`` and write the results to ``out`` after every row.

    Args:
        setting: a name of :data:`SETTINGS`, or any name together with ``datalist``.
        rows: comma-separated row names (default: all rows of the setting).
        budget_minutes: training wall-time budget per row.
        out: output folder.
        datalist: a user datalist (``source`` labelled, ``target``, ``test`` labelled).
        data_root: folder holding ``dsb2018_fluo/`` and ``monuseg/`` (default: :func:`shared_data_dir`).
        spatial_dims: dimensionality of a user datalist.
        preset: ``"cpu"`` applies :data:`CPU_OVERRIDES` in 2D; ``None`` keeps the paper's configurations.
        max_iterations: cap on training iterations (on top of the budget).
        row_timeout_minutes: kill a row's process after this long (default: budget + 60 minutes).
        command: the command line, written into ``results.md``.
        overrides: further bundle config overrides for every row (e.g. ``{"device": "cuda"}``).

    Returns:
        ``{"results": [record, ...], "ran": [...], "skipped": [...], "failed": [...]}``.
    """
    if datalist is not None:
        if setting in SETTINGS:
            raise UDAInputError(f"setting {setting!r} is built in; name your --datalist recipe differently")
        chosen = datalist_setting(setting, datalist, spatial_dims)
    elif setting in SETTINGS:
        chosen = SETTINGS[setting]
    else:
        raise UDAInputError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)} or pass --datalist PATH")
    if float(budget_minutes) <= 0:
        raise UDAInputError(f"--budget-minutes must be positive, got {budget_minutes}")
    names = _parse_rows(rows, chosen)
    out = Path(out).resolve()
    prepared = prepare_setting(chosen, out, Path(data_root) if data_root else shared_data_dir())
    _ground_truth_overlay(prepared, out)
    records = read_results(out)
    header = [
        f"# Benchmark: {chosen.name}", "", chosen.description, "", *[f"- {note}" for note in prepared.notes],
        f"- budget: {float(budget_minutes):g} min of training per row in the latest run, each row's own in `budget min` "
        "(wall clock; stopped by `monai_uda.engines.budget.TimeBudget`), "
        f"preset {preset or 'paper'}, seed {dict(overrides or {}).get('seed', 0)}, same data and splits for every row",
        f"- machine: {os.cpu_count()} CPU cores, {sys.platform}; inference MP/s = evaluation megapixels / wall time of the "
        "inference run (model loading, sliding window, post-processing, writing)",
        f"- overlays: `overlays/<row>.png` on evaluation image `{prepared.overlay_stem}` (`overlays/ground_truth.png`)",
    ] + [f"- command: `{line}`" for line in _commands(out, command)]
    summary: dict[str, list[str]] = {"ran": [], "skipped": [], "failed": []}
    for name in names:
        row = ROWS[name]
        cpu = CPU_OVERRIDES.get(row.bundle, {}) if preset == "cpu" and chosen.spatial_dims == 2 else {}
        row_overrides = {"seed": 0, **cpu.get("overrides", {}), **chosen.bundle_overrides.get(row.bundle, {}), **row.overrides,
                         **{k: word_to_bool(v) for k, v in dict(overrides or {}).items()}}
        if max_iterations is not None:
            row_overrides["max_iterations"] = int(max_iterations)
        spec = {
            "row": name, "setting": chosen.name, "bundle": row.bundle, "spatial_dims": chosen.spatial_dims,
            "preset_file": cpu.get("preset_file"), "overrides": row_overrides, "budget_seconds": float(budget_minutes) * 60.0,
            "dataset_dir": str(prepared.datalist), "eval_images": str(prepared.eval_images), "eval_labels": str(prepared.eval_labels),
            "overlay_stem": prepared.overlay_stem, "model_file": row.model_file, "budget_config": row.budget_config,
        }
        sig = signature({k: v for k, v in spec.items() if k != "budget_config"})  # budget_config is fixed by the bundle
        # what a shared first stage depends on: everything but the row's own switches
        spec["stage_signature"] = signature({**spec, "row": row.bundle, "model_file": "",
                                             "overrides": {k: v for k, v in row_overrides.items() if k not in row.overrides}})
        if records.get(name, {}).get("status") == "ok" and records[name].get("signature") == sig:
            print(f"[benchmark] {name}: finished before with the same configuration, skipped", flush=True)
            summary["skipped"].append(name)
            continue
        row_dir = out / "runs" / name
        shutil.rmtree(row_dir, ignore_errors=True)
        row_dir.mkdir(parents=True)
        shared = _take_shared_stage(row, spec["stage_signature"], out, row_dir / "train")
        if shared is not None:
            spec["overrides"] = {**row_overrides, "resume": True}  # the bundle skips the finished stage
        spec.update(row_dir=str(row_dir), overlay_path=str(out / "overlays" / f"{name}.png"), result_path=str(row_dir / "result.json"))
        write_text(row_dir / "spec.json", json.dumps(spec, indent=2))
        log = out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"[benchmark] {name}: training ({float(budget_minutes):g} min budget), inference, evaluation; log {log}", flush=True)
        timeout = 60.0 * (float(row_timeout_minutes) if row_timeout_minutes else float(budget_minutes) + 60.0)
        status = "ok"
        with output_target(log).open("w", encoding="utf-8") as fh:
            try:
                proc = subprocess.run([sys.executable, "-m", "monai_uda.benchmark", str(row_dir / "spec.json")],
                                      stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
                status = "ok" if proc.returncode == 0 and (row_dir / "result.json").is_file() else "failed"
            except subprocess.TimeoutExpired:
                status = "timeout"
        record: dict[str, Any] = {"setting": chosen.name, "row": name, "bundle": row.bundle, "status": status,
                                  "budget_minutes": float(budget_minutes), "signature": sig}
        if status == "ok":
            record.update(json.loads((row_dir / "result.json").read_text(encoding="utf-8")))
            if shared is not None:  # the row's cost includes the stage it took over
                record["train_seconds"] = round(float(record["train_seconds"]) + shared["seconds"], 1)
                record["iterations"] = int(record["iterations"]) + shared["iterations"]
            summary["ran"].append(name)
            print(f"[benchmark] {name}: " + ", ".join(f"{title} {_cell(record, key)}" for key, title in TABLE), flush=True)
        else:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
            print(f"[benchmark] {name}: {status}: {tail[0]} (full log: {log})", flush=True)
            summary["failed"].append(name)
        # re-read first: another benchmark process may have finished rows in the same --out meanwhile
        records = {**read_results(out), name: record}
        write_results(out, list(records.values()), header)
    if not (out / "results.csv").is_file() or summary["skipped"]:  # read afresh, as after every row
        write_results(out, list({**records, **read_results(out)}.values()), header)
    return {"results": list(records.values()), **summary}


def _quote(value: Any, rows: bool = False) -> str:
    """A command-line value as typed: rows comma-joined, lists as JSON, shell-quoted."""
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value)) if rows else json.dumps(list(value))
    return shlex.quote(str(value))


def main(
    setting: str = "dsb2018_fluo->monuseg",
    rows: str | Sequence[str] | None = None,
    budget_minutes: float = 5.0,
    out: str = "benchmark",
    datalist: str | None = None,
    data_root: str | None = None,
    spatial_dims: int = 2,
    preset: str | None = "cpu",
    max_iterations: int | None = None,
    row_timeout_minutes: float | None = None,
    **overrides: Any,
) -> str:
    """Compare methods on one setting with the same data, splits, seed and per-row time budget.

    Writes results.csv, results.md, results.png and overlays/<row>.png to --out; a rerun skips
    finished rows. Further --key value options are bundle config overrides for every row
    (e.g. --device cuda, --source_invert false). Exits with status 1 when a row failed.

    Args:
        setting: dataset recipe (see the list below), or your own name with --datalist.
        rows: comma-separated rows (default: every row of the setting).
        budget_minutes: training wall-time budget per row (--budget-minutes or --budget_minutes).
        out: output folder.
        datalist: your own datalist.json (labelled source and test lists, target list).
        data_root: folder with dsb2018_fluo/ and monuseg/ (default: ../shared/data or $MONAI_UDA_SHARED_DATA).
        spatial_dims: 2 or 3, for --datalist recipes.
        preset: "cpu" (default) scales 2D rows for a CPU; "paper" keeps the paper's configurations.
        max_iterations: cap on training iterations per row, on top of the budget.
        row_timeout_minutes: kill a row after this long (default: budget + 60).
        **overrides: bundle config overrides for every row.

    Returns:
        The path of results.md.
    """
    if overrides.keys() & {"help", "h"}:  # fire hands --help to functions taking **kwargs: show it, run nothing
        print(f"usage: monai-uda benchmark --setting NAME --rows a,b,... --budget-minutes M --out DIR [--key value ...]\n\n{main.__doc__}")
        return ""
    options = {"setting": setting, "rows": rows, "budget_minutes": budget_minutes, "out": out, "datalist": datalist,
               "preset": None if preset == "cpu" else preset, "max_iterations": max_iterations, **overrides}
    command = "monai-uda benchmark " + " ".join(
        f"--{key.replace('_', '-')} {_quote(value, rows=key == 'rows')}" for key, value in options.items() if value is not None
    )
    summary = run_benchmark(setting, rows, budget_minutes, out, datalist, data_root, int(spatial_dims),
                            None if preset in (None, "paper") else preset, max_iterations, row_timeout_minutes, command, overrides)
    results = Path(out).resolve() / "results.md"
    print(results.read_text(encoding="utf-8"))
    if summary["failed"]:
        raise SystemExit(f"error: row(s) {', '.join(summary['failed'])} failed; see {Path(out).resolve() / 'logs'}")
    return str(results)


main.__doc__ = f"{inspect.cleandoc(main.__doc__ or '')}\n\n{describe()}\n"


def _worker(spec_path: str) -> None:
    """Entry of a row's process: run :func:`run_row` and write its record next to the spec."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    record = run_row(spec)
    _write_atomic(Path(spec["result_path"]), json.dumps(record, indent=2).encode("utf-8"))


if __name__ == "__main__":
    _worker(sys.argv[1])
