"""The shared adversarial trainer, the method contract and checkpoint helpers."""

from __future__ import annotations

from monai_uda.engines.checkpoint import (
    AtomicCheckpointSaver,
    FinalModelSaver,
    ResumeCheckpointLoader,
    RNGState,
    checkpoint_objects,
    latest_checkpoint,
    load_network_weights,
    save_atomic,
)
from monai_uda.engines.distributed import distributed_device, init_distributed, is_main_process, wrap_ddp
from monai_uda.engines.handlers import training_outputs
from monai_uda.engines.method import AdaptationMethod
from monai_uda.engines.schedules import ScheduleHandler
from monai_uda.engines.stages import Stage
from monai_uda.engines.trainer import (
    AdaptationTrainer,
    IndexedEpochDataset,
    ResumableSampler,
    TrainingDivergedError,
    make_train_loader,
)

__all__ = [
    "AdaptationMethod",
    "AtomicCheckpointSaver",
    "AdaptationTrainer",
    "FinalModelSaver",
    "IndexedEpochDataset",
    "RNGState",
    "ResumeCheckpointLoader",
    "ResumableSampler",
    "ScheduleHandler",
    "Stage",
    "TrainingDivergedError",
    "checkpoint_objects",
    "distributed_device",
    "init_distributed",
    "is_main_process",
    "wrap_ddp",
    "latest_checkpoint",
    "load_network_weights",
    "make_train_loader",
    "save_atomic",
    "training_outputs",
]
