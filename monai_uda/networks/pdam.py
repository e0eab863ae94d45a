"""PDAM: panoptic domain-adaptive Mask R-CNN (Liu et al., CVPR 2020, sec. 3.2).

torchvision's Mask R-CNN (:func:`monai_uda.networks.mask_rcnn.build_mask_rcnn`) extended with
a Panoptic-FPN semantic branch and three domain discriminators, each behind a gradient
reversal layer:

* :class:`ImageLevelDiscriminator` (Table 1) on the FPN levels P2-P5, average-pooled to 8x8
  and summed;
* :class:`InstanceLevelDiscriminator` (three FC layers) on instance features: the mask
  branch's 14x14x256 RoI features average-pooled to 2x2 and flattened (1024), summed with the
  1024-d box-head feature of the same RoI;
* :class:`SemanticHead` (Panoptic-FPN semantic branch, 128 channels, output at 1/4 scale and
  upsampled) whose softmax :func:`entropy_map` feeds the residual
  :class:`EntropyDiscriminator` (Table 2).

:class:`PDAMDetector` runs the detector's own modules (``transform``, ``backbone``, ``rpn``,
``roi_heads``) and returns, per domain, the Mask R-CNN losses (source) plus everything the
discriminators need (:class:`DomainPass`). In ``eval()`` it *is* the Mask R-CNN: ``forward``
returns torchvision detections, so inference needs nothing else.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn
from torchvision.models.detection import MaskRCNN

from monai_uda.networks.gradient_reversal import GradientReversal
from monai_uda.networks.mask_rcnn import build_mask_rcnn

__all__ = [
    "FPN_LEVELS",
    "ImageLevelDiscriminator",
    "InstanceLevelDiscriminator",
    "SemanticHead",
    "EntropyDiscriminator",
    "entropy_map",
    "DomainPass",
    "PDAMDetector",
]

#: torchvision's names of the FPN outputs P2-P5 (``"pool"`` is P6, unused by the branches)
FPN_LEVELS = ("0", "1", "2", "3")


def _norm(norm: str | None, channels: int) -> tuple | None:
    if norm is None:
        return None
    if norm == "group":
        return ("group", {"num_groups": min(32, channels)})
    return norm


def _conv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, norm: str | None = "group", act: bool = True
) -> nn.Module:
    """``kernel_size`` conv (same padding), optional norm, ReLU."""
    return Convolution(
        2,
        in_channels,
        out_channels,
        strides=stride,
        kernel_size=kernel_size,
        act="relu" if act else None,
        norm=_norm(norm, out_channels),
        bias=norm is None,
        adn_ordering="NA",
    )


class ImageLevelDiscriminator(nn.Module):
    """Image-level domain discriminator (PDAM Table 1) on summed, pooled FPN levels.

    ``sum_l avgpool_8x8(P_l)`` -> 3x3 convs (256, 512, 512; ReLU) -> 1x1 conv to one logit per
    position ("source" = 1).

    Args:
        in_channels: FPN width (256).
        channels: widths of the 3x3 convolutions.
        pool_size: side of the pooled grid (8).
        levels: FPN levels summed (P2-P5).
        norm: ``"group"`` or ``None`` after each conv.
    """

    def __init__(
        self,
        in_channels: int = 256,
        channels: Sequence[int] = (256, 512, 512),
        pool_size: int = 8,
        levels: Sequence[str] = FPN_LEVELS,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        self.pool_size = pool_size
        self.levels = tuple(levels)
        widths = [in_channels, *channels]
        self.convs = nn.Sequential(*[_conv(a, b, 3, norm=norm) for a, b in zip(widths[:-1], widths[1:])])
        self.classifier = nn.Conv2d(widths[-1], 1, 1)

    def pool(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """``sum_l avgpool(P_l)``: ``(B, 256, pool_size, pool_size)``."""
        return torch.stack([F.adaptive_avg_pool2d(features[k], self.pool_size) for k in self.levels]).sum(0)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 1, pool_size, pool_size)`` of the pooled features (see :meth:`pool`)."""
        return self.classifier(self.convs(pooled))


