"""One adversarial trainer for every method: a :class:`monai.engines.Trainer` subclass.

The trainer owns the loop, the device, the divergence guard and the iteration budget; the
method (:class:`~monai_uda.engines.method.AdaptationMethod`) owns the algorithm. Handlers
(MONAI/Ignite: ``StatsHandler``, ``TensorBoardStatsHandler``, ``CheckpointSaver``,
``CheckpointLoader``, progress bar, ...) are attached from the bundle configs.

Training is iteration based (``max_iterations``, as the papers count); Ignite's epochs are
"virtual epochs" of ``epoch_length`` iterations. Data order is a pure function of the global
sample index (:class:`ResumableSampler`), so a run resumed from a checkpoint at any iteration
sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import Trainer
from torch.utils.data import DataLoader, Dataset, Sampler

from monai_uda import flag
from monai_uda.engines.memory import MemoryPlan, batch_length, plan_training, split_batch
from monai_uda.engines.method import AdaptationMethod
from monai_uda.errors import TrainingDivergedError

__all__ = ["AdaptationTrainer", "TrainingDivergedError", "ResumableSampler", "IndexedEpochDataset", "make_train_loader"]

logger = logging.getLogger(__name__)


class IndexedEpochDataset(Dataset):
    """Map a global sample index ``g`` to item ``g % len(base)`` of epoch ``g // len(base)``.

    ``base`` must have ``set_epoch(epoch)`` (e.g. :class:`monai_uda.data.dataset.UnpairedDataset`)
    so each pass draws a fresh, seeded pairing. Works inside DataLoader workers because the epoch
    is derived from the index, not from state set in the main process.
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base
        self._epoch: int | None = None

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        epoch, item = divmod(int(index), len(self.base))  # type: ignore[arg-type]
        if epoch != self._epoch and hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)
            self._epoch = epoch
        return self.base[item]


