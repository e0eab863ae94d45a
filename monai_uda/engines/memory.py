"""Memory plan: make one training step fit the device before the first optimiser step.

At the first iteration the trainer measures the method's real step on the real first batch at
micro-batch sizes 1 and 2 (weights, optimiser states, schedulers and random generators are
restored afterwards, so the run is unchanged), fits ``peak(b) = fixed + b * per_sample`` and
compares it with the memory the device has:

* the batch fits: train as configured;
* it does not, but a smaller micro-batch does: keep the batch (the paper's effective batch) and
  accumulate gradients over ``steps`` micro-batches (:meth:`AdaptationMethod.micro_batch`);
* even one sample does not fit: :class:`MemoryPlanError` (a :class:`UDAInputError`, printed as
  one ``error:`` line), naming what one step needs, what there is and the override that fits.

CPU peaks are the growth of the resident set's high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs``); available memory is ``MemAvailable`` shared by the node's
``LOCAL_WORLD_SIZE`` processes under torchrun. CUDA peaks are ``max_memory_allocated`` and
available memory the free device memory plus the caching allocator's unused reserve.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from monai_uda.errors import UDAInputError
from monai_uda.system import trim_freed_memory

__all__ = [
    "MemoryPlan",
    "MemoryPlanError",
    "PeakMemory",
    "available_memory",
    "fit_line",
    "measure_step",
    "meminfo_bytes",
    "plan_batches",
    "plan_training",
    "split_batch",
]

logger = logging.getLogger(__name__)

GIB = 1024**3
#: share of the available memory a plan may use (allocator fragmentation, other processes' growth)
HEADROOM = 0.9


class MemoryPlanError(UDAInputError):
    """Even a micro-batch of one sample needs more memory than the device has."""


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f} GiB"


def meminfo_bytes(field: str = "MemAvailable") -> int:
    """Bytes of a ``/proc/meminfo`` field (``MemAvailable`` or ``MemTotal``); psutil's figure off Linux."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    import psutil  # not Linux: psutil, if installed

    memory = psutil.virtual_memory()
    return int(memory.total if field == "MemTotal" else memory.available)


def available_memory(device: torch.device | str) -> int:
    """Bytes one training process may use on ``device``.

    CUDA: free device memory plus what PyTorch's caching allocator holds unused. CPU: the
    system's available memory divided by the processes torchrun starts on this node.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return meminfo_bytes() // max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), 1)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


class PeakMemory:
    """Context manager: ``peak`` = the largest memory growth over its entry, in bytes.

    CPU: the resident set's high-water mark is reset on entry (``/proc/self/clear_refs``) and read
    on exit; where that is not allowed, a thread samples the resident set every millisecond.
    CUDA: the allocator's peak statistics.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.peak = 0
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = _status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        except OSError:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sampled = max(self._sampled, _status_kib("VmRSS"))
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            top = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            top = self._sampled
        else:
            top = _status_kib("VmHWM")
        self.peak = max(int(top - self._base), 0)


def release_cached(device: torch.device | str) -> bool:
    """Give memory freed by earlier steps back to the system, so the next measurement starts clean.

    CUDA: empty PyTorch's cache. CPU: glibc's ``malloc_trim`` (freed pages of every heap arena).
    Returns False where that is not possible (another C library).
    """
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        return True
    return trim_freed_memory()


def split_batch(batch: Mapping[str, Any], steps: int) -> list[dict[str, Any]]:
    """Split every per-sample tensor of a dict batch into ``steps`` near-equal micro-batches."""
    size = batch_length(batch)
    steps = max(1, min(int(steps), size))
    parts: list[dict[str, Any]] = [{} for _ in range(steps)]
    for key, value in batch.items():
        batched = isinstance(value, torch.Tensor) and value.ndim and len(value) == size
        pieces = torch.tensor_split(value, steps) if batched else [value] * steps
        for part, piece in zip(parts, pieces):
            part[key] = piece
    return parts


