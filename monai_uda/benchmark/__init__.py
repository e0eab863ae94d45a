"""``monai-uda benchmark``: every method on the same data, splits, seed and time budget.

    monai-uda benchmark --setting "dsb2018_fluo->monuseg" --rows source_only,cellseg_uda \\
        --budget-minutes 5 --out bench

The package is the experiment harness around the library; nothing in the library imports it.

* :mod:`~monai_uda.benchmark.recipes`: the rows (method configurations), the settings (dataset
  recipes and their preparation), the CPU overrides and shared first stages;
* :mod:`~monai_uda.benchmark.runner`: one row in a fresh process, the loop over the rows
  (skip finished rows, retry failed ones, continue from a shared stage);
* :mod:`~monai_uda.benchmark.report`: ``results.csv``, ``results.md``, ``results.png`` and
  ``overlays/<row>.png`` (every method on the same evaluation image, plus ``ground_truth.png``);
* :mod:`~monai_uda.benchmark.presets`: the timing presets of ``scripts/bench_train_step.py`` and
  ``scripts/bench_memory.py`` (a method and one batch at the paper's or a CPU configuration);
* ``configs/``: the time budgets merged after a bundle's training configs.

Output in ``--out``: the results files above, rewritten atomically after every row;
``runs/<row>/`` (checkpoints, predictions, ``metrics.json``), ``logs/<row>.log`` and the
prepared data in ``data/``. With ``--seeds 0,1,2`` every row trains once per seed, in
``runs/<row>/seed<k>/`` (``logs/<row>/seed<k>.log``, ``overlays/<row>/seed<k>.png``); ``results.csv``
gains a ``seed`` column, ``results_summary.csv`` holds each row's mean and std, and ``results.md``
shows ``mean ± std (n)`` (see :mod:`~monai_uda.benchmark.report`). Rows trained with
``--keep_scored_models true`` also evaluate every checkpoint the label-free selection scored
(``runs/<row>/checkpoints.csv``, ``curves.png``, columns ``aji_selected``, ``aji_last``, ``rank_corr``;
see :mod:`~monai_uda.benchmark.curves`).
"""

from __future__ import annotations

import inspect
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_uda import flag
from monai_uda.benchmark.report import COLUMNS, read_results, write_results
from monai_uda.benchmark.row import run_row
from monai_uda.benchmark.runner import run_benchmark
from monai_uda.benchmark.settings import describe
from monai_uda.data.mask_statistics import check_preset_name
from monai_uda.errors import UDAInputError

__all__ = ["COLUMNS", "main", "parse_seeds", "read_results", "run_benchmark", "run_row", "write_results"]


def _quote(value: Any, rows: bool = False) -> str:
    """A command-line value as typed: rows comma-joined, lists as JSON, shell-quoted."""
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value)) if rows else json.dumps(list(value))
    return shlex.quote(str(value))


def parse_seeds(seeds: str | int | Sequence[int] | None) -> list[int] | None:
    """``--seeds`` as a list of distinct non-negative integers (fire passes ``0,1,2`` as a tuple, ``3`` as an int).

    Raises:
        UDAInputError: a seed is not a non-negative integer, repeats, or none is given.
    """
    if seeds is None:
        return None
    items = seeds.split(",") if isinstance(seeds, str) else seeds if isinstance(seeds, (list, tuple)) else [seeds]
    words = [str(item).strip() for item in items if str(item).strip()]
    if not words or not all(word.isdigit() for word in words):
        raise UDAInputError(f"--seeds must be comma-separated non-negative integers (e.g. 0,1,2), got {seeds!r}")
    if len(set(map(int, words))) < len(words):
        raise UDAInputError(f"--seeds repeats a seed: {seeds!r}")
    return [int(word) for word in words]


