"""What ``monai-uda benchmark`` writes about its rows: ``results.csv``, ``results.md``, ``results.png``, overlays.

Every file is replaced atomically, so a reader (or another benchmark process writing to the
same output folder) never sees half a table. ``results.md`` starts with a header describing
the setting, the budget, the machine and every command that wrote rows to the folder
(``commands.txt``), followed by one line per row and the rows' descriptions.

With ``--seeds`` every row runs once per seed: ``results.csv`` then has a ``seed`` column and one
line per (row, seed) with that run's values, ``results_summary.csv`` one line per row with
``n`` (finished seeds) and ``<metric>_mean`` / ``<metric>_std`` (sample standard deviation,
empty for one run), ``results.md`` shows ``mean ± std (n)`` and which row differences exceed the
run-to-run spread (:func:`beyond_spread`), and ``results.png`` draws the means with std error bars.

Rows that evaluated their scored checkpoints (:mod:`~monai_uda.benchmark.curves`) add the columns
``aji_selected``, ``aji_last`` and ``rank_corr`` (summarised over seeds like the other metrics) and
``curves.png``; without such a row every file is as before.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_uda.benchmark.curves import CURVE_COLUMNS, CURVE_TABLE, curve_notes, draw_curves
from monai_uda.benchmark.recipes import ROWS
from monai_uda.benchmark.settings import Prepared, Setting
from monai_uda.files import atomic_write, write_text

__all__ = [
    "COLUMNS",
    "SEED_COLUMNS",
    "SUMMARY_COLUMNS",
    "TABLE",
    "beyond_spread",
    "commands",
    "final_points",
    "format_cell",
    "header",
    "overlay",
    "read_results",
    "run_key",
    "spread_line",
    "summarize",
    "write_results",
]

COLUMNS = (
    "setting",
    "row",
    "bundle",
    "status",
    "aji",
    "aji_plus",
    "pq",
    "object_f1",
    "dice",
    "sq",
    "dq",
    "precision",
    "recall",
    "iou",
    "train_seconds",
    "iterations",
    "infer_seconds",
    "infer_megapixels_per_s",
    "peak_rss_mb",
    "budget_minutes",
    "n_eval_images",
    "signature",
)
"""Columns of ``results.csv``, one line per row (``status`` is ``ok``, ``failed`` or ``timeout``)."""

SEED_COLUMNS = (*COLUMNS[:2], "seed", *COLUMNS[2:])
"""Columns of ``results.csv`` when rows ran with ``--seeds``: one line per (row, seed)."""

SUMMARY_METRICS = COLUMNS[COLUMNS.index("aji") : COLUMNS.index("budget_minutes")]
SUMMARY_COLUMNS = ("setting", "row", "bundle", "n", "seeds",
                   *(f"{key}_{stat}" for key in SUMMARY_METRICS for stat in ("mean", "std")))
"""Columns of ``results_summary.csv`` (written with ``--seeds``): one line per row over its finished seeds."""

TABLE = (
    ("aji", "AJI"),
    ("aji_plus", "AJI+"),
    ("pq", "PQ"),
    ("object_f1", "object F1"),
    ("dice", "Dice"),
    ("train_seconds", "train s"),
    ("iterations", "iterations"),
    ("budget_minutes", "budget min"),
    ("infer_megapixels_per_s", "inference MP/s"),
    ("peak_rss_mb", "peak RSS MB"),
)
"""Columns of ``results.md``: (record key, title)."""
CHART_METRICS = TABLE[:5]
DECIMALS = {*dict(CHART_METRICS), *CURVE_COLUMNS, "infer_megapixels_per_s"}


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def _with_curves(records: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any record evaluated its checkpoints (has an ``aji_last``)."""
    return any(r.get("aji_last", "") not in ("", None) for r in records)


