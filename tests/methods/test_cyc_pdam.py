from __future__ import annotations

import copy
import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from monai_uda.engines import ScheduleHandler
from monai_uda.errors import UDAInputError
from monai_uda.methods.cyc_pdam import (
    PDAM_VARIANTS,
    CycleGANStage,
    PDAMStage,
    alpha_da,
    cyclegan_lr,
    pdam_lr,
    task_weight,
)
from monai_uda.networks.pdam import PDAMDetector


def _engine(iteration: int, max_iterations: int) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(iteration=iteration, max_iterations=max_iterations))


def _scheduled(method: CycleGANStage | PDAMStage, engine: SimpleNamespace) -> SimpleNamespace:
    """``engine`` after the schedule handlers the config attaches to ``method`` set this iteration's values."""
    handlers = [ScheduleHandler(method.lr_at)]
    if isinstance(method, PDAMStage):
        handlers.append(ScheduleHandler(method.alpha_da_at, "alpha_da"))
    for handler in handlers:
        handler(SimpleNamespace(state=engine.state, method=method))
    return engine


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _batch() -> dict[str, torch.Tensor]:
    label = torch.zeros(1, 1, 64, 64, dtype=torch.int64)
    label[0, 0, 8:20, 8:20] = 1
    label[0, 0, 36:50, 30:44] = 2
    source = (label > 0).float().expand(-1, 3, -1, -1) * 0.6 + 0.2
    return {"source_image": source.contiguous(), "source_label": label, "target_image": torch.rand(1, 3, 64, 64)}


def _snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters() if p.requires_grad]


