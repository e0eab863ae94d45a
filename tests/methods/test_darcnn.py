from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from monai_uda.engines import ScheduleHandler
from monai_uda.engines.distributed import average_gradients
from monai_uda.errors import UDAInputError
from monai_uda.methods.darcnn import DARCNNStage1, DARCNNStage2, alpha_ramp, warmup_iterations
from monai_uda.networks.domain_separation import DomainSeparationMaskRCNN


def _engine(iteration: int = 1) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(iteration=iteration, max_iterations=10))


def _batch() -> dict[str, torch.Tensor]:
    label = torch.zeros(1, 1, 64, 64, dtype=torch.int64)
    label[0, 0, 8:20, 10:24] = 1
    label[0, 0, 36:50, 30:42] = 2
    source = (label > 0).float().expand(-1, 3, -1, -1) * 0.8 + 0.1
    return {"source_image": source.contiguous(), "source_label": label, "target_image": 1.0 - 0.5 * source}


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_alpha_ramp():
    # iteration 1 uses the start value, the end value from iteration warmup + 1 on
    assert alpha_ramp(1, 10, 0.0, 1.0) == 0.0 and alpha_ramp(0, 10, 0.0, 1.0) == 0.0
    assert alpha_ramp(6, 10, 0.0, 1.0) == pytest.approx(0.5)
    assert alpha_ramp(10, 10, 0.0, 1.0) == pytest.approx(0.9)
    assert alpha_ramp(11, 10, 0.0, 1.0) == 1.0 and alpha_ramp(50, 10, 0.0, 1.0) == 1.0
    assert alpha_ramp(3, 0, 0.2, 0.7) == 0.7
    assert alpha_ramp(3, 4, 0.2, 1.0) == pytest.approx(0.6)
    # a one-iteration ramp still starts at 0
    assert [alpha_ramp(i, 1, 0.0, 1.0) for i in (1, 2, 3)] == [0.0, 1.0, 1.0]


def test_warmup_is_a_tenth_of_a_source_pass_in_iterations():
    # ceil(0.1 * source images / batch size), at least 1
    assert warmup_iterations(0.1, 4, 1) == 1  # 0.4 -> 1, not round(0.4) = 0
    assert warmup_iterations(0.1, 25, 2) == 2  # 1.25 -> 2
    assert warmup_iterations(0.1, 100, 1) == 10
    assert warmup_iterations(0.1, 670, 4) == 17  # 16.75 -> 17
    assert warmup_iterations(0.1, 1, 8) == 1  # 0.0125 -> 1
    assert warmup_iterations(0.0, 100, 1) == 0  # no ramp asked for
    with pytest.raises(UDAInputError, match="alpha_warmup_epochs"):
        warmup_iterations(-0.1, 10, 1)


def test_stage1_step_updates_all_but_the_target_head(tiny_rcnn):
    torch.manual_seed(0)
    net = DomainSeparationMaskRCNN(mmd_grid=4, **tiny_rcnn)  # the paper's one-filter projection
    method = DARCNNStage1(net, score_threshold=0.0, alpha_warmup_iterations=4).train()  # paper: no moving average
    parts = {
        "shared": net.shared_encoder,
        "private_source": net.private_encoders["source"],
        "private_target": net.private_encoders["target"],
        "rpn": net.rpn,
        "head_source": net.heads["source"],
        "projection": net.sim_projection,
    }
    before = {name: _snapshot(m) for name, m in parts.items()}
    head_t = _snapshot(net.heads["target"])
    engine = _engine(2)
    # as the config attaches it
    ScheduleHandler(method.sim_weight_at, "sim")(SimpleNamespace(state=engine.state, method=method))
    losses = method.step(engine, _batch())
    assert losses["alpha"] == pytest.approx(0.25)  # iteration 2 of a 4-iteration ramp
    for key in ("source", "sim", "diff", "target", "total"):
        assert torch.isfinite(losses[key]), key
    assert losses["sim"] > 0 and losses["diff"] > 0 and losses["target"] > 0
    assert losses["confident_proposals"] > 0
    expected = losses["source"] + 0.25 * losses["sim"] + losses["diff"] + 0.1 * losses["target"]  # eq 1
    assert losses["total"].item() == pytest.approx(expected.item(), rel=1e-5)
    for name, module in parts.items():
        assert _changed(module, before[name]), f"{name} was not updated"
    assert not _changed(net.heads["target"], head_t)  # momentum 1: M^t keeps its initialisation


def test_stage1_target_branch_follows_source_branch(tiny_rcnn):
    torch.manual_seed(1)
    net = DomainSeparationMaskRCNN(projection_dim=16, mmd_grid=4, **tiny_rcnn)
    # no confident proposals
    method = DARCNNStage1(net, score_threshold=2.0, target_head_momentum=0.0, target_encoder_momentum=0.0).train()
    losses = method.step(_engine(1), _batch())
    assert losses["target"].item() == 0.0 and losses["confident_proposals"] == 0.0
    assert losses["images_without_background"] == 1.0
    source, target = net.heads["source"].state_dict(), net.heads["target"].state_dict()
    assert all(torch.equal(source[k], v) for k, v in target.items())  # momentum 0: a copy of M^s
    pairs = zip(net.private_encoders["source"].parameters(), net.private_encoders["target"].parameters())
    assert all(torch.equal(p_s, p_t) for p_s, p_t in pairs)  # and E_p^t a copy of E_p^s


