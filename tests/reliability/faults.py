"""Fault injection for reliability checks: make a training run misbehave on purpose.

These handlers are attached like any other train handler; the reliability tests add them
through an extra config file merged after a bundle's ``train.yaml``
(``tests/reliability/configs/faults.yaml``, which names them ``faults.LossFault`` and
``faults.IterationDelay``: this folder must be on the Python path, as the suite's ``conftest.py``
arranges for its tests and their subprocesses), e.g.::

    PYTHONPATH=tests/reliability python -m monai.bundle run training --config_file \
        "['bundles/cellseg_uda/configs/train.yaml','tests/reliability/configs/faults.yaml']" \
        --inject_nan_at 3 --inject_loss seg

* :class:`LossFault` replaces one loss value returned by the method's ``step`` at one
  iteration (NaN or inf), which the trainer's divergence guard must catch;
* :class:`IterationDelay` sleeps after every iteration, so a run can be killed part-way at
  a predictable pace.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["LossFault", "IterationDelay"]


class LossFault:
    """Replace the loss ``loss`` returned by ``engine.method.step`` at ``iteration`` with ``value``.

    Args:
        iteration: 1-based iteration (Ignite's ``engine.state.iteration`` during that step).
        loss: name of the loss to poison; ``None`` poisons the first loss of the step.
        value: the injected value, ``nan`` by default (``inf`` and ``-inf`` work too).

    Raises:
        KeyError: at the poisoned iteration, when the method returns no loss named ``loss``.
    """

    def __init__(self, iteration: int, loss: str | None = None, value: float = float("nan")) -> None:
        if int(iteration) < 1:
            raise ValueError(f"iteration must be >= 1, got {iteration}")
        self.iteration = int(iteration)
        self.loss = loss
        self.value = float(value)

    def attach(self, engine: Engine) -> None:
        """Wrap ``engine.method.step`` (the method of :class:`~monai_uda.engines.AdaptationTrainer`)."""
        step: Callable[[Engine, Mapping[str, Any]], dict[str, Any]] = engine.method.step

        def poisoned_step(trainer: Engine, batch: Mapping[str, Any]) -> dict[str, Any]:
            losses = dict(step(trainer, batch))
            if trainer.state.iteration == self.iteration:
                name = next(iter(losses)) if self.loss is None else self.loss
                if name not in losses:
                    raise KeyError(f"the method returns no loss {name!r} (it returns: {', '.join(losses)})")
                losses[name] = torch.tensor(self.value)
            return losses

        engine.method.step = poisoned_step


class IterationDelay:
    """Sleep ``seconds`` after every iteration (after the checkpoint handlers attached before it).

    Args:
        seconds: pause per iteration; ``0`` disables the handler.
    """

    def __init__(self, seconds: float) -> None:
        if float(seconds) < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        self.seconds = float(seconds)

    def attach(self, engine: Engine) -> None:
        if self.seconds > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        time.sleep(self.seconds)