def main(
    setting: str = "dsb2018_fluo->monuseg",
    rows: str | Sequence[str] | None = None,
    budget_minutes: float = 5.0,
    out: str = "benchmark",
    datalist: str | None = None,
    data_root: str | None = None,
    spatial_dims: int = 2,
    budget_preset: str | None = "cpu",
    max_iterations: int | None = None,
    row_timeout_minutes: float | None = None,
    ad_gan_preset: str | None = None,
    seeds: str | int | Sequence[int] | None = None,
    from_scratch: bool | str = False,
    checkpoint_curves: bool | str = True,
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
        budget_preset: "cpu" (default) scales 2D rows for a CPU; "paper" keeps the paper's configurations
            (formerly --preset, which now is an error: it collided with AD-GAN's mask preset).
        max_iterations: cap on training iterations per row, on top of the budget.
        row_timeout_minutes: kill a row after this long (default: budget + 60).
        ad_gan_preset: synthetic-mask preset of the AD-GAN rows: auto or a preset name
            (default: the setting's own, else the bundle's auto).
        seeds: comma-separated seeds, e.g. 0,1,2: every row trained once per seed; the tables show
            mean ± std over the seeds (default: one run per row with seed 0, or --seed).
        from_scratch: the CyC-PDAM and DARCNN rows start from random weights (default: from the detector of
            row mask_rcnn_source_only, trained once on the labelled source and run first when needed).
        checkpoint_curves: rows trained with --keep_scored_models true (label-free selection: cellseg_uda and
            ad_gan rows without a labelled validation list) also segment and score the evaluation images with
            every scored checkpoint and model_best.pt: runs/<row>/checkpoints.csv, curves.png and the columns
            AJI selected, AJI last, rank corr. Costs one inference run per checkpoint (default true; false
            skips it).
        **overrides: bundle config overrides for every row.

    Returns:
        The path of results.md.
    """
    if overrides.keys() & {"help", "h"}:  # fire hands --help to functions taking **kwargs: show it, run nothing
        print(
            "usage: monai-uda benchmark --setting NAME --rows a,b,... --budget-minutes M --out DIR [--key value ...]"
            f"\n\n{main.__doc__}"
        )
        return ""
    if "preset" in overrides:
        raise UDAInputError(
            "--preset is ambiguous here: the benchmark's CPU/paper choice is --budget_preset cpu|paper, "
            "AD-GAN's synthetic-mask preset is --ad_gan_preset NAME"
        )
    if budget_preset not in (None, "cpu", "paper"):
        raise UDAInputError(f"--budget_preset must be cpu or paper, got {budget_preset!r}")
    check_preset_name(ad_gan_preset)
    seed_list = parse_seeds(seeds)
    if seed_list is not None and "seed" in overrides:
        raise UDAInputError("--seed and --seeds together: give the seeds with --seeds only")
    switches = {"from_scratch": from_scratch, "checkpoint_curves": checkpoint_curves}
    for key, value in switches.items():
        try:
            switches[key] = flag(value)
        except ValueError as exc:
            raise UDAInputError(f"--{key}: {exc}") from None
    from_scratch, checkpoint_curves = switches["from_scratch"], switches["checkpoint_curves"]
    options = {
        "setting": setting,
        "rows": rows,
        "budget_minutes": budget_minutes,
        "out": out,
        "datalist": datalist,
        "budget_preset": None if budget_preset == "cpu" else budget_preset,
        "max_iterations": max_iterations,
        "ad_gan_preset": ad_gan_preset,
        "seeds": seed_list,
        "from_scratch": from_scratch or None,
        "checkpoint_curves": None if checkpoint_curves else False,
        **overrides,
    }
    command = "monai-uda benchmark " + " ".join(
        f"--{key.replace('_', '-')} {_quote(value, rows=key in ('rows', 'seeds'))}"
        for key, value in options.items()
        if value is not None
    )
    summary = run_benchmark(
        setting,
        rows,
        budget_minutes,
        out,
        datalist,
        data_root,
        int(spatial_dims),
        None if budget_preset in (None, "paper") else budget_preset,
        max_iterations,
        row_timeout_minutes,
        command,
        overrides,
        {"ad_gan": {"preset": ad_gan_preset}} if ad_gan_preset else None,
        seed_list,
        from_scratch,
        checkpoint_curves,
    )
    results = Path(out).resolve() / "results.md"
    print(results.read_text(encoding="utf-8"))
    if summary["failed"]:
        raise SystemExit(f"error: row(s) {', '.join(summary['failed'])} failed; see {Path(out).resolve() / 'logs'}")
    return str(results)


main.__doc__ = f"{inspect.cleandoc(main.__doc__ or '')}\n\n{describe()}\n"
