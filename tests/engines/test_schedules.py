"""Learning-rate and loss-weight schedules: the values used at every iteration, and after a resume.

The recorded tables are what the methods used before their schedules became handlers; the
schedules must give the same lr (at each optimiser step) and the same alpha at every iteration,
uninterrupted and after a resume from a checkpoint in the middle of the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from ignite.engine import Events

from monai_uda.engines import AdaptationTrainer, ScheduleHandler, checkpoint_objects
from monai_uda.methods.ad_gan import ADGAN
from monai_uda.methods.cyc_pdam import CycleGANStage, PDAMStage
from monai_uda.methods.darcnn import DARCNNStage1
from monai_uda.networks.domain_separation import DomainSeparationMaskRCNN
from monai_uda.networks.pdam import PDAMDetector

MAX_ITERATIONS = 6
RESUME_AT = 3


def _detection_batch() -> dict[str, torch.Tensor]:
    """One 64 x 64 source image with two square nuclei and a target image (the schedules do not depend on it)."""
    label = torch.zeros(1, 1, 64, 64, dtype=torch.int64)
    for index, (y, x) in enumerate(((10, 12), (38, 32)), start=1):
        label[0, 0, y : y + 12, x : x + 12] = index
    image = (label > 0).float().repeat(1, 3, 1, 1) * 0.8 + 0.1
    return {"source_image": image, "source_label": label, "target_image": 1.0 - 0.5 * image}


def _cyclegan(_: dict) -> tuple[CycleGANStage, list, dict]:
    method = CycleGANStage(channels=4, num_blocks=1, discriminator_channels=(8, 16), lr=1e-3)
    batch = {"source_image": torch.rand(1, 3, 16, 16), "target_image": torch.rand(1, 3, 16, 16)}
    return method, schedule_handlers("cyclegan", method), batch


def _pdam(settings: dict) -> tuple[PDAMStage, list, dict]:
    method = PDAMStage(PDAMDetector(**settings["small_pdam"]), lr=0.002, warmup_iterations=3)
    return method, schedule_handlers("pdam", method), _detection_batch()


def _darcnn(settings: dict) -> tuple[DARCNNStage1, list, dict]:
    method = DARCNNStage1(DomainSeparationMaskRCNN(**settings["tiny_rcnn"]), alpha_start=0.2, alpha_warmup_iterations=3)
    return method, schedule_handlers("darcnn", method), _detection_batch()


def _ad_gan(_: dict) -> tuple[ADGAN, list, dict]:
    method = ADGAN(channels=(4, 8, 8), disc_channels=(4, 8), num_res_blocks=1, mlp_channels=8, lr=1e-3,
                   constant_iterations=2, decay_iterations=3)
    masks = torch.where(torch.rand(2, 1, 8, 8) > 0.7, 1.0, -1.0)
    return (
        method,
        schedule_handlers("ad_gan", method),
        {"source_image": masks, "target_image": torch.rand(2, 1, 8, 8) * 2 - 1},
    )


def schedule_handlers(kind: str, method: Any) -> list:
    """The schedule handlers the bundle configs attach for ``kind``."""
    if kind == "pdam":
        return [ScheduleHandler(method.lr_at), ScheduleHandler(method.alpha_da_at, "alpha_da")]
    if kind == "darcnn":
        return [ScheduleHandler(method.sim_weight_at, "sim")]
    return [ScheduleHandler(method.lr_at)]


BUILD: dict[str, Callable[[dict], tuple[Any, list, dict]]] = {
    "cyclegan": _cyclegan, "pdam": _pdam, "darcnn": _darcnn, "ad_gan": _ad_gan,
}

#: per iteration 1..6: optimiser name -> lr at its step, and the logged ramp value
RECORDED: dict[str, list[dict[str, float]]] = {
    "cyclegan": [
        {"generators": v, "discriminators": v}
        for v in (0.001, 0.001, 0.001, 0.0006666666666666666, 0.0003333333333333333, 0.0)
    ],
    # CyC-PDAM eq 4 (issue 21): the eq-5 ramp is alpha_da, the weight of the domain losses; the
    # gradient reversal is a plain sign flip (grl_alpha 1). Before, the same ramp was grl_alpha.
    "pdam": [
        {"detector": lr, "alpha_da": alpha, "grl_alpha": 1.0}
        for lr, alpha in (
            (0.0011111111111111111, 0.0),
            (0.0015555555555555557, 0.7615941559557646),
            (0.002, 0.9640275800758169),
            (0.002, 0.9950547536867307),
            (0.0002, 0.9993292997390673),
            (0.0002, 0.9999092042625952),
        )
    ],
    # alpha starts at alpha_start on iteration 1 and reaches alpha after the 3 warm-up iterations
    "darcnn": [{"detector": 0.0001, "alpha": v} for v in (0.2, 0.4666666666666667, 0.7333333333333334, 1.0, 1.0, 1.0)],
    "ad_gan": [
        {"generator": v, "discriminator": v}
        for v in (0.001, 0.001, 0.001, 0.0006666666666666668, 0.0003333333333333334, 0.0)
    ],
}


def _trainer(
    kind: str, settings: dict, max_iterations: int = MAX_ITERATIONS
) -> tuple[AdaptationTrainer, list[dict[str, float]]]:
    torch.manual_seed(0)
    method, handlers, batch = BUILD[kind](settings)
    trainer = AdaptationTrainer(
        "cpu", max_iterations, [batch] * max_iterations, method, epoch_length=max_iterations, handlers=handlers
    )
    seen: list[dict[str, float]] = []

    def record_lr(name: str) -> Callable:
        def hook(optimizer: torch.optim.Optimizer, *_: Any) -> None:
            seen[-1][name] = optimizer.param_groups[0]["lr"]

        return hook

    for name, optimizer in method.optimizers.items():
        optimizer.register_step_pre_hook(record_lr(name))
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda engine: seen.append({}))

    def record_ramp(engine: Any) -> None:
        for key in ("alpha", "alpha_da", "grl_alpha"):
            if key in engine.state.output:
                seen[-1][key] = float(engine.state.output[key])

    trainer.add_event_handler(Events.ITERATION_COMPLETED, record_ramp)
    return trainer, seen


@pytest.fixture(scope="module")
def settings(small_pdam, tiny_rcnn) -> dict:
    return {"small_pdam": small_pdam, "tiny_rcnn": tiny_rcnn}


@pytest.mark.parametrize("kind", list(BUILD))
def test_schedule_values_per_iteration_and_after_resume(kind, settings, tmp_path):
    trainer, seen = _trainer(kind, settings)
    trainer.run()
    assert seen == RECORDED[kind]

    first, _ = _trainer(kind, settings)
    first.add_event_handler(Events.ITERATION_COMPLETED(once=RESUME_AT), lambda engine: engine.terminate())
    first.run()
    objects = checkpoint_objects(first)
    torch.save({k: v.state_dict() for k, v in objects.items()}, tmp_path / "ckpt.pt")
    resumed, seen_resumed = _trainer(kind, settings)
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    for key, obj in checkpoint_objects(resumed).items():
        obj.load_state_dict(saved[key])
    resumed.run()
    assert seen_resumed == seen[RESUME_AT:]
