"""A class-agnostic torchvision Mask R-CNN for nuclei, built without any download.

Shared by CyC-PDAM (Liu et al., CVPR 2020) and DARCNN (Hsu et al., CVPR 2021). The network is
torchvision's :class:`~torchvision.models.detection.MaskRCNN` on a ResNet-FPN backbone; this
module only chooses the nuclei-friendly defaults (small anchors, 256-pixel training patches,
GroupNorm for batch size 1, any number of input channels) and loads optional user weights.

:func:`inference_detector` turns a bundle's trained detector (a Mask R-CNN, CyC-PDAM's
:class:`~monai_uda.networks.pdam.PDAMDetector` or one branch of DARCNN's
:class:`~monai_uda.networks.domain_separation.DomainSeparationMaskRCNN`) into an eval-only module
that ``torch.jit.script`` compiles: ``images -> detections`` as torchvision returns them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import misc as misc_nn_ops

from monai_uda.errors import UDAInputError

__all__ = [
    "BACKBONES",
    "NORMS",
    "DETECTOR_WIDTHS",
    "build_mask_rcnn",
    "load_mask_rcnn_weights",
    "DetectorInference",
    "FusedDetectorInference",
    "inference_detector",
]

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
NORMS = ("group", "batch", "frozen_batch")
#: prediction layers whose shape depends on ``num_classes``: skipped when a checkpoint (e.g. COCO) disagrees
_CLASS_DEPENDENT = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
#: named detector widths (``widths`` of :func:`build_mask_rcnn`, ``detector_widths`` of the bundle configs).
#: ``torchvision``: the papers' Mask R-CNN - every ResNet stage, a 256-channel FPN, a 1024-wide box MLP and a
#: 256-channel mask head. ``small``: for CPUs and for shipping weights - ResNet stages 1-3 only (strides 4-16;
#: stage 4's stride 32 is wider than most nuclei and holds three quarters of a ResNet-18's weights), a
#: 128-channel FPN, a 512-wide box MLP (4 x 128, the width PDAM's instance discriminator needs) and a
#: 128-channel mask head.
DETECTOR_WIDTHS: dict[str, dict[str, Any]] = {
    "torchvision": {"returned_layers": [1, 2, 3, 4], "fpn_channels": 256, "representation_size": 1024,
                    "mask_channels": 256},
    "small": {"returned_layers": [1, 2, 3], "fpn_channels": 128, "representation_size": 512, "mask_channels": 128},
}
_DEFAULT_ANCHORS = (8, 16, 32, 64, 128)


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    if norm == "group":
        return partial(nn.GroupNorm, 32)
    if norm == "batch":
        return nn.BatchNorm2d
    return misc_nn_ops.FrozenBatchNorm2d


def _check_settings(
    backbone: str, norm: str, num_classes: int, in_channels: int, anchor_sizes: Sequence[int], shape: Mapping[str, Any]
) -> None:
    """Refuse an unknown backbone/norm, a bad channel or class count, bad widths or anchors not one per FPN level."""
    if backbone not in BACKBONES:
        raise UDAInputError(f"unknown Mask R-CNN backbone {backbone!r}; choose one of {BACKBONES}")
    if norm not in NORMS:
        raise UDAInputError(f"unknown Mask R-CNN norm {norm!r}; choose one of {NORMS}")
    if in_channels < 1 or num_classes < 2:
        raise UDAInputError(f"need in_channels >= 1 and num_classes >= 2, got {in_channels} and {num_classes}")
    layers = list(shape["returned_layers"])
    if not layers or layers != sorted(set(layers)) or layers[0] < 1 or layers[-1] > 4:
        raise UDAInputError(f"returned_layers must be increasing ResNet stages from 1-4, got {layers}")
    for key in ("fpn_channels", "mask_channels"):
        if int(shape[key]) < 32 or int(shape[key]) % 32:
            raise UDAInputError(f"{key} must be a multiple of 32 (GroupNorm's groups), got {shape[key]}")
    if int(shape["representation_size"]) < 1:
        raise UDAInputError(f"representation_size must be positive, got {shape['representation_size']}")
    if len(anchor_sizes) != len(layers) + 1:
        raise UDAInputError(
            f"anchor_sizes needs one size per FPN level ({len(layers) + 1}: returned_layers {layers} and a "
            f"pooled level), got {tuple(anchor_sizes)}"
        )


def _normalisation(
    in_channels: int, image_mean: Sequence[float] | None, image_std: Sequence[float] | None
) -> tuple[Sequence[float], Sequence[float]]:
    """The per-channel mean/std: ImageNet's for 3 channels, 0.5/0.25 otherwise, unless given."""
    if image_mean is None:
        image_mean = _IMAGENET_MEAN if in_channels == 3 else (0.5,) * in_channels
    if image_std is None:
        image_std = _IMAGENET_STD if in_channels == 3 else (0.25,) * in_channels
    if len(image_mean) != in_channels or len(image_std) != in_channels:
        raise UDAInputError(
            f"image_mean/image_std need {in_channels} values, got {len(image_mean)} and {len(image_std)}"
        )
    return image_mean, image_std


