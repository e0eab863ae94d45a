"""The method contract: what a paper's training algorithm gives the shared trainer.

A method owns its networks and optimisers and implements one iteration of its paper's
algorithm in :meth:`AdaptationMethod.step`. The trainer (:mod:`monai_uda.engines.trainer`)
owns everything else: the loop, device, AMP, checkpoints, logging, NaN guard and resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["AdaptationMethod"]


class AdaptationMethod(nn.Module):
    """Base class of a domain-adaptation training method.

    Subclasses register every trainable network as a sub-module (so ``state_dict``,
    ``.to(device)``, ``train()``/``eval()`` and DDP wrapping see them) and keep their optimisers
    in :attr:`optimizers`. Checkpoints hold ``method.state_dict()`` (all networks) and the
    ``state_dict`` of every optimiser, see :meth:`checkpoint_objects`.

    Args:
        optimizers: name -> optimiser, filled by the subclass once its networks exist.
        amp: use ``torch.autocast`` in :meth:`autocast` (CUDA float16 / CPU bfloat16).
    """

    #: name of the sub-module used for inference (segmenter / generator / detector)
    inference_network_name: str = "segmenter"

    def __init__(self, amp: bool = False) -> None:
        super().__init__()
        self.amp = amp
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.loss_weights: dict[str, float] = {}

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

    def autocast(self) -> torch.autocast:
        """Autocast context for the forward passes (disabled unless ``amp``)."""
        device_type = self.device.type if self.device.type in ("cuda", "cpu") else "cpu"
        dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
        return torch.autocast(device_type=device_type, dtype=dtype, enabled=self.amp)

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
        return objects

    @staticmethod
    def set_requires_grad(modules: nn.Module | list[nn.Module], flag: bool) -> None:
        """Freeze (``False``) or unfreeze (``True``) every parameter of ``modules``."""
        for module in modules if isinstance(modules, list) else [modules]:
            for p in module.parameters():
                p.requires_grad_(flag)
