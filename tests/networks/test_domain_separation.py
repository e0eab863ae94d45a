from __future__ import annotations

import pytest
import torch

from monai_uda.data.pseudo_labels import instance_targets
from monai_uda.networks.domain_separation import DomainSeparationMaskRCNN


@pytest.fixture(scope="module")
def net(tiny_rcnn) -> DomainSeparationMaskRCNN:
    torch.manual_seed(0)
    return DomainSeparationMaskRCNN(projection_dim=16, mmd_grid=4, **tiny_rcnn)


def _label() -> torch.Tensor:
    label = torch.zeros(1, 64, 64, dtype=torch.int64)
    label[0, 8:20, 10:24] = 1
    label[0, 36:50, 30:42] = 2
    return label


def test_structure_shared_init_and_separate_branches(net):
    assert net.domains == ("source", "target")
    shared = net.shared_encoder.state_dict()
    for domain in ("source", "target"):
        private = net.private_encoders[domain]
        assert private is not net.shared_encoder
        assert all(torch.equal(shared[k], v) for k, v in private.state_dict().items())  # same initialisation
    assert net.heads["source"] is not net.heads["target"]
    assert net.heads["source"].box_predictor.cls_score.out_features == 2  # class-agnostic
    weight = net.sim_projection.weight
    assert weight.shape == (16, 256)
    assert torch.allclose(weight @ weight.T, torch.eye(16), atol=1e-5)  # orthonormal rows


def test_project_samples_grid_positions(net):
    samples = net.project(torch.randn(2, 256, 16, 16))
    assert samples.shape == (2 * 4 * 4, 16)


def test_train_losses_per_domain_and_eval_detections(net):
    image = torch.rand(3, 64, 64)
    net.train()
    for domain in ("source", "target"):
        losses = net([image], [instance_targets(_label())], domain=domain)
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
        assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="targets"):
        net([image])
    net.eval()
    with torch.no_grad():
        (detections,) = net([torch.rand(3, 48, 40)])
    assert detections["masks"].shape[1:] == (1, 48, 40)  # back at the input size
    assert 0 < len(detections["scores"]) <= 10
    with pytest.raises(ValueError, match="branch"):
        net.branch_copy("target")([image], domain="source")


def test_detect_with_features_keeps_gradient_to_encoders(net):
    net.train()
    images, _ = net.preprocess([torch.rand(3, 64, 64), torch.rand(3, 64, 64)])
    shared, private = net.encode(images, "target")
    detections, roi_features = net.detect_with_features(images, shared, private, "target")
    assert net.training and net.rpn.training and net.heads["target"].training  # flags restored
    assert len(detections) == len(roi_features) == 2
    for det, feats in zip(detections, roi_features):
        assert feats.shape == (len(det["boxes"]), 256, 14, 14)
        assert det["masks"].shape == (len(det["boxes"]), 1, 28, 28) and not det["scores"].requires_grad
    roi_features[0].sum().backward()
    assert net.private_encoders["target"].fpn.layer_blocks[0][0].weight.grad is not None
    assert net.shared_encoder.fpn.layer_blocks[0][0].weight.grad is not None
    net.zero_grad(set_to_none=True)


def test_branch_copy_holds_only_that_branch(tiny_rcnn, net):
    teacher = net.branch_copy("target")
    assert teacher.domains == ("target",)
    assert set(teacher.private_encoders) == {"target"} and set(teacher.heads) == {"target"}
    assert all(k in net.state_dict() for k in teacher.state_dict())
    with pytest.raises(ValueError):
        DomainSeparationMaskRCNN(domains=("other",), **tiny_rcnn)
