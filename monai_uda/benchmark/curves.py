"""Checkpoint curves of a benchmark row: every scored checkpoint's true accuracy, the selected and the last.

A row trained with label-free selection (:class:`~monai_uda.engines.label_free.LabelFreeSelection`)
and ``keep_scored_models: true`` leaves ``selection.json`` (each scoring's iteration, label-free
score, foreground fraction and training seconds), ``scored/model_iteration=N.pt`` and
``model_best.pt`` beside its ``model.pt``. :func:`evaluate_checkpoints` segments and scores the
evaluation images with each of them (the row's own inference and evaluation, passed in) and writes
``checkpoints.csv``; its summary gives the row's ``aji_selected`` (``model_best.pt``), ``aji_last``
(``model.pt``) and ``rank_corr`` (how well the label-free score ranks the scored checkpoints by AJI,
:func:`~monai_uda.engines.label_free.rank_correlation`). :func:`draw_curves` draws AJI against
training minutes for every row (``curves.png``). Target labels are read only here, after training.
"""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_uda.engines.label_free import rank_correlation, scored_checkpoints
from monai_uda.files import atomic_write, write_text

__all__ = ["CURVE_COLUMNS", "CURVE_TABLE", "curve_notes", "draw_curves", "evaluate_checkpoints", "read_checkpoints"]

CURVE_COLUMNS = ("aji_selected", "aji_last", "rank_corr")
"""Columns ``results.csv`` gains when a row evaluated its checkpoints."""
CURVE_TABLE = (("aji_selected", "AJI selected"), ("aji_last", "AJI last"), ("rank_corr", "rank corr"))
"""Their titles in ``results.md``."""
BASE = ("checkpoint", "iteration", "seconds", "seconds_from", "score", "foreground", "selected")
"""The first columns of ``checkpoints.csv``; the evaluation's metrics follow."""
#: how the seconds of a checkpoint were found: written by the selection, or from the row's mean iteration time
MEASURED, ESTIMATED = "selection.json", "estimated"

Evaluate = Callable[[Path, Path], Mapping[str, float]]
"""``(checkpoint file, work folder) -> mean metrics`` of the row's inference + evaluation with that file."""


def _seconds(entry: Mapping[str, Any], train_seconds: float, iterations: int) -> tuple[float, str]:
    """A scoring's training seconds: its own, else ``train_seconds * iteration / iterations`` (older files)."""
    if entry.get("seconds") is not None:
        return float(entry["seconds"]), MEASURED
    return train_seconds * int(entry["iteration"]) / max(int(iterations), 1), ESTIMATED


def evaluate_checkpoints(
    model_dir: str | Path,
    row_dir: str | Path,
    last: Mapping[str, float],
    train_seconds: float,
    iterations: int,
    evaluate: Evaluate,
) -> dict[str, Any]:
    """Evaluate every scored checkpoint and ``model_best.pt`` of ``model_dir``; write ``row_dir/checkpoints.csv``.

    Args:
        model_dir: the folder of ``selection.json``, ``scored/`` and ``model_best.pt`` (the row's ``model.pt``'s).
        row_dir: the row's folder (``checkpoints.csv``; each evaluation works in ``checkpoints/<name>/``).
        last: the mean metrics of the row's ``model.pt``, its last line.
        train_seconds: the row's training seconds (``model.pt``'s place on the curve).
        iterations: the row's training iterations.
        evaluate: the row's inference + evaluation of one checkpoint file.

    Returns:
        ``{}`` when the row kept no scored checkpoint, else ``aji_selected``, ``aji_last``, ``rank_corr``
        (``None`` when undefined: fewer than two checkpoints, or a constant score or AJI) and
        ``checkpoint_eval_seconds`` (the evaluations' wall time).
    """
    model_dir, row_dir = Path(model_dir), Path(row_dir)
    scored = scored_checkpoints(model_dir)
    if not scored:
        return {}
    start = time.perf_counter()
    entries = {int(e["iteration"]): e for e in json.loads((model_dir / "selection.json").read_text())}
    best = max(entries.values(), key=lambda e: float(e["score"]))  # the first best, as BestModelSaver keeps it

    def line(name: str, entry: Mapping[str, Any], metrics: Mapping[str, float], selected: bool) -> dict[str, Any]:
        seconds, source = _seconds(entry, train_seconds, iterations)
        return {"checkpoint": name, "iteration": int(entry["iteration"]), "seconds": round(seconds, 2),
                "seconds_from": source, "score": entry.get("score", ""), "foreground": entry.get("foreground", ""),
                "selected": int(selected), **metrics}

    lines = [line(path.name, entries[i], evaluate(path, row_dir / "checkpoints" / path.stem), False)
             for i, path in sorted(scored.items())]
    if (model_dir / "model_best.pt").is_file():
        best_metrics = evaluate(model_dir / "model_best.pt", row_dir / "checkpoints" / "model_best")
        lines.append(line("model_best.pt", best, best_metrics, True))
    final = {**entries.get(int(iterations), {}), "iteration": int(iterations), "seconds": train_seconds}
    lines.append({**line("model.pt", final, last, False), "seconds_from": "train_seconds"})
    _write_csv(row_dir / "checkpoints.csv", lines)
    scored_lines = [x for x in lines if x["checkpoint"].startswith("model_iteration=")]
    corr = rank_correlation([float(x["score"]) for x in scored_lines], [float(x["aji"]) for x in scored_lines])
    selected = next((x for x in lines if x["selected"]), None)
    return {
        "aji_selected": round(float(selected["aji"]), 4) if selected else None,
        "aji_last": round(float(last["aji"]), 4),
        "rank_corr": None if math.isnan(corr) else round(corr, 4),
        "checkpoint_eval_seconds": round(time.perf_counter() - start, 1),
    }