class InstanceLevelDiscriminator(nn.Module):
    """Instance-level domain discriminator: FC 1024-1024-256-1 with ReLU and dropout 0.5.

    Args:
        in_features: instance feature size (1024 = 2x2x256 mask features = box feature size).
        hidden: widths of the two hidden layers.
        dropout: dropout after each hidden layer.
    """

    def __init__(self, in_features: int = 1024, hidden: Sequence[int] = (1024, 256), dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_features)`` -> ``(N, 1)`` logits."""
        return self.model(x)


class SemanticHead(nn.Module):
    """Panoptic-FPN semantic branch: P2-P5 brought to 1/4 scale, summed, 1x1 conv, upsampled.

    P_(k+2) goes through ``k`` (at least one) 3x3 conv + GroupNorm + ReLU stages, each followed
    by 2x upsampling except for P2 (Kirillov et al., 2019); the sum is classified per pixel
    and upsampled 4x to the input size.

    Args:
        in_channels: FPN width (256).
        channels: width of the branch (128).
        num_classes: semantic classes (2: background, nucleus).
        levels: FPN level names from stride 4 upwards.
        norm: ``"group"`` or ``None``.
    """

    def __init__(
        self,
        in_channels: int = 256,
        channels: int = 128,
        num_classes: int = 2,
        levels: Sequence[str] = FPN_LEVELS,
        norm: str | None = "group",
    ) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.branches = nn.ModuleList(
            nn.ModuleList(
                [_conv(in_channels if i == 0 else channels, channels, 3, norm=norm) for i in range(max(k, 1))]
            )
            for k in range(len(self.levels))
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor], output_size: Sequence[int]) -> torch.Tensor:
        """Semantic logits ``(B, num_classes, *output_size)`` (the batched, padded image size)."""
        base = features[self.levels[0]].shape[-2:]
        total = None
        for k, (level, convs) in enumerate(zip(self.levels, self.branches)):
            x = features[level]
            for conv in convs:
                x = conv(x)
                if k > 0:
                    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = x if x.shape[-2:] == base else F.interpolate(x, size=base, mode="bilinear", align_corners=False)
            total = x if total is None else total + x
        return F.interpolate(self.classifier(total), size=tuple(output_size), mode="bilinear", align_corners=False)


def entropy_map(logits: torch.Tensor) -> torch.Tensor:
    """Per-class weighted self-information ``-p_c log2(p_c) / log2(C)`` of the softmax (ADVENT).

    Returns a non-negative map with the shape of ``logits``, largest where the prediction is uncertain.
    """
    probs = F.softmax(logits, dim=1)
    return -probs * torch.log2(probs.clamp_min(1e-30)) / math.log2(logits.shape[1])


class _ResBlock(nn.Module):
    """``relu(x + conv(relu(conv(x))))`` with 3x3 convolutions."""

    def __init__(self, channels: int, norm: str | None) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, 3, norm=norm)
        self.conv2 = _conv(channels, channels, 3, norm=norm, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(self.conv1(x)))


class EntropyDiscriminator(nn.Module):
    """Residual semantic-level discriminator on the entropy map (PDAM Table 2).

    Four stages of a strided conv (7x7/2 to 64, then 5x5/2 to 128, 256, 512; ReLU) and a
    residual block, then a 1x1 conv to one logit per position.

    Args:
        in_channels: channels of the entropy map (the number of semantic classes).
        channels: widths of the four stages.
        norm: ``"group"`` or ``None``.
    """

    def __init__(
        self, in_channels: int = 2, channels: Sequence[int] = (64, 128, 256, 512), norm: str | None = None
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for i, c in enumerate(channels):
            layers += [_conv(width, c, 7 if i == 0 else 5, stride=2, norm=norm), _ResBlock(c, norm)]
            width = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(width, 1, 1)

    def forward(self, entropy: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` entropy map -> ``(B, 1, H/16, W/16)`` logits."""
        return self.classifier(self.features(entropy))


@dataclass
class DomainPass:
    """What one forward pass of :class:`PDAMDetector` over one domain's images produces.

    Attributes:
        losses: Mask R-CNN losses (source pass with targets; empty for the target domain).
        features: FPN features ``{"0": P2, ..., "pool": P6}``.
        image_sizes: per-image sizes after the detector's resize (before padding).
        padded_size: size of the batched (resized, padded) image tensor.
        targets: the targets after the detector's resize (source pass), else ``None``.
        semantic_logits: ``(B, 2, H, W)`` semantic branch output (``None`` without the branch).
        instance_features: ``(N, 1024)`` RoI features of the top proposals (``None`` when off).
    """

    losses: dict[str, torch.Tensor]
    features: OrderedDict[str, torch.Tensor]
    image_sizes: list[tuple[int, int]]
    padded_size: tuple[int, int]
    targets: list[dict[str, torch.Tensor]] | None = None
    semantic_logits: torch.Tensor | None = None
    instance_features: torch.Tensor | None = None


def _require(module: nn.Module | None, name: str) -> None:
    if module is None:
        raise RuntimeError(f"this PDAMDetector was built without the {name}")


@contextmanager
def _proposals_only(module: nn.Module) -> Iterator[None]:
    """Run an RPN in inference mode (no targets, test-time top-n) without touching sub-modules."""
    training = module.training
    module.training = False
    try:
        yield
    finally:
        module.training = training


