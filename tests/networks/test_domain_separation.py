from __future__ import annotations

import pytest
import torch

from monai_uda.data.pseudo_labels import instance_targets
from monai_uda.errors import UDAInputError
from monai_uda.losses.domain import background_consistency_loss
from monai_uda.networks.domain_separation import DomainSeparationMaskRCNN


@pytest.fixture(scope="module")
def net(tiny_rcnn) -> DomainSeparationMaskRCNN:
    torch.manual_seed(0)
    return DomainSeparationMaskRCNN(projection_dim=16, mmd_grid=4, **tiny_rcnn)  # 16 filters, trained jointly


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
    assert isinstance(net.sim_projection, torch.nn.Conv2d)  # projection_training "joint": a plain 1x1 conv


def test_paper_projection_is_a_one_filter_1x1_convolution(tiny_rcnn):
    net = DomainSeparationMaskRCNN(mmd_grid=2, **tiny_rcnn)  # the defaults: the paper's P
    conv = net.sim_projection
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1)
    assert conv.out_channels == 1 and conv.weight.shape == (1, 256, 1, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :2] = torch.tensor([2.0, -1.0]).view(2, 1, 1)
    features = torch.zeros(1, 256, 4, 4)
    features[0, 0] = 1.0  # channel 0 is 1 everywhere
    features[0, 1, :2, :2] = 4.0  # channel 1 is 4 in the top-left quarter
    samples = net.project(features)  # 2 x 2 grid positions, one value each: 2 * 1 - 1 * c1
    torch.testing.assert_close(samples, torch.tensor([[-2.0], [2.0], [2.0], [2.0]]))
    assert net.project(torch.randn(3, 256, 8, 8)).shape == (3 * 2 * 2, 1)


def test_adversarial_projection_has_orthonormal_rows(tiny_rcnn):
    net = DomainSeparationMaskRCNN(projection_dim=16, projection_training="adversarial", mmd_grid=4, **tiny_rcnn)
    weight = net.sim_projection.weight
    assert weight.shape == (16, 256)
    assert torch.allclose(weight @ weight.T, torch.eye(16), atol=1e-5)  # orthonormal rows
    assert net.project(torch.randn(2, 256, 16, 16)).shape == (2 * 4 * 4, 16)
    with pytest.raises(UDAInputError, match="projection_training"):
        DomainSeparationMaskRCNN(projection_training="maximise", **tiny_rcnn)


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


@pytest.mark.parametrize("features, shared_gets_gradient", [("private", False), ("fused", True)])
def test_l_target_trains_the_shared_encoder_only_on_fused_features(net, features, shared_gets_gradient):
    """Eq 4 on h_p^t (paper) leaves E_c without L_target gradient; the fused variant reaches it."""
    net.train()
    net.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    images, _ = net.preprocess([torch.rand(3, 64, 64), torch.rand(3, 64, 64)])
    shared, private = net.encode(images, "target")
    detections, roi_features = net.detect_with_features(images, shared, private, "target", features)
    assert net.training and net.rpn.training and net.heads["target"].training  # flags restored
    assert len(detections) == len(roi_features) == 2
    for det, feats in zip(detections, roi_features):
        assert feats.shape == (len(det["boxes"]), 256, 14, 14)
        assert det["masks"].shape == (len(det["boxes"]), 1, 28, 28) and not det["scores"].requires_grad
    l_target = background_consistency_loss(
        roi_features, [d["masks"] for d in detections], [d["scores"] for d in detections], 0.0, 0.5
    )
    assert l_target.num_proposals > 0 and l_target.loss > 0
    l_target.loss.backward()
    private_grad = net.private_encoders["target"].fpn.layer_blocks[0][0].weight.grad
    assert private_grad is not None and private_grad.abs().sum() > 0
    shared_grads = [p.grad for p in net.shared_encoder.parameters() if p.grad is not None]
    assert bool(shared_grads) == shared_gets_gradient
    assert all(g.abs().sum() > 0 for g in shared_grads[:1])
    net.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="features"):
        net.detect_with_features(images, shared, private, "target", "shared")


def test_branch_copy_holds_only_that_branch(tiny_rcnn, net):
    teacher = net.branch_copy("target")
    assert teacher.domains == ("target",)
    assert set(teacher.private_encoders) == {"target"} and set(teacher.heads) == {"target"}
    assert all(k in net.state_dict() for k in teacher.state_dict())
    with pytest.raises(ValueError):
        DomainSeparationMaskRCNN(domains=("other",), **tiny_rcnn)
