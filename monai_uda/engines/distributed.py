"""``torchrun`` + DDP support: process group set-up and wrapping every network of a method.

    torchrun --nproc_per_node=2 -m monai.bundle run training --config_file \
        "['bundles/<name>/configs/train.yaml','bundles/<name>/configs/multi_gpu_train.yaml']"

nccl on GPU, gloo on CPU. Every trained network (segmenters, generators, discriminators,
detectors) becomes a :class:`~torch.nn.parallel.DistributedDataParallel` module; the
optimisers keep working because DDP shares the parameters. Data are split by
:class:`~monai_uda.engines.trainer.ResumableSampler` (rank/world size from the process group),
checkpoints and the final model are written by rank 0 only.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from monai_uda.engines.method import AdaptationMethod

__all__ = ["init_distributed", "distributed_device", "wrap_ddp", "is_main_process"]


def init_distributed(backend: str | None = None) -> int:
    """Initialise the default process group from torchrun's environment; returns the rank."""
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend)
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


def wrap_ddp(method: AdaptationMethod, device: torch.device | str, find_unused_parameters: bool = True) -> AdaptationMethod:
    """Move ``method`` to ``device`` and wrap each of its networks in DDP (in place)."""
    device = torch.device(device)
    method.to(device)
    ids = [device.index] if device.type == "cuda" else None
    for name, module in method.networks().items():
        if any(p.requires_grad for p in module.parameters()):
            setattr(method, name, DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters))
    return method