def batch_length(batch: Mapping[str, Any]) -> int:
    """Samples in a dict batch: the length of its first tensor (1 without tensors)."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim:
            return len(value)
    return 1


@dataclass(frozen=True)
class MemoryPlan:
    """How one iteration's batch runs: ``steps`` micro-batches of at most ``micro_batch`` samples.

    ``needed`` is the estimated peak of one step at the full batch, ``planned`` at the micro-batch,
    ``available`` what the device (per process) has; all in bytes.
    """

    batch_size: int
    micro_batch: int
    steps: int
    needed: int
    planned: int
    available: int
    device: str = "cpu"

    def describe(self) -> str:
        """One log line: needed, available and the plan."""
        head = (
            f"memory plan ({self.device}): a step at batch {self.batch_size} needs ~{_gib(self.needed)}, "
            f"{_gib(self.available)} available"
        )
        if self.steps == 1:
            return f"{head}; batch {self.batch_size} fits"
        return (
            f"{head}; accumulating gradients over {self.steps} micro-batches of {self.micro_batch} "
            f"(~{_gib(self.planned)} per step), effective batch {self.batch_size} as configured"
        )


def fit_line(peak_1: int, peak_2: int | None) -> tuple[int, int]:
    """``(fixed, per_sample)`` bytes from the peaks at micro-batches 1 and 2.

    Without a second point (or with a noisy one below the first), every byte of the first is
    counted per sample: an over-estimate, never an under-estimate.
    """
    if peak_2 is None or peak_2 <= peak_1:
        return 0, max(int(peak_1), 1)
    per_sample = int(peak_2 - peak_1)
    return max(int(peak_1) - per_sample, 0), per_sample


def plan_batches(
    batch_size: int,
    fixed: int,
    per_sample: int,
    available: int,
    device: str = "cpu",
    hint: str | None = None,
    headroom: float = HEADROOM,
) -> MemoryPlan:
    """Decide the micro-batches of a step needing ``fixed + b * per_sample`` bytes at batch ``b``.

    Raises:
        MemoryPlanError: one sample does not fit in ``headroom * available``; the message names
            the need, the available memory and ``hint`` (the override that fits).
    """
    budget = headroom * available
    need = fixed + batch_size * per_sample
    one = fixed + per_sample
    if one > budget:
        fallback = f"; use {hint}" if hint else ""
        raise MemoryPlanError(
            f"not enough memory to train on {device}: one step at batch 1 needs ~{_gib(one)}, "
            f"{_gib(available)} available{fallback} (or --memory_check false to try anyway)"
        )
    if need <= budget:
        return MemoryPlan(batch_size, batch_size, 1, need, need, available, device)
    largest = max(int((budget - fixed) // per_sample), 1)
    steps = math.ceil(batch_size / largest)
    micro = math.ceil(batch_size / steps)
    return MemoryPlan(batch_size, micro, steps, need, fixed + micro * per_sample, available, device)


def _state(method: Any) -> dict[str, Any]:
    """Deep copy of everything a step changes: checkpoint objects and random generators."""
    return {
        "objects": {name: copy.deepcopy(obj.state_dict()) for name, obj in method.checkpoint_objects().items()},
        "torch": torch.random.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "random": random.getstate(),
    }


def _restore(method: Any, state: dict[str, Any]) -> None:
    for name, obj in method.checkpoint_objects().items():
        obj.load_state_dict(state["objects"][name])
    for p in method.parameters():
        p.grad = None
    torch.random.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])


def measure_step(
    step: Callable[[dict[str, Any]], Any],
    method: Any,
    batch: Mapping[str, Any],
    sizes: list[int],
    device: torch.device | str,
    budget: float | None = None,
) -> list[int]:
    """Peak bytes of ``step(micro_batch)`` at each micro-batch size in ``sizes`` (first samples of ``batch``).

    Before each step the memory earlier steps freed is given back (:func:`release_cached`), and
    each peak is counted from the memory in use then; where it cannot be given back, all peaks are
    counted from one baseline taken before the first step, so cached memory a step reuses still
    counts. A size whose peak, scaled from the previous one, could exceed ``budget`` bytes is not
    tried. The method's state and the random generators are restored after each step.
    """
    state = _state(method)
    peaks: list[int] = []
    try:
        release_cached(device)
        with PeakMemory(device) as baseline:
            pass
        for size in sizes:
            if budget is not None and peaks and peaks[-1] * size / sizes[len(peaks) - 1] > budget:
                break
            micro = {
                k: v[:size] if isinstance(v, torch.Tensor) and v.ndim and len(v) == batch_length(batch) else v
                for k, v in batch.items()
            }
            clean = release_cached(device)
            with PeakMemory(device) as meter:
                if not clean:
                    meter._base = baseline._base
                step(micro)
            peaks.append(_largest(meter.peak, torch.device(device)))  # every rank decides alike
            _restore(method, state)
    finally:
        _restore(method, state)
        del state
        release_cached(device)
    return peaks


def _largest(value: int, device: torch.device) -> int:
    """The largest ``value`` over the ranks (the value itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return int(value)
    tensor = torch.tensor([int(value)], dtype=torch.int64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor[0])


def _agree(steps: int, refuse: bool, device: torch.device) -> tuple[int, bool]:
    """All ranks take the largest number of micro-batches; one refusing rank stops all."""
    if not (dist.is_available() and dist.is_initialized()):
        return steps, refuse
    flags = torch.tensor([steps, int(refuse)], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return int(flags[0]), bool(flags[1])


def plan_training(
    step: Callable[[dict[str, Any]], Any],
    method: Any,
    batch: Mapping[str, Any],
    device: torch.device | str,
    hint: str | None = None,
) -> MemoryPlan:
    """Measure ``step`` on ``batch``'s first samples and plan its micro-batches (see the module docstring)."""
    device = torch.device(device)
    batch_size = batch_length(batch)
    available = available_memory(device)
    peaks = measure_step(step, method, batch, [1, 2] if batch_size > 1 else [1], device, HEADROOM * available)
    fixed, per_sample = fit_line(peaks[0], peaks[1] if len(peaks) > 1 else None)
    error: MemoryPlanError | None = None
    try:
        plan = plan_batches(batch_size, fixed, per_sample, available, device.type, hint)
    except MemoryPlanError as e:
        needed = fixed + batch_size * per_sample
        error, plan = e, MemoryPlan(batch_size, 1, batch_size, needed, fixed + per_sample, available, device.type)
    steps, refuse = _agree(plan.steps, error is not None, device)
    if refuse:
        message = "not enough memory to train on another rank"
        raise error or MemoryPlanError(f"{message}; use {hint}" if hint else message)
    if steps != plan.steps:
        micro = math.ceil(batch_size / steps)
        plan = MemoryPlan(batch_size, micro, steps, plan.needed, fixed + micro * per_sample, available, device.type)
    return plan