def test_stage1_target_encoder_momentum_is_a_moving_average(tiny_rcnn):
    torch.manual_seed(2)
    net = DomainSeparationMaskRCNN(projection_dim=16, mmd_grid=4, **tiny_rcnn)
    with torch.no_grad():  # make the two private encoders differ, so the average is visible
        for p in net.private_encoders["source"].parameters():
            p.add_(1.0)
    reference = DomainSeparationMaskRCNN(projection_dim=16, mmd_grid=4, **tiny_rcnn)
    reference.load_state_dict(net.state_dict())
    # gradients only (lr 0)
    DARCNNStage1(reference, lr=0.0, target_encoder_momentum=1.0).train().step(_engine(9), _batch())
    DARCNNStage1(net, lr=0.0, target_encoder_momentum=0.75).train().step(_engine(9), _batch())
    followed = dict(net.private_encoders["target"].named_parameters())
    for name, p_t in reference.private_encoders["target"].named_parameters():
        p_s = dict(reference.private_encoders["source"].named_parameters())[name]
        torch.testing.assert_close(followed[name], 0.75 * p_t + 0.25 * p_s)
    with pytest.raises(ValueError, match="target_encoder_momentum"):
        DARCNNStage1(net, target_encoder_momentum=1.5)


def test_stage2_step_trains_target_branch_only_with_frozen_teacher(tiny_rcnn):
    torch.manual_seed(0)
    net = DomainSeparationMaskRCNN(projection_dim=16, mmd_grid=4, **tiny_rcnn)
    method = DARCNNStage2(net, score_threshold=0.0).train()
    frozen = {
        "private_source": net.private_encoders["source"],
        "head_source": net.heads["source"],
        "projection": net.sim_projection,
    }
    trained = {
        "shared": net.shared_encoder,
        "private_target": net.private_encoders["target"],
        "rpn": net.rpn,
        "head_target": net.heads["target"],
    }
    before = {name: _snapshot(m) for name, m in {**frozen, **trained}.items()}
    stage1_target = {k: v.clone() for k, v in net.branch_copy("target").state_dict().items()}
    losses = method.step(_engine(1), _batch())
    assert losses["pseudo_instances"] > 0 and torch.isfinite(losses["total"])
    for name, module in frozen.items():
        assert not _changed(module, before[name]), f"{name} must stay frozen in stage 2"
    for name, module in trained.items():
        assert _changed(module, before[name]), f"{name} was not updated"
    teacher = method.teacher.state_dict()
    assert bool(teacher["synced"]) and set(method.teacher.heads) == {"target"}
    assert all(torch.equal(stage1_target[k], teacher[k]) for k in stage1_target)  # teacher = stage-1 weights, frozen
    assert all(not p.requires_grad for p in method.teacher.parameters())


def test_stage2_without_confident_pseudo_labels_trains_on_negatives(tiny_rcnn):
    torch.manual_seed(0)
    net = DomainSeparationMaskRCNN(projection_dim=16, mmd_grid=4, **tiny_rcnn)
    method = DARCNNStage2(net, score_threshold=1.0, blur_sigma=None, contrast=None, brightness=None).train()
    losses = method.step(_engine(1), _batch())
    assert losses["pseudo_instances"] == 0.0
    assert losses["pseudo_mask"].item() == 0.0 and torch.isfinite(losses["total"]) and losses["total"] > 0


def test_stage2_warns_once_when_the_teacher_finds_nothing_for_many_iterations(tiny_rcnn, monkeypatch, caplog):
    from monai_uda.methods import darcnn

    monkeypatch.setattr(darcnn, "EMPTY_PSEUDO_LABEL_STEPS", 2)
    net = DomainSeparationMaskRCNN(projection_dim=16, mmd_grid=4, **tiny_rcnn)
    method = DARCNNStage2(net, score_threshold=1.0, blur_sigma=None, contrast=None, brightness=None).train()
    with caplog.at_level("WARNING", logger="monai_uda.methods.darcnn"):
        method.step(_engine(1), _batch())
        assert not caplog.records  # one empty batch can be an image without nuclei
        for iteration in (2, 3, 4):
            method.step(_engine(iteration), _batch())
    (record,) = caplog.records  # once, at the second empty iteration in a row
    assert "no instance above z = 1 in 2 iterations in a row" in record.getMessage()
    assert "pseudo_score_threshold" in record.getMessage() and method.empty_steps == 4


def test_stage2_model_file_holds_the_detector_checkpoints_hold_the_teacher(tiny_rcnn):
    net = DomainSeparationMaskRCNN(projection_dim=16, mmd_grid=4, **tiny_rcnn)
    method = DARCNNStage2(net)
    assert set(method.networks()) == {"detector"}  # what FinalModelSaver writes to model.pt
    assert set(method.checkpoint_objects()) == {"detector", "teacher", "optimizer_detector"}


def test_gradients_are_averaged_over_ranks_only_in_a_process_group(tmp_path):
    used, unused = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    used.grad = torch.full((3,), 2.0)
    optimizer = torch.optim.SGD([used, unused, frozen], lr=1.0)
    average_gradients(optimizer)  # no process group: a no-op
    assert unused.grad is None and torch.equal(used.grad, torch.full((3,), 2.0))
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        average_gradients(optimizer)
    finally:
        torch.distributed.destroy_process_group()
    assert torch.equal(used.grad, torch.full((3,), 2.0))  # the mean over one rank
    assert torch.equal(unused.grad, torch.zeros(2))  # a parameter without gradient joins the all-reduce as zeros
    assert frozen.grad is None
