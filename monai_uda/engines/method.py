"""The method contract: what a paper's training algorithm gives the shared trainer.

A method owns its networks and optimisers and implements one iteration of its paper's
algorithm in :meth:`AdaptationMethod.step`. The trainer (:mod:`monai_uda.engines.trainer`)
owns everything else: the loop, device, AMP, checkpoints, logging, NaN guard and resume.

Gradients go through two helpers, :meth:`AdaptationMethod.backward` and
:meth:`AdaptationMethod.step_optimizer`, so that the trainer can split a batch into
micro-batches (gradient accumulation, see :mod:`monai_uda.engines.memory`) and float16
autocast can scale the losses (one ``torch.amp.GradScaler`` per optimiser) without any method
knowing: within one iteration, every optimiser step is deferred to the last micro-batch and
takes the sum of the micro-batches' gradients, each weighted by its share of the batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from monai_uda import flag
from monai_uda.engines.distributed import average_gradients

__all__ = ["AdaptationMethod"]


class AdaptationMethod(nn.Module):
    """Base class of a domain-adaptation training method.

    Subclasses register every trainable network as a sub-module (so ``state_dict``,
    ``.to(device)``, ``train()``/``eval()`` and DDP wrapping see them) and keep their optimisers
    in :attr:`optimizers`. Checkpoints hold ``method.state_dict()`` (all networks) and the
    ``state_dict`` of every optimiser, see :meth:`checkpoint_objects`.

    Args:
        optimizers: name -> optimiser, filled by the subclass once its networks exist.
        amp: use ``torch.autocast`` in :meth:`autocast` (a bool or a true/false word, as the command
            line gives it) (CUDA float16 / CPU bfloat16; set :attr:`amp_dtype` to choose). Float16
            losses are scaled by a ``GradScaler`` per optimiser.
    """

    #: name of the sub-module used for inference (segmenter / generator / detector)
    inference_network_name: str = "segmenter"

    def __init__(self, amp: Any = False) -> None:
        super().__init__()
        self.amp = flag(amp)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.loss_weights: dict[str, float] = {}
        #: autocast dtype; ``None``: float16 on CUDA, bfloat16 elsewhere
        self.amp_dtype: torch.dtype | None = None
        #: optimiser name -> GradScaler (float16 autocast only), see :meth:`enable_amp`
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        self._scaled_by: dict[str, str] = {}  # optimiser -> scaler that scaled its gradients this iteration
        self._micro_weight = 1.0  # share of the batch in the current micro-batch
        self._last_micro = True
        self._grad_sums: dict[torch.Tensor, torch.Tensor] = {}  # parameter -> gradient summed over micro-batches

    # ------------------------------------------------------------------ contract
    def step(self, engine: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        """One training iteration: forward, losses, backward and optimiser steps.

        Args:
            engine: the running trainer (``engine.state.iteration``, ``engine.state.max_iterations``).
            batch: dict of tensors already on the method's device (see DESIGN.md's batch keys).

        Returns:
            name -> loss value (detached) for logging; every value is checked by the NaN guard.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def inference_network(self) -> nn.Module:
        """The network that inference configs load (by :attr:`inference_network_name`)."""
        return getattr(self, self.inference_network_name)

    def _autocast_args(self) -> tuple[str, torch.dtype]:
        device_type = self.device.type if self.device.type in ("cuda", "cpu") else "cpu"
        dtype = self.amp_dtype or (torch.float16 if device_type == "cuda" else torch.bfloat16)
        return device_type, dtype

    def autocast(self) -> torch.autocast:
        """Autocast context for the forward passes (disabled unless ``amp``)."""
        device_type, dtype = self._autocast_args()
        return torch.autocast(device_type=device_type, dtype=dtype, enabled=self.amp)

    def enable_amp(self, amp: Any) -> None:
        """Switch autocast on or off, with a ``GradScaler`` per optimiser when it runs in float16.

        Float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs
        none. Called by the trainer once the method is on its device, so the scalers exist (and
        are checkpointed, :meth:`checkpoint_objects`) before a resumed run loads them.
        """
        self.amp = flag(amp)
        device_type, dtype = self._autocast_args()
        if self.amp and dtype == torch.float16:
            self.scalers = {
                name: self.scalers.get(name) or torch.amp.GradScaler(device_type) for name in self.optimizers
            }
        else:
            self.scalers = {}

    @property
    def last_micro_batch(self) -> bool:
        """False while the trainer runs an earlier micro-batch of an iteration.

        Once-per-iteration side effects that are not optimiser steps (moving averages of weights)
        belong under ``if self.last_micro_batch``; schedules are handlers that run once per iteration.
        """
        return self._last_micro

    @contextmanager
    def micro_batch(self, weight: float, last: bool) -> Iterator[None]:
        """Run :meth:`step` on a micro-batch holding ``weight`` of the batch (the last one: ``last``)."""
        self._micro_weight, self._last_micro = float(weight), bool(last)
        try:
            yield
        finally:
            self._micro_weight, self._last_micro = 1.0, True
            if last:
                self._grad_sums.clear()

    def backward(self, loss: torch.Tensor, *optimizers: str, **kwargs: Any) -> None:
        """``loss.backward(**kwargs)`` for the gradients that ``optimizers`` (names) will step on.

        The loss is weighted by the micro-batch's share of the batch and, under float16 autocast,
        scaled by the first optimiser's ``GradScaler`` (a loss that updates several optimisers is
        scaled once; their steps then unscale with that scaler).
        """
        if not optimizers:
            raise ValueError("name the optimiser(s) this loss updates")
        if self._micro_weight != 1.0:
            loss = loss * self._micro_weight
        scaler = self.scalers.get(optimizers[0])
        if scaler is not None:
            loss = scaler.scale(loss)
            self._scaled_by.update(dict.fromkeys(optimizers, optimizers[0]))
        loss.backward(**kwargs)

    def step_optimizer(self, name: str, max_grad_norm: float | None = None) -> None:
        """Step optimiser ``name`` on the gradients of :meth:`backward` (the paper's optimiser step).

        On an earlier micro-batch the gradients are only added up (the step waits for the last
        micro-batch). On the last one: averaged over the ranks (multi-GPU), unscaled, clipped to
        ``max_grad_norm`` when given, and applied (skipped by the scaler if not finite).
        """
        optimizer = self.optimizers[name]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not self._last_micro:
            for p in params:
                if p.grad is not None:
                    self._grad_sums[p] = self._grad_sums[p] + p.grad if p in self._grad_sums else p.grad
                    p.grad = None
            return
        for p in params:
            summed = self._grad_sums.pop(p, None)
            if summed is not None:
                p.grad = summed if p.grad is None else p.grad + summed
        average_gradients(optimizer)
        scaler = self.scalers.get(self._scaled_by.pop(name, ""))
        if scaler is None or not any(p.grad is not None for p in params):
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            return
        if max_grad_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        scaler.step(optimizer)
        if scaler not in (self.scalers.get(other) for other in self._scaled_by.values()):
            scaler.update()  # the last optimiser this scaler scaled in this iteration

    def set_scheduled(self, name: str, value: float, optimizers: Sequence[str] | None = None) -> None:
        """Set a scheduled value (:class:`~monai_uda.engines.schedules.ScheduleHandler`, before each iteration).

        ``"lr"``: the learning rate of ``optimizers`` (names; default all); any other name: the loss
        weight ``loss_weights[name]``. Subclasses add their own scheduled parameters.
        """
        if name != "lr":
            self.loss_weights[name] = float(value)
            return
        for key in self.optimizers if optimizers is None else optimizers:
            for group in self.optimizers[key].param_groups:
                group["lr"] = value

    def networks(self) -> dict[str, nn.Module]:
        """The sub-modules that hold weights (loss modules without state are left out), DDP unwrapped."""
        return {
            name: module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
            for name, module in self.named_children()
            if module.state_dict()
        }

    def checkpoint_objects(self) -> dict[str, Any]:
        """Objects with ``state_dict``/``load_state_dict`` that a checkpoint must hold."""
        objects: dict[str, Any] = dict(self.networks())
        objects.update({f"optimizer_{name}": opt for name, opt in self.optimizers.items()})
        objects.update({f"scaler_{name}": scaler for name, scaler in self.scalers.items()})
        return objects

    @staticmethod
    def set_requires_grad(modules: nn.Module | list[nn.Module], flag: bool) -> None:
        """Freeze (``False``) or unfreeze (``True``) every parameter of ``modules``."""
        for module in modules if isinstance(modules, list) else [modules]:
            for p in module.parameters():
                p.requires_grad_(flag)