def _changed(module: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return any(
        not torch.equal(a, p.detach()) for a, p in zip(before, (p for p in module.parameters() if p.requires_grad))
    )


def test_alpha_ramp_eq5():
    assert alpha_da(0.0) == 0.0
    assert alpha_da(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)  # 0.98661
    assert alpha_da(1.0) == pytest.approx(0.9999092)
    assert alpha_da(2.0) == alpha_da(1.0)
    assert PDAMStage.alpha_da_at(1, 10) == 0.0 and PDAMStage.alpha_da_at(10, 10) == alpha_da(1.0)


def test_task_reweighting_eq3_on_known_probabilities():
    # p_s = 0.5 -> (1 - p) / p = 1; p_s = 0.8 -> 0.25; their mean over the map is 0.625
    logits = torch.tensor([[_logit(0.5), _logit(0.8)]])
    assert task_weight(logits).item() == pytest.approx(0.625)
    assert task_weight(torch.tensor([_logit(0.25)])).item() == pytest.approx(2.0)  # 3 capped at beta = 2
    assert task_weight(torch.tensor([_logit(0.25)]), beta=5.0).item() == pytest.approx(3.0)
    assert task_weight(torch.zeros(0, 1)).item() == 1.0
    assert not task_weight(torch.zeros(2, requires_grad=True)).requires_grad


def test_learning_rate_schedules():
    assert pdam_lr(0, 1000, 0.003, warmup_iterations=500) == pytest.approx(0.001)  # warm-up from 1/3
    assert pdam_lr(250, 1000, 0.003, warmup_iterations=500) == pytest.approx(0.002)
    assert pdam_lr(600, 1000, 0.003, warmup_iterations=500) == pytest.approx(0.003)
    assert pdam_lr(751, 1000, 0.003, warmup_iterations=500) == pytest.approx(0.0003)  # x0.1 after 3/4
    assert cyclegan_lr(50, 100, 1e-4) == 1e-4 and cyclegan_lr(75, 100, 1e-4) == pytest.approx(5e-5)
    assert cyclegan_lr(100, 100, 1e-4) == 0.0


def test_one_pdam_step_updates_detector_and_all_three_discriminators(small_pdam):
    torch.manual_seed(0)
    method = PDAMStage(PDAMDetector(**small_pdam), warmup_iterations=0)
    net = method.detector
    parts = {
        "backbone": net.detector.backbone,
        "rpn": net.detector.rpn,
        "roi_heads": net.detector.roi_heads,
        "semantic_head": net.semantic_head,
        "image_discriminator": net.image_discriminator,
        "entropy_discriminator": net.entropy_discriminator,
        "instance_discriminator": net.instance_discriminator,
    }
    before = {name: _snapshot(module) for name, module in parts.items()}
    out = method.step(_scheduled(method, _engine(5, 10)), _batch())
    assert [name for name, module in parts.items() if not _changed(module, before[name])] == []
    # eq 4 (default): alpha_da weights the domain losses, the reversal is a plain sign flip
    assert out["alpha_da"] == pytest.approx(alpha_da(4 / 9)) and out["grl_alpha"] == 1.0
    assert out["lr"] == pytest.approx(0.002)
    for key in ("mask", "objectness", "semseg", "da_image", "da_semantic", "da_instance", "total"):
        assert math.isfinite(float(out[key])), key
    assert 0.0 < float(out["weight_image"]) <= 2.0 and 0.0 < float(out["weight_instance"]) <= 2.0
    assert method.inference_network() is net


def test_cycada_variant_without_semantic_branch_or_reweighting(small_pdam):
    torch.manual_seed(0)
    variant = PDAM_VARIANTS["cycada"]
    method = PDAMStage(PDAMDetector(**small_pdam, **variant["detector"]), warmup_iterations=0, **variant["method"])
    assert method.detector.semantic_head is None
    out = method.step(_scheduled(method, _engine(1, 10)), _batch())
    assert out["weight_image"] == 1.0 and out["weight_instance"] == 1.0 and float(out["semseg"]) == 0.0
    assert out["alpha_da"] == 0.0 and math.isfinite(float(out["total"]))


def _gradients(method: PDAMStage, iteration: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The detector's gradients at the optimiser step of ``iteration`` (of 10), and the step's output."""
    grads: dict[str, torch.Tensor] = {}

    def record(*_: object) -> None:
        grads.update({n: p.grad.clone() for n, p in method.detector.named_parameters() if p.grad is not None})

    method.optimizers["detector"].register_step_pre_hook(record)
    torch.manual_seed(0)  # the same RoI sampling in both runs
    return grads, method.step(_scheduled(method, _engine(iteration, 10)), _batch())


def test_alpha_da_weights_the_domain_losses_eq4_or_only_the_reversal(small_pdam):
    torch.manual_seed(0)
    paper = PDAMStage(PDAMDetector(**small_pdam), warmup_iterations=0)
    release = PDAMStage(copy.deepcopy(paper.detector), warmup_iterations=0, alpha_da_on="reversal")
    alpha = alpha_da(1 / 9)  # iteration 2 of 10: 0.5218
    (g_paper, out_paper), (g_release, out_release) = _gradients(paper, 2), _gradients(release, 2)
    assert (out_paper["alpha_da"], out_paper["grl_alpha"]) == (pytest.approx(alpha), 1.0)
    assert (out_release["alpha_da"], out_release["grl_alpha"]) == (pytest.approx(alpha), pytest.approx(alpha))
    adversarial = sum(float(out_paper[k]) for k in ("da_image", "da_semantic", "da_instance"))
    detection = float(out_release["total"]) - adversarial  # release: full-weight domain losses
    assert float(out_paper["total"]) == pytest.approx(detection + alpha * adversarial, rel=1e-5)
    discriminators = ("image_discriminator.", "entropy_discriminator.", "instance_discriminator.")
    for name, grad in g_release.items():  # equal up to float summation order
        scale = alpha if name.startswith(discriminators) else 1.0
        # paper: alpha_da times the release's discriminator gradient; the features get
        # -alpha_da times the domain gradient either way
        tolerance = 1e-3 * float(grad.abs().max()) + 1e-9
        torch.testing.assert_close(g_paper[name], scale * grad, rtol=1e-3, atol=tolerance, msg=name)
    assert any(n.startswith(discriminators) and g.abs().sum() > 0 for n, g in g_release.items())
    # so at the first iteration (alpha_da_at(1, N) = 0) the paper's discriminators get no gradient
    with pytest.raises(UDAInputError, match="alpha_da_on"):
        PDAMStage(paper.detector, alpha_da_on="both")


def test_cyclegan_step_and_translate():
    torch.manual_seed(0)
    method = CycleGANStage(
        source_channels=1, target_channels=3, channels=4, num_blocks=1, discriminator_channels=(8, 16), pool_size=2,
        invert_source=True,
    )
    before = {
        name: _snapshot(getattr(method, name))
        for name in ("generator_s2t", "generator_t2s", "discriminator_t", "discriminator_s")
    }
    batch = {"source_image": torch.rand(1, 1, 32, 32), "target_image": torch.rand(1, 3, 32, 32)}
    out = method.step(_scheduled(method, _engine(1, 4)), batch)
    assert all(_changed(getattr(method, name), snap) for name, snap in before.items())
    assert out["lr"] == 1e-4 and out["identity"].item() == 0.0 and out["cycle"].item() > 0
    assert method.step(_scheduled(method, _engine(4, 4)), batch)["lr"] == 0.0
    assert all(group["lr"] == 0.0 for opt in method.optimizers.values() for group in opt.param_groups)
    image = method.translate(np.random.default_rng(0).random((1, 30, 34), dtype=np.float32))
    assert image.shape == (3, 30, 34) and image.min() >= 0.0 and image.max() <= 1.0
    assert method.generator_s2t.training  # translate restores the mode
    with pytest.raises(ValueError, match="identity"):
        CycleGANStage(source_channels=1, target_channels=3, lambda_identity=0.5)


def _tiny_cyclegan() -> CycleGANStage:
    return CycleGANStage(
        source_channels=1, target_channels=1, channels=4, num_blocks=1, discriminator_channels=(8, 16), pool_size=1
    )


def test_cyclegan_checkpoint_resumes_like_an_uninterrupted_run():
    batches = [
        {
            "source_image": torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(k)),
            "target_image": torch.rand(1, 1, 16, 16),
        }
        for k in range(5)
    ]
    torch.manual_seed(0)
    uninterrupted = _tiny_cyclegan()
    for k in range(2):
        uninterrupted.step(_engine(k + 1, 5), batches[k])
    assert set(uninterrupted.checkpoint_objects()) >= {
        "pool_source", "pool_target", "generator_s2t", "optimizer_generators",
    }
    buffer = io.BytesIO()
    torch.save({k: obj.state_dict() for k, obj in uninterrupted.checkpoint_objects().items()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed, without_pools = _tiny_cyclegan(), _tiny_cyclegan()
    for name, obj in resumed.checkpoint_objects().items():
        obj.load_state_dict(checkpoint[name])
    for name, obj in without_pools.checkpoint_objects().items():
        if not name.startswith("pool_"):
            obj.load_state_dict(checkpoint[name])

    def losses(method: CycleGANStage) -> list[float]:
        return [float(method.step(_engine(k + 1, 5), batches[k])["discriminator_t"]) for k in range(2, 5)]

    expected = losses(uninterrupted)
    assert losses(resumed) == expected
    assert losses(without_pools) != expected  # the pools change the discriminator's inputs


def test_pdam_variant_lookup():
    from monai_uda.errors import UDAInputError
    from monai_uda.methods.cyc_pdam import pdam_variant

    assert pdam_variant("wo_sem") == {"detector": {"semantic": False}, "method": {}}
    with pytest.raises(UDAInputError, match="wo_ni"):
        pdam_variant("wo_ni")
