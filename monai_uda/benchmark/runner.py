"""How ``monai-uda benchmark`` runs its rows: each in a fresh process, skipped when done, retried when failed.

For each row (:data:`~monai_uda.benchmark.recipes.ROWS`) of a setting
(:data:`~monai_uda.benchmark.settings.SETTINGS`) :func:`run_benchmark` writes a spec and starts
``python -m monai_uda.benchmark <spec.json>``, which trains, segments and scores the row
(:mod:`monai_uda.benchmark.row`).

A rerun skips rows already finished with the same configuration (their ``signature``); failed
rows are recorded and retried. The results files are re-read before every write, so several
benchmark processes (e.g. one per core) may write to one ``--out``. Ablation rows that differ
from a finished row only in a later stage continue from its first stage
(:class:`~monai_uda.benchmark.recipes.SharedStage`; its time is counted in theirs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_uda import word_to_bool
from monai_uda.benchmark.recipes import (
    CPU_OVERRIDES,
    ROWS,
    Row,
    mask_rcnn_backbone,
    signature,
    start_overrides,
    with_start_rows,
)
from monai_uda.benchmark.report import (
    TABLE,
    format_cell,
    ground_truth_overlay,
    header,
    read_results,
    run_key,
    write_results,
)
from monai_uda.benchmark.settings import SETTINGS, Prepared, Setting, datalist_setting, prepare_setting, shared_data_dir
from monai_uda.errors import UDAInputError
from monai_uda.files import output_target, write_text

__all__ = ["run_benchmark"]

# ------------------------------------------------------------------ the whole benchmark


def _link(source: str | Path, target: str | Path) -> None:
    """Hard link (the stage's files are never written again), a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _take_shared_stage(
    row: Row, stage_signature: str, out: Path, train_dir: Path, seed: int | None = None
) -> dict[str, Any] | None:
    """Hard-link the finished first stage of the ``seed`` run of ``row.shared.row`` into ``train_dir``.

    Returns:
        ``{"seconds": ..., "iterations": ...}`` the stage cost the donor, or ``None`` (the row
        trains every stage itself) when the donor has not finished in ``out`` with the same
        data, budget and common overrides.
    """
    stage = row.shared
    if stage is None:
        return None
    donor_dir = out / "runs" / run_key(stage.row, seed)
    result = donor_dir / "result.json"
    donor = json.loads(result.read_text(encoding="utf-8")) if result.is_file() else {}
    sources = [donor_dir / "train" / path for path in stage.paths]
    if donor.get("stage_signature") != stage_signature or not all(path.exists() for path in sources):
        print(
            f"[benchmark] {row.name}: no finished {stage.row} row with the same settings; training every stage",
            flush=True,
        )
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
        seconds = float(donor["train_seconds"]) - sum(
            v["seconds"] for k, v in stages.items() if k not in stage.trainers
        )
    else:
        seconds = sum(stages[key]["seconds"] for key in stage.trainers)
    print(
        f"[benchmark] {row.name}: continues from the finished {', '.join(stage.paths)} of row {stage.row} "
        f"({seconds:.0f} s, counted in its train seconds)",
        flush=True,
    )
    return {"seconds": seconds, "iterations": sum(int(stages[key]["iterations"]) for key in stage.trainers)}


def _parse_rows(rows: str | Sequence[str] | None, setting: Setting) -> list[str]:
    from monai_uda.bundle_runner import bundle_names

    names = (
        list(setting.rows)
        if rows is None
        else [r.strip() for r in (rows.split(",") if isinstance(rows, str) else rows) if r.strip()]
    )
    if not names:
        raise UDAInputError("--rows is empty")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise UDAInputError(f"unknown row {unknown[0]!r}; choose from {', '.join(ROWS)}")
    unsupported = [n for n in names if n not in setting.rows]
    if unsupported:
        raise UDAInputError(
            f"row {unsupported[0]!r} does not apply to setting {setting.name!r} (its rows: {', '.join(setting.rows)})"
        )
    missing = [n for n in names if ROWS[n].bundle not in bundle_names()]
    if missing:
        raise UDAInputError(
            f"row {missing[0]!r} needs bundle {ROWS[missing[0]].bundle!r}, which is not in the bundles folder"
        )
    return names


def _choose_setting(setting: str, datalist: str | Path | None, spatial_dims: int, budget_minutes: float) -> Setting:
    """The built-in setting ``setting``, or a user recipe of ``datalist``; checks the budget too."""
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
    return chosen