class PDAMDetector(nn.Module):
    """Mask R-CNN plus PDAM's semantic branch and image/semantic/instance discriminators.

    Args:
        detector: a class-agnostic torchvision Mask R-CNN; built with
            :func:`~monai_uda.networks.mask_rcnn.build_mask_rcnn` (``**detector_kwargs``) if ``None``.
        semantic: build the semantic branch and its entropy discriminator ("w/o SEM": False).
        image_level: build the image-level discriminator.
        instance_level: build the instance-level discriminator.
        instance_proposals: top-scoring RPN proposals per image whose RoI features enter the
            instance-level discriminator (both domains alike).
        discriminator_norm: ``"group"`` or ``None`` inside the discriminators (paper: none).
        detector_kwargs: forwarded to :func:`build_mask_rcnn` when ``detector`` is None.
    """

    def __init__(
        self,
        detector: MaskRCNN | None = None,
        semantic: bool = True,
        image_level: bool = True,
        instance_level: bool = True,
        instance_proposals: int = 64,
        discriminator_norm: str | None = None,
        **detector_kwargs: Any,
    ) -> None:
        super().__init__()
        self.detector = detector if detector is not None else build_mask_rcnn(**detector_kwargs)
        width = self.detector.backbone.out_channels
        levels = tuple(self.detector.roi_heads.box_roi_pool.featmap_names)  # P2-P5, or P2-P4 of a narrow detector
        self.grl = GradientReversal()
        self.image_discriminator = (
            ImageLevelDiscriminator(width, levels=levels, norm=discriminator_norm) if image_level else None
        )
        self.semantic_head = SemanticHead(width, levels=levels) if semantic else None
        self.entropy_discriminator = EntropyDiscriminator(2, norm=discriminator_norm) if semantic else None
        self.instance_proposals = int(instance_proposals)
        self.instance_discriminator = None
        if instance_level:
            box_dim = self.detector.roi_heads.box_head.fc7.out_features
            if box_dim != 4 * width:
                raise ValueError(f"instance features need a box feature of 2x2x{width} = {4 * width}, got {box_dim}")
            self.instance_discriminator = InstanceLevelDiscriminator(box_dim)

    def set_grl_alpha(self, alpha: float) -> None:
        """Strength of the gradient reversal in front of all discriminators (1 in the paper; see ``PDAMStage``)."""
        self.grl.set_alpha(alpha)

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        """Training: :meth:`run_domain`; inference (``eval()``): torchvision Mask R-CNN detections."""
        if self.training:
            return self.run_domain(images, targets)
        return self.detector(images)

    def instance_features(
        self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> torch.Tensor:
        """Box-head feature + 2x2-pooled mask-branch feature of each RoI, ``(N, 1024)``."""
        heads = self.detector.roi_heads
        box = heads.box_head(heads.box_roi_pool(features, proposals, image_sizes))
        mask = heads.mask_head(heads.mask_roi_pool(features, proposals, image_sizes))
        return box + F.adaptive_avg_pool2d(mask, 2).flatten(1)

    def run_domain(
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
    ) -> DomainPass:
        """One domain's pass: Mask R-CNN losses (when ``targets`` are given) and branch outputs.

        Args:
            images: list of ``(C, H, W)`` images in [0, 1].
            targets: torchvision targets (``boxes``, ``labels``, ``masks``) for the labelled
                source domain; ``None`` for the target domain (RPN proposals only, no losses).
        """
        det = self.detector
        batched, targets = det.transform(images, targets)
        features = det.backbone(batched.tensors)
        sizes = list(batched.image_sizes)
        losses: dict[str, torch.Tensor] = {}
        if targets is not None:
            proposals, rpn_losses = det.rpn(batched, features, targets)
            _, head_losses = det.roi_heads(features, proposals, sizes, targets)
            losses = {**rpn_losses, **head_losses}
        else:
            with _proposals_only(det.rpn):
                proposals, _ = det.rpn(batched, features)
        out = DomainPass(losses, features, sizes, tuple(batched.tensors.shape[-2:]), targets)
        if self.semantic_head is not None:
            out.semantic_logits = self.semantic_head(features, out.padded_size)
        if self.instance_discriminator is not None:
            top = [p[: self.instance_proposals] for p in proposals]
            out.instance_features = self.instance_features(features, top, sizes)
        return out

    def semantic_labels(self, domain: DomainPass, ignore_index: int = -100) -> torch.Tensor:
        """``(B, H, W)`` int64 labels (1 = any instance) at the padded size; padding is ignored."""
        if domain.targets is None:
            raise ValueError("semantic labels need the source targets")
        height, width = domain.padded_size
        device = domain.features[FPN_LEVELS[0]].device
        labels = torch.full((len(domain.targets), height, width), ignore_index, dtype=torch.int64, device=device)
        for i, (target, (h, w)) in enumerate(zip(domain.targets, domain.image_sizes)):
            labels[i, :h, :w] = target["masks"].any(0).long()  # no instances: all background
        return labels

    def image_logits(self, domain: DomainPass) -> torch.Tensor:
        """Image-level discriminator logits through the gradient reversal."""
        _require(self.image_discriminator, "image-level discriminator")
        return self.image_discriminator(self.grl(self.image_discriminator.pool(domain.features)))

    def entropy_logits(self, domain: DomainPass) -> torch.Tensor:
        """Semantic-level discriminator logits of the (reversed) entropy map."""
        _require(self.entropy_discriminator, "semantic branch")
        return self.entropy_discriminator(self.grl(entropy_map(domain.semantic_logits)))

    def instance_logits(self, domain: DomainPass) -> torch.Tensor:
        """Instance-level discriminator logits ``(N, 1)`` of the (reversed) RoI features."""
        _require(self.instance_discriminator, "instance-level discriminator")
        return self.instance_discriminator(self.grl(domain.instance_features))