def _widths(widths: str | Mapping[str, Any]) -> dict[str, Any]:
    """The four widths of a :data:`DETECTOR_WIDTHS` name or of a partial mapping (torchvision's for the rest)."""
    if isinstance(widths, str):
        if widths not in DETECTOR_WIDTHS:
            raise UDAInputError(f"unknown detector widths {widths!r}; choose one of {', '.join(DETECTOR_WIDTHS)}")
        return dict(DETECTOR_WIDTHS[widths])
    unknown = set(widths) - set(DETECTOR_WIDTHS["torchvision"])
    if unknown:
        raise UDAInputError(
            f"unknown detector width key(s) {sorted(unknown)}; known: {', '.join(DETECTOR_WIDTHS['torchvision'])}"
        )
    return {**DETECTOR_WIDTHS["torchvision"], **widths}


def _resnet_fpn(
    backbone: str, norm: str, in_channels: int, trainable_layers: int, returned_layers: Sequence[int], fpn_channels: int
) -> tuple[nn.Module, Callable[[int], nn.Module] | None]:
    """The ResNet-FPN feature extractor (random weights) and the normalisation of the FPN and mask head."""
    norm_layer = _norm_layer(norm)
    body = getattr(resnet, backbone)(weights=None, norm_layer=norm_layer)
    if in_channels != 3:
        body.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    fpn_norm = None if norm == "frozen_batch" else norm_layer
    layers = [int(i) for i in returned_layers]
    features = _resnet_fpn_extractor(body, trainable_layers, layers, norm_layer=fpn_norm)  # freezes the stages
    if fpn_channels != features.out_channels:  # torchvision fixes 256: the same extractor, narrower FPN
        stage_channels = [body.inplanes // 8 * 2 ** (i - 1) for i in layers]
        features = BackboneWithFPN(
            body, {f"layer{k}": str(v) for v, k in enumerate(layers)}, stage_channels, fpn_channels,
            norm_layer=fpn_norm,
        )
    return features, fpn_norm


def _heads(
    num_classes: int, levels: int, fpn_channels: int, representation_size: int, mask_channels: int,
    fpn_norm: Callable[[int], nn.Module] | None,
) -> dict[str, nn.Module]:
    """RoI pooling, box and mask heads for the given widths: only those that differ from torchvision's
    own (so the torchvision shape builds exactly as before, same random draws)."""
    mask_head = MaskRCNNHeads(fpn_channels, [mask_channels] * 4, 1, norm_layer=fpn_norm)
    heads: dict[str, nn.Module] = {"mask_head": mask_head}
    if levels != 4:  # torchvision pools levels "0"-"3"
        names = [str(i) for i in range(levels)]
        heads["box_roi_pool"] = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)
        heads["mask_roi_pool"] = MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2)
    own = DETECTOR_WIDTHS["torchvision"]
    if representation_size != own["representation_size"]:
        heads["box_head"] = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
    if (representation_size, mask_channels) != (own["representation_size"], own["mask_channels"]):
        # torchvision takes both predictors or neither (then it builds 1024- and 256-wide ones itself)
        heads["box_predictor"] = FastRCNNPredictor(representation_size, num_classes)
        heads["mask_predictor"] = MaskRCNNPredictor(mask_channels, mask_channels, num_classes)
    return heads