def _row_spec(
    row: Row,
    setting: Setting,
    prepared: Prepared,
    preset: str | None,
    budget_minutes: float,
    max_iterations: int | None,
    overrides: Mapping[str, Any] | None,
    bundle_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int | None = None,
    start: tuple[Mapping[str, Any], str] = ({}, ""),
) -> tuple[dict[str, Any], str]:
    """The row's process spec (without its folders) and the signature that tells whether a finished row is the same.

    ``seed`` (one of ``--seeds``) replaces the bundle's ``seed`` (else 0 or a ``--seed`` override). ``start``: the
    overrides of the weights the row starts from and the signature of the run that trained them.
    """
    cpu = CPU_OVERRIDES.get(row.bundle, {}) if preset == "cpu" and setting.spatial_dims == 2 else {}
    row_overrides = {"seed": 0, **cpu.get("overrides", {}), **mask_rcnn_backbone(row.bundle, preset),
                     **setting.bundle_overrides.get(row.bundle, {}), **row.overrides, **start[0],
                     **{k: word_to_bool(v) for k, v in dict(overrides or {}).items()},
                     **dict((bundle_overrides or {}).get(row.bundle, {}))}
    if max_iterations is not None:
        row_overrides["max_iterations"] = int(max_iterations)
    if seed is not None:
        row_overrides["seed"] = int(seed)
    spec = {
        "row": row.name, "setting": setting.name, "bundle": row.bundle, "spatial_dims": setting.spatial_dims,
        "preset_file": cpu.get("preset_file"), "overrides": row_overrides,
        "budget_seconds": float(budget_minutes) * 60.0, "dataset_dir": str(prepared.datalist),
        "eval_images": str(prepared.eval_images),
        "eval_labels": str(prepared.eval_labels), "overlay_stem": prepared.overlay_stem, "model_file": row.model_file,
        "budget_config": row.budget_config, **({"start": start[1]} if start[0] else {}),
    }
    sig = signature({k: v for k, v in spec.items() if k != "budget_config"})  # budget_config is fixed by the bundle
    # what a shared first stage depends on: everything but the row's own switches
    own = {k: v for k, v in row_overrides.items() if k not in row.overrides}
    spec["stage_signature"] = signature({**spec, "row": row.bundle, "model_file": "", "overrides": own})
    return spec, sig


