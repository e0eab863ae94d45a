"""The ``monai-uda`` command line (python-fire).

    monai-uda demo [--output_dir DIR]
    monai-uda prepare dsb SRC OUT | prepare monuseg SRC OUT | prepare folder --images DIR [--labels DIR] OUT
    monai-uda prepare coco instances.json OUT [--images DIR] [--category_ids 1,2] [--split source]
    monai-uda train [--bundle cellseg_uda] [--spatial_dims 3] [--preset cpu] [--dataset_dir DIR] [--output_dir DIR] [--max_iterations N] [--resume true]
    monai-uda infer [--bundle cellseg_uda] --input_dir DIR --output_dir DIR --ckpt_path FILE
    monai-uda evaluate --pred DIR --gt DIR --out FILE.json
    monai-uda bundles [NAME]
    monai-uda benchmark [--setting NAME] [--rows a,b] [--budget_minutes M] [--out DIR]

``train``/``infer`` are thin conveniences over the bundle configs: any further ``--key value``
is passed to ``monai.bundle`` as a config override.
"""

from __future__ import annotations

import errno
import sys
from typing import Any

from monai_uda import word_to_bool
from monai_uda.errors import UDAInputError

__all__ = ["Commands", "main", "user_error"]


class Commands:
    """Domain-adaptive nuclei segmentation: demo, prepare, train, infer, evaluate, benchmark."""

    def demo(self, output_dir: str = "monai_uda_demo", max_iterations: int | None = None, device: str | None = None) -> str:
        """Train CellSegUDA on the built-in sample, segment the target test images, write overlays and metrics."""
        from monai_uda.demo import run_demo

        return str(run_demo(output_dir, max_iterations=max_iterations, device=device))

    def prepare(self, fmt: str, src: str | None = None, out: str | None = None, **kwargs: Any) -> str:
        """Convert a public dataset layout (dsb, monuseg, folder, coco) to images/, labels/ and datalist.json."""
        from monai_uda.data.prepare import prepare

        return str(prepare(fmt, src, out, **_booleans(kwargs)))

    def train(self, bundle: str = "cellseg_uda", spatial_dims: int = 2, preset: str | None = None, **overrides: Any) -> None:
        """Run a bundle's train.yaml (+ train_3d.yaml for 3D, + train_<preset>.yaml) with overrides."""
        from monai_uda.bundle_runner import run_config

        run_config(bundle, "training", spatial_dims, preset, **_booleans(overrides))

    def infer(self, bundle: str = "cellseg_uda", spatial_dims: int = 2, preset: str | None = None, **overrides: Any) -> None:
        """Run a bundle's inference.yaml (--input_dir, --output_dir, --ckpt_path, ...)."""
        from monai_uda.bundle_runner import run_config

        run_config(bundle, "inference", spatial_dims, preset, **_booleans(overrides))

    def bundles(self, name: str | None = None) -> None:
        """Print each bundle's folder (NAME's alone with NAME): ``--config_file $(monai-uda bundles NAME)/configs/train.yaml``."""
        from monai_uda.bundle_runner import bundle_listing

        print(bundle_listing(name))

    def evaluate(self, pred: str, gt: str, out: str | None = None, label_components: bool = False) -> None:
        """Score instance maps in ``pred`` against ``gt`` (matched by file stem); write JSON to ``out``."""
        from monai_uda.metrics.evaluate import evaluate_dirs

        evaluate_dirs(pred, gt, out, label_components)

    def benchmark(self, **kwargs: Any) -> None:
        """Same data, splits, seeds and time budget for every method; see ``scripts/benchmark.py``."""
        from monai_uda.benchmark import main as benchmark_main

        benchmark_main(**kwargs)


def _booleans(options: dict[str, Any]) -> dict[str, Any]:
    """``--resume true`` / ``--strict false`` as booleans: fire keeps lower-case words as strings,
    and the string ``"false"`` is true in Python (``--resume false`` would resume)."""
    return {k: word_to_bool(v) for k, v in options.items()}


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input is reported as one ``error:`` line (exit 2), divergence as exit 3."""
    import fire

    from monai_uda.engines.trainer import TrainingDivergedError

    try:
        fire.Fire(Commands, command=argv, name="monai-uda", serialize=lambda result: None)
    except Exception as exc:  # MONAI's config parser wraps errors: look down the chain
        cause = user_error(exc)
        if cause is None:
            raise
        _close_progress_bars()
        print(f"error: {_one_line(cause)}", file=sys.stderr)
        return 3 if isinstance(cause, TrainingDivergedError) else 2
    return 0


#: errors of the machine rather than the program: reported in one line like bad input
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def _close_progress_bars() -> None:
    """End the line of any progress bar an error interrupted, so the ``error:`` line stands alone."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _one_line(error: BaseException) -> str:
    """The ``error:`` line's text: the message, or for a disk error the file (when known) and reason."""
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}cannot write ({error.strerror or error})"
    return str(error)


def user_error(exc: BaseException) -> BaseException | None:
    """The :class:`UDAInputError`, ``TrainingDivergedError`` or disk-full ``OSError`` behind ``exc``, if any."""
    from monai_uda.engines.trainer import TrainingDivergedError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (UDAInputError, TrainingDivergedError)):
            return current
        if isinstance(current, OSError) and current.errno in _DISK_ERRNOS:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
