"""The handlers every training stage attaches, made from a few named, plain config keys.

Each bundle's ``train.yaml`` lists ``"@<stage>_outputs"`` (this factory's list) in its stage's
handlers instead of repeating the handler block: periodic checkpoints, the final model, console
and TensorBoard logs, a progress bar and the run folder's lock. The multi-GPU config turns the
rank-local ones off by name (``<stage>_outputs#main_process: "@is_main"``).

Why a factory and not a shared YAML file: ``monai.bundle`` reads a ``%file#key`` reference relative
to the current working directory, which breaks for a user who runs from another folder or from
the installed package; a Python factory is found wherever ``monai_uda`` is importable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ignite.handlers import ProgressBar
from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardStatsHandler

from monai_uda import flag
from monai_uda.engines.checkpoint import (
    AtomicCheckpointSaver,
    FinalModelSaver,
    checkpoint_objects,
)

__all__ = ["training_outputs"]


def _identity(output: Any) -> Any:
    return output


class _Every:
    """Event filter: every ``interval``-th iteration (MONAI's ``StatsHandler`` reads an int as "log always")."""

    def __init__(self, interval: int) -> None:
        self.interval = int(interval)

    def __call__(self, engine: Any, event: int) -> bool:
        return event % self.interval == 0


def training_outputs(
    trainer: Any,
    output_dir: str,
    tag: str = "train",
    ckpt_interval: int = 500,
    log_interval: int = 10,
    n_saved: int = 2,
    model_dir: str | None = None,
    run_folder: Any = None,
    last_stage: Any = True,
    main_process: Any = True,
    atomic: Any = True,
    source_data: Any = None,
    network_config: Mapping[str, Any] | None = None,
) -> list[Any]:
    """The output handlers of one training stage, in the order they attach.

    Args:
        trainer: the stage's trainer (what checkpoints hold: :func:`checkpoint_objects`).
        output_dir: checkpoints (``checkpoint_iteration=N.pt``) and ``tensorboard/`` go here.
        tag: the name of the console log lines.
        ckpt_interval: iterations between checkpoints; n_saved: checkpoints kept.
        log_interval: iterations between log lines.
        model_dir: folder of the final ``model.pt`` (default: ``output_dir``).
        run_folder: the claimed :class:`~monai_uda.engines.run_folder.RunFolder`; released when the last
            stage completes (earlier stages keep it held).
        last_stage: whether this is the last stage (see ``run_folder``).
        main_process: ``False`` on the other ranks of a multi-GPU run: no checkpoints, logs or bar
            there (the final model writes itself on rank 0 only).
        atomic: write checkpoints to a temporary file first (:class:`AtomicCheckpointSaver`).
        source_data: the training dataset; the final model records its source labels' typical nucleus
            diameter (:class:`FinalModelSaver`), the reference of inference's ``diameter`` option.
        network_config: the config values that shape the networks, recorded in the final model so that
            inference builds the same networks (:class:`FinalModelSaver`).
    """
    main = flag(main_process)
    handlers: list[Any] = []
    if main:
        saver = AtomicCheckpointSaver if flag(atomic) else CheckpointSaver
        handlers.append(saver(save_dir=output_dir, save_dict=checkpoint_objects(trainer), save_interval=ckpt_interval,
                              epoch_level=False, n_saved=n_saved))
    handlers.append(FinalModelSaver(output_dir=output_dir if model_dir is None else model_dir, source_data=source_data,
                                   network_config=network_config))
    if main:
        handlers += [
            StatsHandler(tag_name=tag, iteration_log=_Every(log_interval), output_transform=_identity),
            TensorBoardStatsHandler(log_dir=os.path.join(output_dir, "tensorboard"), iteration_log=_Every(log_interval),
                                    output_transform=_identity),
            ProgressBar(persist=True),
        ]
    if run_folder is not None:
        handlers.append(run_folder if flag(last_stage) else run_folder.hold)
    return handlers
