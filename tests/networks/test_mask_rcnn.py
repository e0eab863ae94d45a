from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import masks_to_boxes

from monai_uda.errors import UDAInputError
from monai_uda.networks.mask_rcnn import build_mask_rcnn

SMALL = {"min_size": 64, "max_size": 64, "rpn_post_nms_top_n_train": 50, "box_batch_size_per_image": 32}


def _target(n_objects: int) -> dict[str, torch.Tensor]:
    masks = torch.zeros(n_objects, 64, 64, dtype=torch.uint8)
    for i in range(n_objects):
        masks[i, 5 + 20 * i : 15 + 20 * i, 8:20] = 1
    return {"boxes": masks_to_boxes(masks), "labels": torch.ones(n_objects, dtype=torch.int64), "masks": masks}


def test_default_is_class_agnostic_groupnorm_small_anchors():
    model = build_mask_rcnn(**SMALL)
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    assert isinstance(model.backbone.body.bn1, nn.GroupNorm)
    assert any(isinstance(m, nn.GroupNorm) for m in model.roi_heads.mask_head.modules())
    assert model.rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert all(p.requires_grad for p in model.backbone.body.parameters())  # from scratch: everything trains


def test_train_forward_with_and_without_instances():
    torch.manual_seed(0)
    model = build_mask_rcnn(**SMALL).train()
    image = torch.rand(3, 64, 64)
    losses = model([image], [_target(2)])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert losses["loss_mask"] > 0
    empty = model([image], [_target(0)])  # an image without nuclei is a valid (background) sample
    assert empty["loss_mask"].item() == 0.0 and empty["loss_box_reg"].item() == 0.0
    sum(empty.values()).backward()
    assert model.rpn.head.cls_logits.weight.grad is not None


def test_grey_input_and_resnet101_batchnorm():
    model = build_mask_rcnn(backbone="resnet101", norm="batch", in_channels=1, **SMALL)
    assert model.backbone.body.conv1.in_channels == 1
    assert isinstance(model.backbone.body.bn1, nn.BatchNorm2d)
    assert len(model.backbone.body.layer3) == 23  # ResNet-101
    assert model.transform.image_mean == [0.5] and model.transform.image_std == [0.25]
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(1, 64, 64)])[0]
    assert set(out) == {"boxes", "labels", "scores", "masks"}


def test_resnet18_backbone_for_cpu_budgets_trains():
    torch.manual_seed(0)
    model = build_mask_rcnn(backbone="resnet18", **SMALL).train()
    assert len(model.backbone.body.layer3) == 2 and model.backbone.out_channels == 256  # BasicBlock stages, same FPN
    inner = [m.in_channels for m in model.backbone.fpn.inner_blocks.modules() if isinstance(m, nn.Conv2d)]
    assert inner == [64, 128, 256, 512]
    losses = model([torch.rand(3, 64, 64)], [_target(2)])
    sum(losses.values()).backward()
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0


def test_user_weights_full_model_and_backbone(tmp_path):
    source = build_mask_rcnn(num_classes=3, **SMALL)
    torch.save({"model": source.state_dict()}, tmp_path / "full.pt")
    model = build_mask_rcnn(num_classes=2, weights_path=tmp_path / "full.pt", **SMALL)
    assert torch.equal(model.backbone.body.conv1.weight, source.backbone.body.conv1.weight)
    assert torch.equal(model.rpn.head.conv[0][0].weight, source.rpn.head.conv[0][0].weight)
    assert model.roi_heads.box_predictor.cls_score.out_features == 2  # class-dependent layer skipped

    resnet = torchvision.models.resnet50()
    torch.save(resnet.state_dict(), tmp_path / "r50.pth")
    frozen = build_mask_rcnn(norm="frozen_batch", trainable_layers=3, weights_path=tmp_path / "r50.pth", **SMALL)
    assert torch.equal(frozen.backbone.body.layer4[0].conv1.weight, resnet.layer4[0].conv1.weight)
    assert (
        not frozen.backbone.body.conv1.weight.requires_grad
        and frozen.backbone.body.layer4[0].conv1.weight.requires_grad
    )


def test_bad_input_raises_uda_errors(tmp_path):
    with pytest.raises(UDAInputError, match="backbone"):
        build_mask_rcnn(backbone="vgg16")
    with pytest.raises(UDAInputError, match="norm"):
        build_mask_rcnn(norm="layer")
    with pytest.raises(UDAInputError, match="does not exist"):
        build_mask_rcnn(weights_path=tmp_path / "missing.pt")
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "bn.pth")
    with pytest.raises(UDAInputError, match="bn.pth: weights do not fit"):
        build_mask_rcnn(norm="group", weights_path=tmp_path / "bn.pth")  # BatchNorm statistics in a GroupNorm model
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UDAInputError, match="cannot read"):
        build_mask_rcnn(weights_path=tmp_path / "junk.pt")
