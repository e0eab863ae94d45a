"""Stop training when a wall-clock time budget is spent (the benchmark's per-row budget)."""

from __future__ import annotations

import time

from ignite.engine import Engine, Events

__all__ = ["TimeBudget"]


class TimeBudget:
    """Terminate an engine once ``max_seconds`` of wall time have passed since it started.

    Unlike Ignite's ``TimeLimit`` (whole seconds, clock started when the handler is built), the
    clock starts at ``Events.STARTED`` of the engine it is attached to, so network and dataset
    construction are not charged to training, and fractional budgets work. The check runs after
    every iteration; ``engine.terminate()`` still fires ``Events.COMPLETED``, so final-model
    savers run as usual. ``engine.state.budget_exhausted`` tells whether the budget stopped the run.

    Args:
        max_seconds: the budget; ``None`` (or a non-positive value) disables the handler.
    """

    def __init__(self, max_seconds: float | None) -> None:
        self.max_seconds = None if max_seconds is None or float(max_seconds) <= 0 else float(max_seconds)
        self.start: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self.start = time.perf_counter()
        engine.state.budget_exhausted = False

    def __call__(self, engine: Engine) -> None:
        if self.max_seconds is None or self.start is None:
            return
        elapsed = time.perf_counter() - self.start
        if elapsed >= self.max_seconds:
            engine.state.budget_exhausted = True
            engine.logger.info(
                f"time budget of {self.max_seconds:.0f} s spent after {engine.state.iteration} iterations: stopping"
            )
            engine.terminate()
