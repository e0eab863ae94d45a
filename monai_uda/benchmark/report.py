"""What ``monai-uda benchmark`` writes about its rows: ``results.csv``, ``results.md``, ``results.png``, overlays.

Every file is replaced atomically, so a reader (or another benchmark process writing to the
same output folder) never sees half a table. ``results.md`` starts with a header describing
the setting, the budget, the machine and every command that wrote rows to the folder
(``commands.txt``), followed by one line per row and the rows' descriptions.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_uda.benchmark.recipes import ROWS, Prepared, Setting
from monai_uda.files import atomic_write, write_text

__all__ = ["COLUMNS", "TABLE", "commands", "format_cell", "header", "overlay", "read_results", "write_results"]

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


def format_cell(record: Mapping[str, Any], key: str) -> str:
    """``record[key]`` as shown in ``results.md``: scores with 3 decimals, other numbers short, ``-`` when empty."""
    value = record.get(key, "")
    if value in ("", None):
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.3f}" if key in dict(CHART_METRICS) or key == "infer_megapixels_per_s" else f"{number:g}"


def _markdown(records: Sequence[Mapping[str, Any]], header: Sequence[str]) -> str:
    lines = list(header) + [
        "",
        "| row | " + " | ".join(title for _, title in TABLE) + " |",
        "|---" * (len(TABLE) + 1) + "|",
    ]
    for record in records:
        if record.get("status") == "ok":
            cells = [format_cell(record, key) for key, _ in TABLE]
        else:  # a failed or timed-out row: its status in the first column
            cells = [str(record.get("status", ""))] + ["-"] * (len(TABLE) - 1)
        lines.append(f"| {record['row']} | " + " | ".join(cells) + " |")
    lines += ["", "Rows:"] + [
        f"- `{r['row']}`: {ROWS[r['row']].description if r['row'] in ROWS else r.get('bundle', '')}" for r in records
    ]
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


def commands(out: Path, command: str | None) -> list[str]:
    """Every command that wrote rows to ``out`` (``commands.txt``), ``command`` added once."""
    path = out / "commands.txt"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    if command and command not in lines:
        lines.append(command)
        write_text(path, "\n".join(lines) + "\n")
    return lines


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
        f"budget preset {preset or 'paper'}, seed {seed}, same data and splits for every row",
        f"- machine: {os.cpu_count()} CPU cores, {sys.platform}; "
        "inference MP/s = evaluation megapixels / wall time of the "
        "inference run (model loading, sliding window, post-processing, writing)",
        f"- overlays: `overlays/<row>.png` on evaluation image `{prepared.overlay_stem}` (`overlays/ground_truth.png`)",
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