def _write_csv(path: Path, lines: Sequence[Mapping[str, Any]]) -> None:
    metrics = [key for key in lines[-1] if key not in BASE]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=[*BASE, *metrics], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    write_text(path, text.getvalue(), what="checkpoint evaluations")


def read_checkpoints(path: str | Path) -> list[dict[str, str]]:
    """The lines of a ``checkpoints.csv`` (empty when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def curve_notes(curves: Sequence[tuple[str, str, Path]]) -> list[str]:
    """The lines of ``results.md`` explaining the checkpoint columns and ``curves.png``, for ``(row, seed, csv)``."""
    estimated = sorted({row for row, _, path in curves
                        if any(x["seconds_from"] == ESTIMATED for x in read_checkpoints(path))})
    return [
        "",
        "Checkpoints (rows trained with `--keep_scored_models true`; every checkpoint in "
        "`runs/<row>[/seed<k>]/checkpoints.csv`, AJI against training minutes in `curves.png`):",
        "- `AJI selected`: AJI of `model_best.pt`, the checkpoint with the best label-free score (no target labels).",
        "- `AJI last`: AJI of `model.pt`, the last checkpoint (the `AJI` column).",
        "- `rank corr`: Spearman rank correlation of the label-free score with the AJI over the scored checkpoints "
        "(1: the score orders them as AJI does, -1: in reverse; `-` with fewer than two or a constant side).",
    ] + ([f"- Checkpoint seconds of {', '.join(estimated)} are estimated as train seconds × iteration / iterations "
          "(a `selection.json` without `seconds`)."] if estimated else [])


def draw_curves(
    curves: Sequence[tuple[str, str, Path]],
    path: Path,
    title: str,
    finals: Sequence[tuple[str, str, float, float, tuple[float, float] | None]] = (),
) -> None:
    """AJI against training minutes, one line per ``(row, seed, checkpoints.csv)`` (a colour per row), to ``path``.

    Each line runs through the scored checkpoints to ``model.pt``; a star marks ``model_best.pt``.
    ``finals``: ``(row, seed, minutes, aji, start)`` of rows without scored checkpoints, one square each
    at the row's whole training time (with the weights it started from), so that every method of the
    run is on the chart; a dashed line joins it to ``start``, the ``(minutes, aji)`` of the row it
    started from.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    colours: dict[str, str] = {}
    star = "selected (model_best.pt)"
    for row, seed, csv_path in curves:
        lines = read_checkpoints(csv_path)
        points = sorted((float(x["seconds"]) / 60.0, float(x["aji"])) for x in lines if not int(x["selected"]))
        if not points:
            continue
        first = row not in colours
        colours.setdefault(row, f"C{len(colours) % 10}")
        ax.plot(*zip(*points), color=colours[row], lw=1.8 if seed == "" else 0.9, marker=".",
                label=row if first else None)
        for x in (x for x in lines if int(x["selected"])):
            ax.plot(float(x["seconds"]) / 60.0, float(x["aji"]), "*", color=colours[row], markersize=11,
                    markeredgecolor="black", label=star)
            star = None  # one legend entry for the stars
    for row, seed, minutes, aji, start in finals:
        first = row not in colours
        colours.setdefault(row, f"C{len(colours) % 10}")
        if start is not None:
            ax.plot([start[0], minutes], [start[1], aji], "--", color=colours[row], lw=0.9)
        ax.plot(minutes, aji, "s", color=colours[row], markersize=7 if seed == "" else 5,
                label=f"{row} (last model only)" if first else None)
    ax.set_xlabel("training wall-clock minutes (CPU)")
    ax.set_ylabel("AJI on the evaluation images")
    ax.set_title(textwrap.fill(title, 80), fontsize="medium")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside: no point hidden
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    with atomic_write(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