def _row_process(spec_path: Path, log: Path, timeout: float) -> str:
    """Run the row of ``spec_path`` in a fresh Python process, output to ``log``: ``ok``, ``failed`` or ``timeout``."""
    with output_target(log).open("w", encoding="utf-8") as fh:
        try:
            proc = subprocess.run([sys.executable, "-m", "monai_uda.benchmark", str(spec_path)], stdout=fh,
                                  stderr=subprocess.STDOUT, timeout=timeout,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except subprocess.TimeoutExpired:
            return "timeout"
    return "ok" if proc.returncode == 0 and (spec_path.parent / "result.json").is_file() else "failed"


def _run_one(
    row: Row, spec: dict[str, Any], sig: str, out: Path, budget_minutes: float, row_timeout_minutes: float | None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Run one row (of one ``seed``) afresh, from a donor's shared stage if any, in ``runs/<run_key>``; its record."""
    name = run_key(row.name, seed)
    row_dir = out / "runs" / name
    shutil.rmtree(row_dir, ignore_errors=True)
    row_dir.mkdir(parents=True)
    shared = _take_shared_stage(row, spec["stage_signature"], out, row_dir / "train", seed)
    if shared is not None:
        spec["overrides"] = {**spec["overrides"], "resume": True}  # the bundle skips the finished stage
    spec.update(row_dir=str(row_dir), overlay_path=str(out / "overlays" / f"{name}.png"),
                result_path=str(row_dir / "result.json"))
    write_text(row_dir / "spec.json", json.dumps(spec, indent=2))
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"[benchmark] {name}: training ({float(budget_minutes):g} min budget), inference, evaluation; log {log}",
        flush=True,
    )
    timeout = 60.0 * (float(row_timeout_minutes) if row_timeout_minutes else float(budget_minutes) + 60.0)
    status = _row_process(row_dir / "spec.json", log, timeout)
    record: dict[str, Any] = {"setting": spec["setting"], "row": row.name, "bundle": row.bundle, "status": status,
                              "budget_minutes": float(budget_minutes), "signature": sig}
    if seed is not None:
        record["seed"] = int(seed)
    if status == "ok":
        record.update(json.loads((row_dir / "result.json").read_text(encoding="utf-8")))
        if shared is not None:  # the row's cost includes the stage it took over
            record["train_seconds"] = round(float(record["train_seconds"]) + shared["seconds"], 1)
            record["iterations"] = int(record["iterations"]) + shared["iterations"]
        print(
            f"[benchmark] {name}: " + ", ".join(f"{title} {format_cell(record, key)}" for key, title in TABLE),
            flush=True,
        )
    else:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        print(f"[benchmark] {name}: {status}: {tail[0]} (full log: {log})", flush=True)
    return record


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
    bundle_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    seeds: Sequence[int] | None = None,
    from_scratch: bool = False,
    checkpoint_curves: bool = True,
) -> dict[str, Any]:
    """Run ``rows`` of ``setting`` (once per seed of ``seeds``) and write the results to ``out`` after every run.

    Args:
        setting: a name of :data:`SETTINGS`, or any name together with ``datalist``.
        rows: comma-separated row names (default: all rows of the setting).
        budget_minutes: training wall-time budget per row.
        out: output folder.
        datalist: a user datalist (``source`` labelled, ``target``, ``test`` labelled).
        data_root: folder holding ``dsb2018_fluo/`` and ``monuseg/`` (default: :func:`shared_data_dir`).
        spatial_dims: dimensionality of a user datalist.
        preset: the budget preset (``--budget_preset``): ``"cpu"`` applies :data:`CPU_OVERRIDES` in 2D;
            ``None`` keeps the paper's configurations.
        max_iterations: cap on training iterations (on top of the budget).
        row_timeout_minutes: kill a row's process after this long (default: budget + 60 minutes).
        command: the command line, written into ``results.md``.
        overrides: further bundle config overrides for every row (e.g. ``{"device": "cuda"}``).
        bundle_overrides: config overrides for the rows of one bundle, last
            (e.g. ``{"ad_gan": {"preset": "auto"}}``).
        seeds: train every row once per seed, in ``runs/<row>/seed<k>/`` (``logs/``, ``overlays/`` alike), one
            ``results.csv`` line each (default: one run per row in ``runs/<row>/``, seed 0 or ``--seed``).
        from_scratch: the Mask R-CNN rows start from random weights instead of the detector of row
            ``mask_rcnn_source_only`` of the same seed (:class:`~monai_uda.benchmark.recipes.StartWeights`, run
            first when needed).
        checkpoint_curves: rows that kept scored checkpoints (``keep_scored_models``) also evaluate each of
            them and ``model_best.pt`` (:mod:`~monai_uda.benchmark.curves`); not part of a row's signature, so
            a finished row is not retrained for it.

    Returns:
        ``{"results": [record, ...], "ran": [...], "skipped": [...], "failed": [...]}`` (runs by ``run_key``).
    """
    chosen = _choose_setting(setting, datalist, spatial_dims, budget_minutes)
    names = with_start_rows(_parse_rows(rows, chosen), from_scratch)
    out = Path(out).resolve()
    prepared = prepare_setting(chosen, out, Path(data_root) if data_root else shared_data_dir())
    ground_truth_overlay(prepared, out)
    records = read_results(out)
    seed_text = list(seeds) if seeds is not None else dict(overrides or {}).get("seed", 0)
    lines = header(chosen, prepared, budget_minutes, preset, seed_text, out, command)
    summary: dict[str, list[str]] = {"ran": [], "skipped": [], "failed": []}
    for row, seed in [(ROWS[n], k) for n in names for k in (seeds if seeds is not None else [None])]:
        name = run_key(row.name, seed)
        donor_key = run_key(row.start.row, seed) if row.start else ""
        donor = records.get(donor_key, {})
        start = start_overrides(row, out, from_scratch, donor_key)
        spec, sig = _row_spec(row, chosen, prepared, preset, budget_minutes, max_iterations, overrides,
                              bundle_overrides, seed, (start, str(donor.get("signature", ""))))
        spec["checkpoint_curves"] = bool(checkpoint_curves)
        if records.get(name, {}).get("status") == "ok" and records[name].get("signature") == sig:
            print(f"[benchmark] {name}: finished before with the same configuration, skipped", flush=True)
            summary["skipped"].append(name)
            continue
        record = _run_one(row, spec, sig, out, budget_minutes, row_timeout_minutes, seed)
        if start and record["status"] == "ok" and donor.get("status") == "ok":  # the start's cost counts too
            record["train_seconds"] = round(float(record["train_seconds"]) + float(donor["train_seconds"]), 1)
            record["iterations"] = int(record["iterations"]) + int(donor["iterations"])
        summary["ran" if record["status"] == "ok" else "failed"].append(name)
        # re-read first: another benchmark process may have finished rows in the same --out meanwhile
        records = {**read_results(out), name: record}
        write_results(out, list(records.values()), lines)
    if not (out / "results.csv").is_file() or summary["skipped"]:  # read afresh, as after every row
        write_results(out, list({**records, **read_results(out)}.values()), lines)
    return {"results": list(records.values()), **summary}
