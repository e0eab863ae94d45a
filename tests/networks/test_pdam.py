from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from monai_uda.data.pseudo_labels import instance_targets
from monai_uda.networks.pdam import (
    EntropyDiscriminator,
    ImageLevelDiscriminator,
    InstanceLevelDiscriminator,
    PDAMDetector,
    SemanticHead,
    entropy_map,
)


def _fpn(batch: int = 2, size: int = 64) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((str(i), torch.randn(batch, 256, size // 4 >> i, size // 4 >> i)) for i in range(4))


def _label() -> torch.Tensor:
    label = torch.zeros(1, 64, 64, dtype=torch.int64)
    label[0, 10:20, 10:22] = 1
    label[0, 40:52, 30:40] = 2
    return label


def test_discriminator_and_branch_shapes():
    features = _fpn()
    image_d = ImageLevelDiscriminator()
    pooled = image_d.pool(features)
    assert pooled.shape == (2, 256, 8, 8)
    assert torch.allclose(
        pooled[:, :, 0, 0],
        sum(f[:, :, : f.shape[2] // 8 or 1, : f.shape[3] // 8 or 1].mean((2, 3)) for f in features.values()),
        atol=1e-5,
    )
    assert image_d(pooled).shape == (2, 1, 8, 8)
    assert [m.out_channels for m in image_d.modules() if isinstance(m, torch.nn.Conv2d)] == [
        256,
        512,
        512,
        1,
    ]  # Table 1
    assert InstanceLevelDiscriminator()(torch.randn(5, 1024)).shape == (5, 1)
    semantic = SemanticHead()(features, (64, 64))
    assert semantic.shape == (2, 2, 64, 64)
    assert EntropyDiscriminator()(entropy_map(semantic)).shape == (2, 1, 4, 4)


def test_entropy_map_values():
    uncertain = entropy_map(torch.zeros(1, 2, 3, 3))
    assert torch.allclose(uncertain, torch.full((1, 2, 3, 3), 0.5))  # -0.5 log2(0.5) / log2(2)
    certain = entropy_map(torch.tensor([[[[30.0]], [[-30.0]]]]))
    assert certain.max() < 1e-10


def test_source_and_target_passes(small_pdam):
    torch.manual_seed(0)
    net = PDAMDetector(**small_pdam).train()
    image = torch.rand(3, 64, 64)
    source = net.run_domain([image], [instance_targets(_label())])
    assert {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"} == set(source.losses)
    assert source.semantic_logits.shape == (1, 2, 64, 64) and source.padded_size == (64, 64)
    assert source.instance_features.shape == (8, 1024)
    labels = net.semantic_labels(source)
    assert torch.equal(labels[0], (_label()[0] > 0).long())
    target = net.run_domain([torch.rand(3, 64, 64)])
    assert target.losses == {} and target.targets is None and target.instance_features.shape[1] == 1024
    with pytest.raises(ValueError, match="source targets"):
        net.semantic_labels(target)
    assert net.image_logits(target).shape == (1, 1, 8, 8) and net.entropy_logits(target).shape == (1, 1, 4, 4)
    net.eval()
    with torch.no_grad():
        detections = net([image])
    assert set(detections[0]) == {"boxes", "labels", "scores", "masks"}


def test_narrow_detector_feeds_its_three_levels_to_every_branch(small_pdam):
    """widths "small": FPN levels P2-P4 at 128 channels; semantic branch, discriminators and losses follow."""
    torch.manual_seed(0)
    net = PDAMDetector(backbone="resnet18", widths="small", **small_pdam).train()
    assert net.semantic_head.levels == net.image_discriminator.levels == ("0", "1", "2")
    source = net.run_domain([torch.rand(3, 64, 64)], [instance_targets(_label())])
    target = net.run_domain([torch.rand(3, 64, 64)])
    assert source.semantic_logits.shape == (1, 2, 64, 64) and source.instance_features.shape == (8, 512)
    assert net.image_logits(target).shape == (1, 1, 8, 8) and net.entropy_logits(target).shape == (1, 1, 4, 4)
    loss = sum(source.losses.values()) + net.image_logits(target).mean() + net.entropy_logits(source).mean()
    loss.backward()
    assert net.semantic_head.branches[2][0].conv.weight.grad.abs().sum() > 0


def test_gradient_reversal_in_front_of_the_discriminators(small_pdam):
    torch.manual_seed(0)
    net = PDAMDetector(semantic=False, instance_level=False, **small_pdam).train()
    image = torch.rand(3, 64, 64)
    grads = {}
    for alpha in (1.0, 0.5, 0.0):
        net.zero_grad()
        net.set_grl_alpha(alpha)
        net.image_logits(net.run_domain([image])).sum().backward()
        grads[alpha] = (
            net.detector.backbone.fpn.layer_blocks[0][0].weight.grad.clone(),
            net.image_discriminator.classifier.weight.grad.clone(),
        )
    assert torch.allclose(grads[0.5][0], 0.5 * grads[1.0][0], atol=1e-7)  # the detector sees -alpha * gradient
    assert torch.equal(grads[0.0][0], torch.zeros_like(grads[0.0][0]))
    assert torch.allclose(grads[0.0][1], grads[1.0][1])  # the discriminator's own gradient is not reversed
    with pytest.raises(RuntimeError, match="semantic branch"):
        net.entropy_logits(net.run_domain([image]))
