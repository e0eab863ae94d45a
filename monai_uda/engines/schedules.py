"""Learning-rate and loss-weight schedules as handlers, the same way for every method.

A schedule is a function of the iteration: ``schedule(iteration, max_iterations) -> value``
(1-based ``iteration``, as ``engine.state.iteration`` reads during the step). A
:class:`ScheduleHandler` sets the value on the method before every iteration
(``Events.ITERATION_STARTED``) through :meth:`~monai_uda.engines.method.AdaptationMethod.set_scheduled`:
``"lr"`` sets the learning rate of the method's optimisers, any other name a loss weight or a
parameter the method knows (e.g. the gradient-reversal strength).

A schedule that is a function of the iteration needs no state of its own: a run resumed from a
checkpoint (which holds the trainer's iteration) continues the schedule exactly where the
interrupted run was. Ignite's ``ParamScheduler`` and torch's schedulers count their own steps
instead, which a checkpoint would have to carry and which a micro-batched iteration must not advance twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ignite.engine import Engine, Events

__all__ = ["ScheduleHandler"]


class ScheduleHandler:
    """Set ``param`` of the trained method to ``schedule(iteration, max_iterations)`` before each iteration.

    Args:
        schedule: ``(iteration, max_iterations) -> value``: a method module's schedule function, its
            other arguments bound in the config (``_mode_: callable`` and plain keys).
        param: ``"lr"`` or a name the method's ``set_scheduled`` takes (a loss weight, ``"grl_alpha"``).
        optimizers: for ``"lr"``, the names of the optimisers to set (default: all of them).
    """

    def __init__(
        self, schedule: Callable[[int, int], float], param: str = "lr", optimizers: Sequence[str] | None = None
    ) -> None:
        self.schedule = schedule
        self.param = param
        self.optimizers = None if optimizers is None else list(optimizers)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        value = self.schedule(engine.state.iteration, engine.state.max_iterations)
        engine.method.set_scheduled(self.param, value, self.optimizers)