def _columns(columns: Sequence[str], records: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """``columns`` with :data:`CURVE_COLUMNS` after ``iou`` when a record has them."""
    if not _with_curves(records):
        return tuple(columns)
    at = columns.index("iou") + 1
    return (*columns[:at], *CURVE_COLUMNS, *columns[at:])


def _summary_columns(records: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """:data:`SUMMARY_COLUMNS`, with the mean and std of :data:`CURVE_COLUMNS` when a record has them."""
    extra = CURVE_COLUMNS if _with_curves(records) else ()
    return (*SUMMARY_COLUMNS, *(f"{key}_{stat}" for key in extra for stat in ("mean", "std")))


def run_key(row: str, seed: Any = None) -> str:
    """A run's name: ``row`` (one run per row), or ``row/seed<k>`` with ``--seeds`` (its folder under ``runs/``)."""
    return row if seed in (None, "") else f"{row}/seed{seed}"


def read_results(out: str | Path) -> dict[str, dict[str, str]]:
    """Records of ``out/results.csv`` by :func:`run_key` (empty when there is none yet)."""
    path = Path(out) / "results.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        return {run_key(record["row"], record.get("seed")): record for record in csv.DictReader(fh)}


def summarize(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One summary per row (in table order) over its finished runs: ``n``, ``seeds`` and each metric's mean and std.

    ``<metric>_std`` is the sample standard deviation (``ddof=1``), empty when fewer than two runs
    finished; ``status`` is ``ok`` when any run finished, else the last run's; ``runs`` are the records
    (those with a ``seed`` when the row has any).
    """
    import numpy as np

    groups: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(str(record["row"]), []).append(record)
    summaries = []
    metrics = (*SUMMARY_METRICS, *(CURVE_COLUMNS if _with_curves(records) else ()))
    for row, runs in groups.items():
        if any(r.get("seed", "") != "" for r in runs):  # a run from before --seeds (seed 0) is not counted twice
            runs = [r for r in runs if r.get("seed", "") != ""]
        done = [r for r in runs if r.get("status") == "ok"]
        summary: dict[str, Any] = {
            "setting": runs[0].get("setting", ""), "row": row, "bundle": runs[0].get("bundle", ""), "n": len(done),
            "seeds": " ".join(str(r.get("seed", "")) for r in done).strip(),
            "status": "ok" if done else runs[-1].get("status", ""), "runs": runs,
        }
        for key in metrics:
            values = [float(r[key]) for r in done if r.get(key) not in ("", None)]
            summary[f"{key}_mean"] = round(float(np.mean(values)), 4) if values else ""
            summary[f"{key}_std"] = round(float(np.std(values, ddof=1)), 4) if len(values) > 1 else ""
        summaries.append(summary)
    return summaries


def beyond_spread(a: Mapping[str, Any], b: Mapping[str, Any], key: str = "aji") -> bool | None:
    """Whether two rows' means differ by more than their run-to-run spread: ``|mean_a - mean_b| > std_a + std_b``.

    A rough rule for a few seeds, not a significance test: a difference smaller than the spread
    is noise. ``None`` when either row has fewer than two finished runs (its spread is unknown).

    Args:
        a: a summary of :func:`summarize` (``n``, ``<key>_mean``, ``<key>_std``).
        b: another one.
        key: the metric.
    """
    if min(int(a["n"]), int(b["n"])) < 2:
        return None
    gap = abs(float(a[f"{key}_mean"]) - float(b[f"{key}_mean"]))
    return gap > float(a[f"{key}_std"]) + float(b[f"{key}_std"])


def spread_line(summaries: Sequence[Mapping[str, Any]], key: str = "aji", title: str = "AJI") -> str:
    """One sentence for ``results.md``: which row differences in ``key`` exceed the spread (:func:`beyond_spread`)."""
    from itertools import combinations

    ranked = sorted((s for s in summaries if s["n"] and s[f"{key}_mean"] != ""),
                    key=lambda s: -float(s[f"{key}_mean"]))
    verdicts = [(a, b, beyond_spread(a, b, key)) for a, b in combinations(ranked, 2)]
    known = [(a, b) for a, b, beyond in verdicts if beyond is not None]
    if not known and all(s["n"] < 2 for s in summaries):
        return (f"Each row is one run, so its spread is unknown: {title} differences smaller than the run-to-run "
                "spread are noise (`--seeds 0,1,2` measures it).")
    if not known:
        return f"Fewer than two rows ran 2+ seeds: no {title} difference to compare with the spread."
    larger = [f"{a['row']} > {b['row']}" for a, b, beyond in verdicts if beyond]
    return (f"{title} differences larger than the run-to-run spread (|Δ mean| > std_a + std_b; rows with 2+ seeds, "
            f"a rough rule, not a significance test): {', '.join(larger) or 'none'}. Every other pair of such rows "
            f"({len(known) - len(larger)}) differs by less than its spread: noise.")


def format_cell(record: Mapping[str, Any], key: str) -> str:
    """``record[key]`` as shown in ``results.md``: scores with 3 decimals, other numbers short, ``-`` when empty."""
    value = record.get(key, "")
    if value in ("", None):
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.3f}" if key in DECIMALS else f"{number:g}"


def _summary_cell(summary: Mapping[str, Any], key: str) -> str:
    """``mean ± std (n)`` when the row ran more than once, else its one value (as :func:`format_cell`)."""
    mean = format_cell({key: summary.get(f"{key}_mean", summary.get(key, ""))}, key)
    if summary.get(f"{key}_std", "") == "":
        return mean
    std = float(summary[f"{key}_std"])
    digits = ".3f" if key in DECIMALS else ".2g"  # as format_cell
    return f"{mean} ± {std:{digits}} ({summary['n']})"


def _markdown(
    records: Sequence[Mapping[str, Any]], header: Sequence[str], curves: Sequence[tuple[str, str, Path]] = ()
) -> str:
    summaries = summarize(records)
    table = (*TABLE[:5], *CURVE_TABLE, *TABLE[5:]) if _with_curves(records) else TABLE
    lines = list(header) + [
        "",
        "| row | " + " | ".join(title for _, title in table) + " |",
        "|---" * (len(table) + 1) + "|",
    ]
    for summary in summaries:
        if summary["status"] == "ok":  # budget_minutes is not averaged: the last run's
            cells = [_summary_cell({**summary["runs"][-1], **summary}, key) for key, _ in table]
        else:  # no run of the row finished: its status in the first column
            cells = [str(summary["status"])] + ["-"] * (len(table) - 1)
        lines.append(f"| {summary['row']} | " + " | ".join(cells) + " |")
    if any(r.get("seed", "") != "" for r in records):
        lines += ["", "Per seed (AJI; every metric in `results.csv`, means and stds in `results_summary.csv`):"]
        lines += [f"- `{s['row']}`: " + ", ".join(
            f"seed {r.get('seed', '')} {format_cell(r, 'aji') if r.get('status') == 'ok' else r.get('status')}"
            for r in s["runs"]) for s in summaries]
    lines += curve_notes(curves) if _with_curves(records) else []
    lines += ["", spread_line(summaries), "", "Rows:"] + [
        f"- `{s['row']}`: {ROWS[s['row']].description if s['row'] in ROWS else s['bundle']}" for s in summaries
    ]
    return "\n".join(lines) + "\n"


def _chart(summaries: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """Bars of each row's mean score, std error bars where it ran more than once."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    done = [s for s in summaries if s["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(done) + 2.0), 4.0))
    width = 0.8 / len(CHART_METRICS)
    x = np.arange(len(done))
    for k, (key, label) in enumerate(CHART_METRICS):
        means = [float(s[f"{key}_mean"]) for s in done]
        stds = [float(s[f"{key}_std"] or 0.0) for s in done]
        offset = (k - (len(CHART_METRICS) - 1) / 2) * width
        ax.bar(x + offset, means, width, yerr=stds if any(stds) else None, capsize=2, label=label)
    ax.set_xticks(x, [s["row"] for s in done], rotation=20, ha="right")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("score (mean ± std over seeds)" if any(s["n"] > 1 for s in done) else "score")
    ax.set_title(title)
    ax.legend(ncol=len(CHART_METRICS), fontsize="small", loc="upper left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    _write_atomic(path, buffer.getvalue())


def _csv(records: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return text.getvalue().encode("utf-8")


def write_results(out: str | Path, records: Sequence[Mapping[str, Any]], header: Sequence[str] = ()) -> None:
    """Write ``results.csv``, ``results.md`` and ``results.png`` of ``records`` to ``out`` (each atomically).

    Records with a ``seed`` (``--seeds``) add the ``seed`` column and ``results_summary.csv``; records with
    checkpoint evaluations (``runs/<run_key>/checkpoints.csv``) add their columns and ``curves.png``.
    """
    out = Path(out)
    seeded = any(r.get("seed", "") != "" for r in records)
    _write_atomic(out / "results.csv", _csv(records, _columns(SEED_COLUMNS if seeded else COLUMNS, records)))
    if seeded:
        _write_atomic(out / "results_summary.csv", _csv(summarize(records), _summary_columns(records)))
    done = [r for r in records if r.get("status") == "ok" and r.get("aji_last", "") not in ("", None)]
    runs = [(r, out / "runs" / run_key(r["row"], r.get("seed")) / "checkpoints.csv") for r in done]
    curves = [(str(r["row"]), str(r.get("seed", "")), path) for r, path in runs if path.is_file()]
    _write_atomic(out / "results.md", _markdown(records, header, curves).encode("utf-8"))
    title = header[0].lstrip("# ") if header else "benchmark"
    _chart(summarize(records), out / "results.png", title)
    if curves:
        draw_curves(curves, out / "curves.png", f"{title}: AJI against training minutes",
                    final_points(records, curves))


def final_points(
    records: Sequence[Mapping[str, Any]], curves: Sequence[tuple[str, str, Path]]
) -> list[tuple[str, str, float, float, tuple[float, float] | None]]:
    """``(row, seed, training minutes, AJI, start)`` of each finished run in ``records`` without a checkpoint curve.

    A row's ``train_seconds`` already holds the stages and start weights it took from other rows
    (``SharedStage``, ``StartWeights``), so its point sits at the whole cost of its model. ``start``:
    ``(minutes, AJI)`` of the donor row whose weights the run started from (same seed), else None.
    """

    def point(r: Mapping[str, Any]) -> tuple[float, float]:
        return float(r["train_seconds"]) / 60.0, float(r["aji"])

    done = {
        (str(r["row"]), str(r.get("seed", ""))): r for r in records
        if r.get("status") == "ok" and all(r.get(key, "") not in ("", None) for key in ("aji", "train_seconds"))
    }
    drawn = {(row, seed) for row, seed, _ in curves}
    points = []
    for (row, seed), r in done.items():
        if (row, seed) in drawn:
            continue
        start = ROWS[row].start if row in ROWS else None
        started = start is not None and '"start":' in str(r.get("signature", ""))  # not --from_scratch
        donor = done.get((start.row, seed)) if started else None
        points.append((row, seed, *point(r), point(donor) if donor is not None else None))
    return points


def commands(out: Path, command: str | None) -> list[str]:
    """Every command that wrote rows to ``out`` (``commands.txt``), ``command`` added once."""
    path = out / "commands.txt"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    if command and command not in lines:
        lines.append(command)
        write_text(path, "\n".join(lines) + "\n")
    return lines


def _seeds(seed: Any) -> str:
    if isinstance(seed, (list, tuple)):
        return f"seeds {', '.join(map(str, seed))} (each row trained once per seed)"
    return f"seed {seed}"


def header(
    setting: Setting,
    prepared: Prepared,
    budget_minutes: float,
    preset: str | None,
    seed: Any,
    out: Path,
    command: str | None,
) -> list[str]:
    """The lines above the table of ``results.md``: the data, the budget, the machine and the commands."""
    return [
        f"# Benchmark: {setting.name}",
        "",
        setting.description,
        "",
        *[f"- {note}" for note in prepared.notes],
        f"- budget: {float(budget_minutes):g} min of training per row in the latest run, "
        "each row's own in `budget min` (wall clock; stopped by `monai_uda.engines.budget.TimeBudget`), "
        f"budget preset {preset or 'paper'}, {_seeds(seed)}, same data and splits for every row",
        f"- machine: {os.cpu_count()} CPU cores, {sys.platform}; "
        "inference MP/s = evaluation megapixels / wall time of the "
        "inference run (model loading, sliding window, post-processing, writing)",
        f"- overlays: `overlays/{'<row>/seed<k>' if isinstance(seed, (list, tuple)) else '<row>'}.png` "
        f"on evaluation image `{prepared.overlay_stem}` (`overlays/ground_truth.png`)",
    ] + [f"- command: `{line}`" for line in commands(out, command)]


def overlay(image_path: Path, instances_path: Path, out: Path) -> None:
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


def ground_truth_overlay(prepared: Prepared, out: Path) -> None:
    """``out/overlays/ground_truth.png``: the labels of the overlay image, drawn as every row's predictions are."""
    from monai_uda.data.io import list_images, stem_of

    image = next(p for p in list_images(prepared.eval_images) if stem_of(p) == prepared.overlay_stem)
    label = next(p for p in list_images(prepared.eval_labels) if stem_of(p) == prepared.overlay_stem)
    overlay(image, label, out / "overlays" / "ground_truth.png")
