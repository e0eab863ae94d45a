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


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_small_widths_drop_stage_4_and_narrow_every_head():
    torch.manual_seed(0)
    full = build_mask_rcnn(backbone="resnet18", **SMALL)
    model = build_mask_rcnn(backbone="resnet18", widths="small", **SMALL).train()
    assert not hasattr(model.backbone.body, "layer4")  # not built, so no weights of it ship
    assert model.backbone.out_channels == 128
    inner = [m.in_channels for m in model.backbone.fpn.inner_blocks.modules() if isinstance(m, nn.Conv2d)]
    assert inner == [64, 128, 256]
    assert model.rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,))  # stages 1-3 and the pooled level
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2"]
    assert model.roi_heads.box_head.fc6.in_features == 128 * 7 * 7 and model.roi_heads.box_head.fc7.out_features == 512
    assert model.roi_heads.box_predictor.cls_score.out_features == 2  # still class-agnostic
    assert model.roi_heads.mask_predictor.conv5_mask.in_channels == 128
    assert _parameters(full) == 30_909_787 and _parameters(model) == 7_569_883
    losses = model([torch.rand(3, 64, 64)], [_target(2)])
    sum(losses.values()).backward()
    assert model.backbone.body.layer3[0].conv1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])[0]
    assert out["masks"].shape[1:] == (1, 64, 64)


def test_widths_as_mapping_and_torchvision_unchanged():
    torch.manual_seed(0)
    default = build_mask_rcnn(backbone="resnet18", **SMALL)
    torch.manual_seed(0)
    named = build_mask_rcnn(backbone="resnet18", widths="torchvision", **SMALL)
    assert default.state_dict().keys() == named.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), named.state_dict().values()))
    narrow_fpn = build_mask_rcnn(backbone="resnet18", widths={"fpn_channels": 64}, **SMALL)
    assert narrow_fpn.backbone.out_channels == 64 and hasattr(narrow_fpn.backbone.body, "layer4")
    assert narrow_fpn.roi_heads.box_head.fc7.out_features == 1024  # the rest stays torchvision's


@pytest.mark.parametrize(
    "widths, message",
    [
        ("tiny", "unknown detector widths 'tiny'; choose one of torchvision, small"),
        ({"fpn_width": 64}, "unknown detector width key(s) ['fpn_width']"),
        ({"fpn_channels": 100}, "fpn_channels must be a multiple of 32"),
        ({"returned_layers": [3, 2]}, "returned_layers must be increasing ResNet stages from 1-4"),
        ({"returned_layers": [1, 2, 5]}, "returned_layers must be increasing ResNet stages from 1-4"),
    ],
)
def test_bad_widths_are_input_errors(widths, message):
    with pytest.raises(UDAInputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        build_mask_rcnn(backbone="resnet18", widths=widths, **SMALL)


def test_anchor_count_follows_the_levels():
    with pytest.raises(UDAInputError, match=r"one size per FPN level \(4"):
        build_mask_rcnn(backbone="resnet18", widths="small", anchor_sizes=(8, 16, 32, 64, 128), **SMALL)
    model = build_mask_rcnn(backbone="resnet18", widths="small", anchor_sizes=(6, 12, 24, 48), **SMALL)
    assert model.rpn.anchor_generator.sizes == ((6,), (12,), (24,), (48,))