class ResumableSampler(Sampler[int]):
    """Global sample indices for a whole run, starting where a resumed run left off.

    Iteration ``it`` (0-based) of rank ``r`` with ``world_size`` ranks and per-rank batch ``B``
    uses the global indices ``(it * world_size + r) * B + j``, ``j < B``.

    Args:
        batch_size: per-rank batch size.
        max_iterations: total iterations of the run.
        start_iteration: callable giving the iteration to start from when iteration begins
            (read lazily, after a checkpoint may have been loaded).
        rank: this process's rank; world_size: number of processes.
    """

    def __init__(
        self,
        batch_size: int,
        max_iterations: int,
        start_iteration: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.batch_size = batch_size
        self.max_iterations = max_iterations
        self.start_iteration = start_iteration
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return max(self.max_iterations - int(self.start_iteration()), 0) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        for it in range(int(self.start_iteration()), self.max_iterations):
            base = (it * self.world_size + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)


def make_train_loader(
    dataset: Dataset,
    batch_size: int,
    max_iterations: int,
    num_workers: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``IndexedEpochDataset(dataset)`` driven by a :class:`ResumableSampler`.

    The sampler's start iteration is bound later by :class:`AdaptationTrainer` (it reads
    ``trainer.state.iteration``). ``rank``/``world_size`` default to the initialised
    ``torch.distributed`` process group, if any.
    """
    if batch_size < 1 or max_iterations < 1:
        raise ValueError(f"batch_size and max_iterations must be >= 1, got {batch_size} and {max_iterations}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank = torch.distributed.get_rank() if rank is None else rank
        world_size = torch.distributed.get_world_size() if world_size is None else world_size
    sampler = ResumableSampler(batch_size, max_iterations, rank=rank or 0, world_size=world_size or 1)
    return DataLoader(
        IndexedEpochDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,
        # starting an iterator draws a worker base seed; from the global generator that draw would make a
        # resumed run's checkpointed RNG state differ from the uninterrupted run's (one extra draw per resume)
        generator=torch.Generator().manual_seed(0),
    )


def _to_device(batch: Mapping[str, Any], device: torch.device, non_blocking: bool) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class AdaptationTrainer(Trainer):
    """Iteration-based trainer running ``method.step`` on unpaired source/target batches.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        max_iterations: total training iterations.
        train_data_loader: loader of unpaired batches (see :func:`make_train_loader`).
        method: the method; moved to ``device``.
        epoch_length: iterations per virtual epoch (``ckpt_interval`` is a good choice).
        amp: enable autocast in the method (``method.amp``); booleans here may be true/false words.
        handlers: MONAI/Ignite handlers with ``attach(engine)``.
        non_blocking: non-blocking host-to-device copies.
        memory_check: at the first iteration, measure the step and fit it to the device's memory
            (gradient accumulation over micro-batches, or a one-line refusal), see
            :mod:`monai_uda.engines.memory`; the plan is :attr:`memory_plan`.
        memory_hint: the override a refusal suggests (e.g. the bundle's CPU preset).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_iterations: int,
        train_data_loader: DataLoader,
        method: AdaptationMethod,
        epoch_length: int | None = None,
        amp: Any = False,
        handlers: Sequence | None = None,
        non_blocking: bool = False,
        memory_check: Any = False,
        memory_hint: str | None = None,
    ) -> None:
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        epoch_length = min(int(epoch_length or max_iterations), max_iterations)
        super().__init__(
            device=torch.device(device),
            max_epochs=math.ceil(max_iterations / epoch_length),
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            handlers=None,
            amp=False,  # AMP is the method's business (autocast per forward pass)
            decollate=False,
        )
        self.method = method.to(self.state.device)
        self.method.enable_amp(amp)
        self.memory_check, self.memory_hint = flag(memory_check), memory_hint
        self.memory_plan: MemoryPlan | None = None
        self.network = self.method  # what MONAI handlers expect to find
        self.state.max_iterations = int(max_iterations)
        sampler = getattr(train_data_loader, "sampler", None)
        if isinstance(sampler, ResumableSampler):
            sampler.start_iteration = lambda: self.state.iteration
        self.add_event_handler(Events.ITERATION_COMPLETED, self._stop_at_budget)
        self.add_event_handler(Events.EXCEPTION_RAISED, self._reraise)  # first: runs before StatsHandler's
        if handlers:
            for handler in handlers:
                handler.attach(self)

    def _stop_at_budget(self, engine: Any) -> None:
        if engine.state.iteration >= engine.state.max_iterations:
            engine.terminate()

    @staticmethod
    def _reraise(engine: Any, error: Exception) -> None:
        """Re-raise an exception of the run, stopping Ignite's ``EXCEPTION_RAISED`` handlers here.

        MONAI's ``StatsHandler`` would log the full traceback of every exception, also of a
        divergence or a bad input file, which the CLI reports as one ``error:`` line. Any other
        exception still ends the run with its traceback, printed where it is finally caught.
        """
        raise error

    def _iteration(self, engine: Any, batchdata: Mapping[str, Any]) -> dict[str, float]:
        """Run one step of the method and return its losses as floats (the NaN/inf guard).

        With a memory plan of several micro-batches, the step runs on each (gradients accumulate,
        optimisers step at the last) and the logged values are their batch-weighted means.
        """
        if not isinstance(batchdata, Mapping):
            raise TypeError(f"expected a dict batch, got {type(batchdata).__name__}")
        batch = _to_device(batchdata, engine.state.device, engine.non_blocking)
        self.method.train()
        if self.memory_check and self.memory_plan is None:
            self.memory_plan = plan_training(
                lambda micro: self.method.step(engine, micro), self.method, batch, engine.state.device, self.memory_hint
            )
            logger.info(self.memory_plan.describe())
        parts = split_batch(batch, self.memory_plan.steps if self.memory_plan else 1)
        size = batch_length(batch)
        output: dict[str, float] = {}
        for index, part in enumerate(parts):
            weight = batch_length(part) / size
            with self.method.micro_batch(weight, last=index == len(parts) - 1):
                losses = self.method.step(engine, part)
            for name, value in losses.items():
                value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
                if not math.isfinite(value):
                    raise TrainingDivergedError(
                        f"training diverged: loss '{name}' is {value} at iteration {engine.state.iteration}; "
                        "the last good checkpoint in the output folder is kept "
                        "(lower the learning rate or enable gradient clipping)"
                    )
                output[name] = output.get(name, 0.0) + weight * value
        return output
