"""The ``monai-uda`` command line (python-fire).

    monai-uda demo [--output_dir DIR]
    monai-uda prepare dsb SRC OUT | prepare monuseg SRC OUT | prepare folder --images DIR [--labels DIR] OUT
    monai-uda prepare coco instances.json OUT [--images DIR] [--category_ids 1,2] [--split source]
    monai-uda prepare folder --images DIR --labels DIR --split target [--labelled_fraction F | --labelled N] [--seed S] OUT
    monai-uda train [--bundle cellseg_uda] [--spatial_dims 3] [--budget_preset cpu] [--dataset_dir DIR] [--output_dir DIR] [--max_iterations N] [--resume true]
    monai-uda infer [--bundle cellseg_uda] --input_dir DIR --output_dir DIR [--ckpt_path FILE]
    monai-uda evaluate --pred DIR --gt DIR --out FILE.json [--ctc true]
    monai-uda bundles [NAME]
    monai-uda benchmark [--setting NAME] [--rows a,b] [--budget_minutes M] [--seeds 0,1,2] [--out DIR]

``train``/``infer`` are thin conveniences over the bundle configs: any further ``--key value``
is passed to ``monai.bundle`` as a config override.
"""  # noqa: E501 (the usage lines are printed as they are by ``monai-uda --help``)

from __future__ import annotations

import os
import sys
from typing import Any

from monai_uda import word_to_bool
from monai_uda.errors import UDAInputError, report_user_error, user_error

__all__ = ["Commands", "main", "user_error"]


class Commands:
    """Domain-adaptive nuclei segmentation: demo, prepare, train, infer, evaluate, benchmark."""

    def demo(
        self, output_dir: str = "monai_uda_demo", max_iterations: int | None = None, device: str | None = None
    ) -> str:
        """Train CellSegUDA on the built-in sample, segment the target test images, write overlays and metrics."""
        from monai_uda.demo import run_demo

        return str(run_demo(output_dir, max_iterations=max_iterations, device=device))

    def prepare(self, fmt: str, src: str | None = None, out: str | None = None, **kwargs: Any) -> str:
        """Convert a public dataset layout (dsb, monuseg, folder, coco) to images/, labels/ and datalist.json."""
        from monai_uda.data.prepare import prepare

        return str(prepare(fmt, src, out, **_booleans(kwargs)))

    def train(
        self, bundle: str = "cellseg_uda", spatial_dims: int = 2, budget_preset: str | None = None, **overrides: Any
    ) -> None:
        """Run a bundle's train.yaml (+ train_3d.yaml for 3D, + train_<budget_preset>.yaml) with overrides."""
        from monai_uda.bundle_runner import run_config

        run_config(bundle, "training", spatial_dims, budget_preset, **_booleans(overrides))

    def infer(
        self, bundle: str = "cellseg_uda", spatial_dims: int = 2, budget_preset: str | None = None, **overrides: Any
    ) -> None:
        """Run a bundle's inference.yaml (--input_dir, --output_dir, --ckpt_path, ...)."""
        from monai_uda.bundle_runner import run_config

        run_config(bundle, "inference", spatial_dims, budget_preset, **_booleans(overrides))

    def bundles(self, name: str | None = None) -> None:
        """Print each bundle's folder (NAME's alone with NAME): ``--config_file $(monai-uda bundles NAME)/configs/train.yaml``."""  # noqa: E501 (printed by --help)
        from monai_uda.bundle_runner import bundle_listing

        print(bundle_listing(name))

    def evaluate(
        self, pred: str, gt: str, out: str | None = None, label_components: bool = False, ctc: bool = False
    ) -> None:
        """Score instance maps in ``pred`` against ``gt`` (matched by file stem); write JSON to ``out``.

        ``--ctc true`` adds the Cell Tracking Challenge SEG and DET measures.
        """
        from monai_uda.metrics.evaluate import evaluate_dirs

        evaluate_dirs(pred, gt, out, word_to_bool(label_components), word_to_bool(ctc))

    def benchmark(self, **kwargs: Any) -> None:
        """Same data, splits, seeds and time budget for every method; see ``scripts/benchmark.py``."""
        from monai_uda.benchmark import main as benchmark_main

        benchmark_main(**kwargs)


def _booleans(options: dict[str, Any]) -> dict[str, Any]:
    """``--resume true`` / ``--strict false`` as booleans: fire keeps lower-case words as strings,
    and the string ``"false"`` is true in Python (``--resume false`` would resume)."""
    return {k: word_to_bool(v) for k, v in options.items()}


def _commands() -> list[str]:
    return [name for name in vars(Commands) if not name.startswith("_")]


def _check_command_line(argv: list[str]) -> None:
    """Refuse an unknown command, or an unknown option of a command whose options are all named, before fire runs.

    ``train``/``infer`` check their config overrides in :func:`~monai_uda.bundle_runner.run_config`;
    ``prepare`` and ``benchmark`` check theirs per format/recipe.
    """
    import difflib
    import inspect

    from monai_uda.options import check_value, parse_argv

    command = argv[0]
    if command not in _commands():
        near = difflib.get_close_matches(command, _commands(), n=1)
        hint = f" (did you mean {near[0]}?)" if near else f" (choose one of {', '.join(_commands())})"
        raise UDAInputError(f"unknown command {command!r}{hint}")
    params = inspect.signature(getattr(Commands, command)).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    names = [n for n in params if n != "self"]
    for key, value in parse_argv(argv[1:])[1].items():
        key = key.replace("-", "_")
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            raise UDAInputError(f"unknown option --{key}" + (f" (did you mean --{near[0]}?)" if near else ""))
        default = params[key].default
        if default is None and "int" in str(params[key].annotation):
            check_value(key, value, 1)
        elif isinstance(default, (bool, int, float)):
            check_value(key, value, default)


def _print_help(text: str) -> None:
    """Print usage; a reader that stops early (``monai-uda train --help | head``) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # the interpreter's final flush must not fail either


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``--help`` prints usage (exit 0, nothing runs); bad input is one ``error:`` line (exit 2),
    divergence exit 3."""
    import fire

    from monai_uda.cli_help import command_help, main_help, wants_help

    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        if not argv or argv[0] in ("--help", "-h"):
            _print_help(main_help(Commands, __doc__))
            return 0
        if wants_help(argv):
            _check_command_line(argv[:1])
            _print_help(command_help(Commands, argv[0], argv[1:], __doc__))
            return 0
        if not argv[0].startswith("-"):
            _check_command_line(argv)
        fire.Fire(Commands, command=argv, name="monai-uda", serialize=lambda result: None)
    except Exception as exc:  # MONAI's config parser wraps errors: look down the chain
        cause = user_error(exc)
        if cause is None:
            raise
        return report_user_error(cause)
    except KeyboardInterrupt:  # Ctrl-C: one line, not the traceback of wherever the work was
        print("\ninterrupted; a training continues from its newest checkpoint with --resume true", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