def build_mask_rcnn(
    backbone: str = "resnet50",
    norm: str = "group",
    num_classes: int = 2,
    in_channels: int = 3,
    weights_path: str | Path | None = None,
    min_size: int = 256,
    max_size: int = 1024,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    trainable_layers: int = 5,
    anchor_sizes: Sequence[int] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    widths: str | Mapping[str, Any] = "torchvision",
    extra_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> MaskRCNN:
    """Build a ResNet-FPN Mask R-CNN from scratch (no pretrained weights are ever downloaded).

    Args:
        backbone: ``"resnet50"`` or ``"resnet101"`` (the papers'), or ``"resnet18"``/``"resnet34"``
            (BasicBlock ResNets, same FPN: faster steps, for short CPU budgets).
        norm: normalisation of the backbone, FPN and mask head: ``"group"`` (GroupNorm, 32 groups;
            trains with one image per iteration as in CyC-PDAM), ``"batch"`` or ``"frozen_batch"``
            (frozen statistics; only sensible with ``weights_path``).
        num_classes: classes including background; 2 = class-agnostic nuclei.
        in_channels: image channels (1 for grey/fluorescence, 3 for RGB).
        weights_path: optional user checkpoint (a full Mask R-CNN ``state_dict`` or ResNet
            classification weights for the backbone), see :func:`load_mask_rcnn_weights`.
        min_size: shorter side the detector's transform resizes images to.
        max_size: longer-side cap of that resize.
        image_mean: per-channel normalisation mean (ImageNet's for 3 channels, 0.5 otherwise).
        image_std: per-channel normalisation std (ImageNet's for 3 channels, 0.25 otherwise).
        trainable_layers: ResNet stages left trainable, 0-5 (5 = all; from scratch all must train).
        anchor_sizes: one anchor size per FPN level; default 8, 16, 32, ... px from the finest level
            (8-128 for P2-P6; nuclei are 8-64 px at 40x).
        aspect_ratios: anchor aspect ratios shared by all levels.
        widths: a name of :data:`DETECTOR_WIDTHS` (``"torchvision"``, ``"small"``) or a mapping with any of
            ``returned_layers`` (ResNet stages 1-4 feeding the FPN; later stages are not built),
            ``fpn_channels``, ``representation_size`` (box MLP) and ``mask_channels`` (the rest torchvision's).
        kwargs: forwarded to :class:`torchvision.models.detection.MaskRCNN`
            (e.g. ``rpn_post_nms_top_n_train``, ``box_detections_per_img``).
        extra_kwargs: more of those as one mapping (a config's ``detector_kwargs``).

    Raises:
        UDAInputError: unknown backbone/norm, bad channel count or unusable weights file.
    """
    kwargs.update(extra_kwargs or {})
    shape = _widths(widths)
    levels = len(shape["returned_layers"]) + 1  # the stages' levels and a max-pooled one
    anchor_sizes = _DEFAULT_ANCHORS[:levels] if anchor_sizes is None else anchor_sizes
    _check_settings(backbone, norm, num_classes, in_channels, anchor_sizes, shape)
    features, fpn_norm = _resnet_fpn(
        backbone, norm, in_channels, trainable_layers, shape["returned_layers"], int(shape["fpn_channels"])
    )
    image_mean, image_std = _normalisation(in_channels, image_mean, image_std)
    kwargs.setdefault(
        "rpn_anchor_generator",
        AnchorGenerator(tuple((int(s),) for s in anchor_sizes), (tuple(float(r) for r in aspect_ratios),) * levels),
    )
    heads = _heads(
        num_classes, levels - 1, features.out_channels, int(shape["representation_size"]),
        int(shape["mask_channels"]), fpn_norm,
    )
    for key, head in heads.items():
        kwargs.setdefault(key, head)
    predictors = "box_predictor" in kwargs or "mask_predictor" in kwargs  # torchvision: then no num_classes
    model = MaskRCNN(
        features, num_classes=None if predictors else num_classes, min_size=min_size, max_size=max_size,
        image_mean=list(image_mean), image_std=list(image_std), **kwargs,
    )
    if weights_path is not None:
        load_mask_rcnn_weights(model, weights_path)
    return model


def _unwrap(state: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """Accept a bare ``state_dict`` or the common ``{"model"|"state_dict"|"detector": ...}`` wrappers."""
    for key in ("model", "state_dict", "detector"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UDAInputError("not a state_dict of tensors", path)
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_mask_rcnn_weights(model: MaskRCNN, weights_path: str | Path) -> list[str]:
    """Load user weights into ``model`` (``torch.load(weights_only=True)``, never a download).

    Three layouts are recognised: a full Mask R-CNN ``state_dict`` (keys ``backbone.*``,
    ``rpn.*``, ``roi_heads.*``; class-dependent predictor layers whose shape differs, e.g. a
    91-class COCO model, are skipped), a CyC-PDAM model (its ``detector.*`` Mask R-CNN; the
    semantic branch and discriminators are dropped) and ResNet classification weights (keys
    ``conv1.*``, ``layer1.*``, ...; loaded into ``backbone.body``, the ``fc`` layer is dropped).

    Returns:
        the model keys that were *not* loaded (trained from scratch).

    Raises:
        UDAInputError: missing/unreadable file, unknown keys or shape mismatches.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise UDAInputError("Mask R-CNN weights file does not exist", path)
    try:
        state = _unwrap(torch.load(path, map_location="cpu", weights_only=True), path)
    except UDAInputError:
        raise
    except Exception as exc:
        raise UDAInputError(f"cannot read Mask R-CNN weights ({type(exc).__name__}: {exc})", path) from exc
    if any(k.startswith("detector.backbone.") for k in state):  # PDAMDetector: the Mask R-CNN inside it
        state = {k.removeprefix("detector."): v for k, v in state.items() if k.startswith("detector.")}
    if not any(k.startswith(("backbone.", "rpn.", "roi_heads.")) for k in state):
        state = {f"backbone.body.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    own = model.state_dict()
    loadable: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, value in state.items():
        if key.endswith("num_batches_tracked") and key not in own:
            continue  # FrozenBatchNorm2d / GroupNorm keep no counter
        if key not in own:
            problems.append(f"unexpected key {key}")
        elif own[key].shape != value.shape:
            if not key.startswith(_CLASS_DEPENDENT):
                problems.append(f"{key} has shape {tuple(value.shape)}, model expects {tuple(own[key].shape)}")
        else:
            loadable[key] = value
    if problems or not loadable:
        shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        raise UDAInputError(
            f"weights do not fit this Mask R-CNN (backbone/norm/in_channels?): {shown or 'no matching keys'}", path
        )
    model.load_state_dict(loadable, strict=False)
    return sorted(set(own) - set(loadable))


def _keep_own_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook: drop the checkpoint's training-only entries (discriminators,
    the other domain's branch, L_sim projection) so that a strict load checks only missing keys."""
    own = {prefix + key for key in module.state_dict()}
    for key in [k for k in state_dict if k.startswith(prefix) and k not in own]:
        del state_dict[key]


class DetectorInference(nn.Module):
    """Eval-only Mask R-CNN: ``forward(images) -> detections``, scriptable (``torch.jit.script``).

    The detector sits under ``detector``, so the module loads a PDAM checkpoint's ``detector``
    entry as it is (the discriminators and semantic branch are skipped); it runs torchvision's
    inference path (resize/normalise, backbone, RPN, RoI heads, masks pasted at the input size).

    Args:
        detector: a torchvision :class:`~torchvision.models.detection.MaskRCNN`.
    """

    #: loads a training network's weights, skipping the parts inference does not run
    skips_training_only_keys = True

    def __init__(self, detector: MaskRCNN) -> None:
        super().__init__()
        self.detector = detector
        self._register_load_state_dict_pre_hook(_keep_own_keys, with_module=True)
        self.eval()

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """``(C, H, W)`` images in [0, 1] -> per image ``boxes``, ``labels``, ``scores``, ``masks (N, 1, H, W)``."""
        sizes: list[tuple[int, int]] = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batched, _ = self.detector.transform(images)
        features = self.detector.backbone(batched.tensors)
        proposals, _ = self.detector.rpn(batched, features)
        detections, _ = self.detector.roi_heads(features, proposals, batched.image_sizes)
        return self.detector.transform.postprocess(detections, batched.image_sizes, sizes)


class FusedDetectorInference(nn.Module):
    """Eval-only DARCNN branch (shared + private encoder, shared RPN, the branch's head), scriptable.

    Same sub-module names as :class:`~monai_uda.networks.domain_separation.DomainSeparationMaskRCNN`
    (``shared_encoder``, ``private_encoders.<domain>``, ``rpn``, ``heads.<domain>``), so it loads
    that network's checkpoint directly (the other branch and ``sim_projection`` are skipped).
    Proposals come from the shared features; the head sees their mean with the private ones.

    Args:
        network: a ``DomainSeparationMaskRCNN`` (or any module with those sub-modules).
        domain: the branch to keep (DARCNN infers with ``"target"``).
    """

    #: loads a training network's weights, skipping the parts inference does not run
    skips_training_only_keys = True

    def __init__(self, network: nn.Module, domain: str = "target") -> None:
        super().__init__()
        self.transform = network.transform
        self.shared_encoder = network.shared_encoder
        self.private_encoders = nn.ModuleDict({domain: network.private_encoders[domain]})
        self.rpn = network.rpn
        self.heads = nn.ModuleDict({domain: network.heads[domain]})
        self._register_load_state_dict_pre_hook(_keep_own_keys, with_module=True)
        self.eval()

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """``(C, H, W)`` images in [0, 1] -> per image ``boxes``, ``labels``, ``scores``, ``masks (N, 1, H, W)``."""
        sizes: list[tuple[int, int]] = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batched, _ = self.transform(images)
        shared = self.shared_encoder(batched.tensors)
        proposals, _ = self.rpn(batched, shared)
        detections: list[dict[str, torch.Tensor]] = []
        for private_encoder, head in zip(self.private_encoders.values(), self.heads.values()):
            private = private_encoder(batched.tensors)
            fused: dict[str, torch.Tensor] = {}
            for level, feature in shared.items():
                fused[level] = 0.5 * (feature + private[level])
            detections, _ = head(fused, proposals, batched.image_sizes)
        return self.transform.postprocess(detections, batched.image_sizes, sizes)


def inference_detector(network: nn.Module, domain: str = "target") -> nn.Module:
    """The scriptable eval-only detector of a bundle's ``network_def`` (see the module docstring).

    Args:
        network: a torchvision ``MaskRCNN``, a module holding one as ``detector`` (PDAM), or a
            domain-separation network with ``shared_encoder``/``private_encoders``/``heads`` (DARCNN).
        domain: DARCNN only: the branch to keep.

    Raises:
        UDAInputError: ``network`` is none of those.
    """
    if isinstance(network, MaskRCNN):
        return DetectorInference(network)
    if isinstance(getattr(network, "detector", None), MaskRCNN):
        return DetectorInference(network.detector)
    if all(hasattr(network, name) for name in ("shared_encoder", "private_encoders", "heads")):
        return FusedDetectorInference(network, domain)
    raise UDAInputError(f"{type(network).__name__} is not a Mask R-CNN detector")
