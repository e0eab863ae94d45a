"""``torchrun`` + DDP support: process group set-up and wrapping every network of a method.

    torchrun --nproc_per_node=2 -m monai.bundle run training --config_file \
        "['bundles/<name>/configs/train.yaml','bundles/<name>/configs/multi_gpu_train.yaml']"

nccl on GPU, gloo on CPU. Every trained network (segmenters, generators, discriminators,
detectors) is data-parallel: weights broadcast from rank 0, gradients averaged over the ranks
before every optimiser step (:func:`wrap_ddp`). Data are split by
:class:`~monai_uda.engines.trainer.ResumableSampler` (rank/world size from the process group),
checkpoints and the final model are written by rank 0 only.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from ignite import distributed as idist
from torch.nn.parallel import DistributedDataParallel

if TYPE_CHECKING:  # method.py imports average_gradients from here
    from monai_uda.engines.method import AdaptationMethod

__all__ = ["average_gradients", "init_distributed", "distributed_device", "wrap_ddp", "is_main_process"]


def init_distributed(backend: str | None = None) -> int:
    """Initialise the default process group from torchrun's environment; returns the rank."""
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend)
    # Ignite sets up its own view of the group lazily, with a collective ``new_group``, the first
    # time a handler asks for the rank. Handlers that exist on rank 0 only (``CheckpointSaver``)
    # would then wait forever for the other ranks: set it up now, on every rank.
    idist.sync()
    return dist.get_rank()


def distributed_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when GPUs are present, else CPU."""
    if torch.cuda.is_available():
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def average_gradients(optimizer: torch.optim.Optimizer, *args: object, **kwargs: object) -> None:
    """Replace each gradient of ``optimizer`` by its mean over the ranks (one coalesced all-reduce).

    What DDP does, for methods whose steps call networks (or their parts) more than once per
    ``backward``. A trainable parameter without a gradient on this rank contributes zeros, so
    every rank reduces the same tensors. Without a process group it does
    nothing. Usable directly or as an optimiser step pre-hook (extra arguments are ignored).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def wrap_ddp(
    method: AdaptationMethod, device: torch.device | str, find_unused_parameters: bool = True
) -> AdaptationMethod:
    """Make ``method`` data-parallel over the process group (in place) and move it to ``device``.

    Every network's parameters and buffers are broadcast from rank 0, and every optimiser of the
    method averages its gradients over the ranks right before it steps: what
    :class:`~torch.nn.parallel.DistributedDataParallel` does, but independent of how often a
    step calls each network before ``backward`` (CellSegUDA runs the segmenter on source and
    target, the discriminator on both, with frozen weights in between), which DDP wrappers do
    not allow (their gradient hooks expect one forward per backward). Ranks therefore keep
    identical weights. Methods without optimisers are wrapped in DDP (``find_unused_parameters``).
    """
    device = torch.device(device)
    method.to(device)
    if not dist.is_initialized():
        return method
    if not method.optimizers:
        ids = [device.index] if device.type == "cuda" else None
        for name, module in method.networks().items():
            if any(p.requires_grad for p in module.parameters()):
                setattr(
                    method,
                    name,
                    DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters),
                )
        return method
    for tensor in [*method.parameters(), *method.buffers()]:
        dist.broadcast(tensor.data, src=0)
    for optimizer in method.optimizers.values():
        optimizer.register_step_pre_hook(average_gradients)
    return method
