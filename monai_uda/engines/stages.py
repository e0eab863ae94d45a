"""Staged training: the stages a bundle's ``train.yaml`` lists, with skip-if-done and resume decided here.

A :class:`Stage` is one trainer with its handlers and output folder. The config declares it with
plain keys and runs it with ``"$@<stage>.run()"``; a two-stage bundle lists one such item per stage
in its ``run`` list, so each stage (and the data it reads, e.g. a dataset the previous stage
wrote) is built only when the previous one has finished.

With ``resume`` (``--resume true``), a stage

* is **finished** when its ``done_file`` exists (a stage's final model, written when it ends) or a
  later stage has begun (``later_stage_dirs`` hold a checkpoint): it is built but not run, and a
  finished stage that no later stage has begun loads its ``done_file`` into ``weights`` (the
  networks the next stage starts from);
* otherwise **continues** from the newest checkpoint in its ``output_dir``: required for the first
  stage (``require_checkpoint``), optional for a later one, which may not have begun.

What is finished is decided when the stage is built, before it runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from monai_uda import flag
from monai_uda.engines.checkpoint import (
    ResumeCheckpointLoader,
    checkpoint_objects,
    latest_checkpoint,
    load_network_weights,
)

__all__ = ["Stage"]


def _flatten(handlers: Sequence[Any]) -> list[Any]:
    """Handlers with nested lists (a handler factory's output among single handlers) flattened; ``None`` dropped."""
    out: list[Any] = []
    for handler in handlers:
        if isinstance(handler, (list, tuple)):
            out.extend(_flatten(handler))
        elif handler is not None:
            out.append(handler)
    return out


class Stage:
    """One training stage: run its trainer with its handlers, unless ``--resume true`` finds it finished.

    Args:
        name: the stage's name (messages).
        trainer: the stage's :class:`~monai_uda.engines.AdaptationTrainer`.
        output_dir: the stage's folder (checkpoints).
        handlers: handlers to attach (nested lists are flattened, ``None`` entries skipped).
        resume: ``--resume`` (a bool or a true/false word).
        done_file: file name in ``output_dir`` whose existence means the stage ended (``None``: never skipped).
        later_stage_dirs: folders of later stages; a checkpoint in one means this stage ended.
        weights: name -> network loaded from ``done_file`` when the stage is finished and no later stage has begun.
        require_checkpoint: a resumed stage that is not finished must have a checkpoint (the first stage).
        device: ``map_location`` of the loaded checkpoint and weights.
    """

    def __init__(
        self,
        name: str,
        trainer: Any,
        output_dir: str,
        handlers: Sequence[Any] = (),
        resume: Any = False,
        done_file: str | None = None,
        later_stage_dirs: Sequence[str] = (),
        weights: Mapping[str, nn.Module] | None = None,
        require_checkpoint: bool = True,
        device: Any = "cpu",
    ) -> None:
        self.name, self.trainer, self.output_dir = name, trainer, str(output_dir)
        self.handlers = _flatten(handlers)
        self.weights = dict(weights or {})
        self.device = device
        resume = flag(resume)
        self.later_begun = resume and any(latest_checkpoint(d, required=False) is not None for d in later_stage_dirs)
        self.done_path = None if done_file is None else os.path.join(self.output_dir, done_file)
        self.finished = resume and (self.later_begun or (self.done_path is not None and os.path.isfile(self.done_path)))
        self.checkpoint: str | None = None
        if resume and not self.finished:
            self.checkpoint = latest_checkpoint(self.output_dir, required=bool(require_checkpoint))

    def resume_loader(self) -> ResumeCheckpointLoader | None:
        """The handler loading :attr:`checkpoint` (every rank resumes), or ``None`` when not resuming."""
        if self.checkpoint is None:
            return None
        return ResumeCheckpointLoader(
            load_path=self.checkpoint, load_dict=checkpoint_objects(self.trainer), map_location=self.device
        )

    def run(self) -> None:
        """Train the stage; a finished one is not run (its final networks are loaded when the next stage needs them)."""
        if self.finished:
            if not self.later_begun and self.done_path is not None:
                for key, network in self.weights.items():
                    load_network_weights(network, self.done_path, key, self.device)
            return
        for handler in _flatten([self.resume_loader(), *self.handlers]):
            handler.attach(self.trainer)
        self.trainer.run()
