"""Locate the bundles shipped with monai-uda and run their configs through ``monai.bundle``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_uda.errors import UDAInputError

__all__ = ["RUN_OPTIONS", "bundles_dir", "bundle_names", "bundle_path", "bundle_listing", "config_files", "run_config"]

#: config of each run id, and the override files a variant adds
_RUN_CONFIG = {"training": "train.yaml", "inference": "inference.yaml", "evaluate": "evaluate.yaml"}


#: where the wheel puts the top-level ``bundles/`` folder (see ``setup.py``)
_INSTALLED_BUNDLES = Path(__file__).resolve().parent / "bundles"
#: the ``bundles/`` folder of a source checkout (an editable install or ``PYTHONPATH``)
_CHECKOUT_BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def bundles_dir() -> Path:
    """The folder holding the bundles: ``$MONAI_UDA_BUNDLES``, else the installed copy, else the checkout's.

    The wheel carries the repository's top-level ``bundles/`` as ``monai_uda/bundles``, so an
    installed package (``pip install .``) finds its bundles wherever it runs; a source checkout
    uses its own ``bundles/``. ``MONAI_UDA_BUNDLES`` points at another copy, e.g. edited configs.

    Raises:
        UDAInputError: ``MONAI_UDA_BUNDLES`` names no folder, or neither copy exists.
    """
    env = os.environ.get("MONAI_UDA_BUNDLES")
    if env:
        if not Path(env).is_dir():
            raise UDAInputError("MONAI_UDA_BUNDLES is not a folder", env)
        return Path(env).resolve()
    for folder in (_INSTALLED_BUNDLES, _CHECKOUT_BUNDLES):
        if folder.is_dir():
            return folder
    raise UDAInputError(
        "bundles folder not found (reinstall monai-uda, or set MONAI_UDA_BUNDLES to a bundles/ folder)",
        _INSTALLED_BUNDLES,
    )


def bundle_names() -> list[str]:
    """Names of the available bundles (folders with ``configs/train.yaml``)."""
    return sorted(p.parent.parent.name for p in bundles_dir().glob("*/configs/train.yaml"))


def bundle_path(bundle: str) -> Path:
    """The folder of ``bundle`` (its ``configs/`` are what ``python -m monai.bundle run`` takes).

    Raises:
        UDAInputError: unknown bundle, naming the known ones.
    """
    names = bundle_names()
    if bundle not in names:
        raise UDAInputError(f"unknown bundle {bundle!r}; choose one of {', '.join(names)}")
    return bundles_dir() / bundle


def bundle_listing(bundle: str | None = None) -> str:
    """``bundle``'s folder, or one ``name<TAB>folder`` line per bundle (``monai-uda bundles``)."""
    if bundle is not None:
        return str(bundle_path(bundle))
    return "\n".join(f"{name}\t{bundles_dir() / name}" for name in bundle_names())


def config_files(bundle: str, run_id: str, spatial_dims: int = 2, preset: str | None = None) -> list[str]:
    """The config files, in merge order, for ``run_id`` of ``bundle`` (3D and budget-preset overrides added).

    ``preset`` NAME merges ``train_NAME.yaml`` (``monai-uda train --budget_preset NAME``).

    Raises:
        UDAInputError: unknown bundle, run id or preset.
    """
    configs = bundle_path(bundle) / "configs"
    if run_id not in _RUN_CONFIG:
        raise UDAInputError(f"unknown run {run_id!r}; choose one of {', '.join(_RUN_CONFIG)}")
    files = [configs / _RUN_CONFIG[run_id]]
    if run_id != "evaluate":  # network/patch overrides apply to training and inference alike
        if spatial_dims == 3:
            files.append(configs / "train_3d.yaml")
        elif spatial_dims != 2:
            raise UDAInputError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if preset:
            presets = sorted(f.stem[len("train_") :] for f in configs.glob("train_*.yaml") if f.stem != "train_3d")
            if str(preset) not in presets:
                raise UDAInputError(
                    f"unknown budget preset {preset!r} for bundle {bundle!r}; choose one of {', '.join(presets)}"
                )
            files.append(configs / f"train_{preset}.yaml")
    for f in files:
        if not f.is_file():
            raise UDAInputError(f"bundle {bundle!r} has no {f.name}", f)
    return [str(f) for f in files]


#: options of ``monai-uda train|infer`` that choose the config files rather than override them
RUN_OPTIONS = ("bundle", "spatial_dims", "budget_preset")


def run_config(
    bundle: str, run_id: str, spatial_dims: int = 2, budget_preset: str | None = None, **overrides: Any
) -> None:
    """``python -m monai.bundle run <run_id> --config_file <files> --<key> <value> ...`` in-process.

    Raises:
        UDAInputError: unknown bundle, run, budget preset, or an override that is not a key of the
            merged configs or has the wrong type (checked before anything runs); ``preset``, AD-GAN's mask
            preset, given to another bundle names ``--budget_preset``.
    """
    from monai.bundle import run

    from monai_uda.options import check_options, config_defaults

    files: Sequence[str] = config_files(bundle, run_id, spatial_dims, budget_preset)
    defaults = config_defaults(files)
    if "preset" in overrides and "preset" not in defaults:
        raise UDAInputError(
            f"--preset is not a setting of bundle {bundle!r} (it is AD-GAN's mask preset); the config files "
            f"train_NAME.yaml are chosen with --budget_preset NAME"
        )
    check_options(overrides, defaults, own=RUN_OPTIONS)
    if run_id == "evaluate":
        overrides.setdefault("spatial_dims", spatial_dims)
    run(run_id, config_file=list(files), meta_file=str(Path(files[0]).parent / "metadata.json"), **overrides)
