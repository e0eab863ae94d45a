"""DARCNN's domain separation Mask R-CNN (Hsu et al., CVPR 2021, sec. 3.1-3.2).

A shared encoder E_c and private encoders E_p^s, E_p^t (ResNet-FPN), a region proposal
network on the shared features, and domain-specific Mask R-CNN heads M^s, M^t fed by the mean
of shared and private features. All pieces are torchvision's, taken from one detector built
by :func:`monai_uda.networks.mask_rcnn.build_mask_rcnn` (so optional user weights, e.g. a
COCO Mask R-CNN, initialise every branch alike, as in the paper); nothing is downloaded.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import orthogonal
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.image_list import ImageList

from monai_uda.errors import UDAInputError
from monai_uda.networks.mask_rcnn import build_mask_rcnn

__all__ = ["DOMAINS", "L_TARGET_FEATURES", "PROJECTION_TRAINING", "DomainSeparationMaskRCNN"]

DOMAINS = ("source", "target")
#: how the L_sim projection P is trained: with eq 1 like every other weight (paper) or against it
PROJECTION_TRAINING = ("joint", "adversarial")
#: features L_target (eq 4) reads in the target head's proposals: h_p^t (paper) or the heads' input
L_TARGET_FEATURES = ("private", "fused")


@contextmanager
def _inference_flag(*modules: nn.Module) -> Iterator[None]:
    """Run torchvision's RPN/RoI heads down their inference path (no targets) during training.

    Only the modules' own ``training`` flags change (children such as normalisation layers
    keep their mode); the flags are restored afterwards.
    """
    saved = [m.training for m in modules]
    for m in modules:
        m.training = False
    try:
        yield
    finally:
        for m, flag in zip(modules, saved):
            m.training = flag


class DomainSeparationMaskRCNN(nn.Module):
    """Mask R-CNN with shared and private encoders and one head per domain (DARCNN).

    Sub-modules: ``transform`` (torchvision resize/normalise), ``shared_encoder`` (E_c),
    ``private_encoders[domain]`` (E_p^s, E_p^t), ``rpn`` (shared), ``heads[domain]`` (M^s, M^t,
    torchvision ``RoIHeads`` with box and mask branches) and ``sim_projection`` (P): the 1x1
    convolution applied to shared features before L_sim (eq 2). ``domains`` may be only
    ``("target",)`` for an inference or teacher copy.

    P follows ``projection_training``. ``"joint"`` (the paper): a plain 1x1 convolution with
    ``projection_dim`` filters (paper: one), trained with eq 1 like every other weight; it has no
    bias, which would cancel in the MMD's differences anyway. ``"adversarial"`` (a variant): a
    linear map with orthonormal rows, which :class:`~monai_uda.methods.darcnn.DARCNNStage1` trains
    to *maximise* L_sim (a learned test kernel as in MMD-GAN); the constraint keeps it from
    exploding, as a minimised plain projection may instead shrink towards zero.

    Calling the module follows torchvision: ``model(images, targets, domain)`` returns the
    Mask R-CNN losses of that domain's branch in training mode, detections in eval mode
    (``domain`` defaults to ``"target"``, the branch DARCNN infers with).

    Args:
        detector: a torchvision Mask R-CNN whose pieces become the shared branch and the copies;
            built with ``mask_rcnn_kwargs`` by :func:`~monai_uda.networks.mask_rcnn.build_mask_rcnn` if None.
        projection_dim: filters of ``sim_projection`` (paper 1; at most the feature channels).
        projection_training: ``"joint"`` or ``"adversarial"`` (see above).
        mmd_grid: shared features are average-pooled to ``mmd_grid x mmd_grid`` positions per
            image and level before projection, the samples of L_sim.
        domains: branches to create.
        mask_rcnn_kwargs: forwarded to ``build_mask_rcnn`` (``backbone``, ``norm``,
            ``in_channels``, ``weights_path``, ``min_size``, ``box_detections_per_img``, ...).
    """

    def __init__(
        self,
        detector: MaskRCNN | None = None,
        projection_dim: int = 1,
        projection_training: str = "joint",
        mmd_grid: int = 8,
        domains: Sequence[str] = DOMAINS,
        **mask_rcnn_kwargs: Any,
    ) -> None:
        super().__init__()
        if not domains or any(d not in DOMAINS for d in domains):
            raise ValueError(f"domains must be a non-empty subset of {DOMAINS}, got {tuple(domains)}")
        if projection_training not in PROJECTION_TRAINING:
            raise UDAInputError(
                f"projection_training must be one of {PROJECTION_TRAINING}, got {projection_training!r}"
            )
        detector = detector if detector is not None else build_mask_rcnn(**mask_rcnn_kwargs)
        self.domains = tuple(domains)
        self.mmd_grid = mmd_grid
        self.transform = detector.transform
        self.shared_encoder = detector.backbone
        self.rpn = detector.rpn
        self.private_encoders = nn.ModuleDict({d: copy.deepcopy(detector.backbone) for d in self.domains})
        self.heads = nn.ModuleDict({d: copy.deepcopy(detector.roi_heads) for d in self.domains})
        channels = detector.backbone.out_channels
        self.projection_training = projection_training
        dim = min(projection_dim, channels)
        self.sim_projection: nn.Module = (
            nn.Conv2d(channels, dim, kernel_size=1, bias=False)  # eq 2's 1x1 convolution
            if projection_training == "joint"
            else orthogonal(nn.Linear(channels, dim, bias=False))
        )

    # ------------------------------------------------------------------ building blocks
    def preprocess(
        self, images: Sequence[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, torch.Tensor]] | None]:
        """torchvision's resize + normalise + batch (targets are resized alike)."""
        return self.transform(list(images), targets)

    def encode(self, images: ImageList, domain: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Shared (E_c) and ``domain``-private (E_p) FPN features of preprocessed images."""
        return self.shared_encoder(images.tensors), self.private_encoders[domain](images.tensors)

    @staticmethod
    def fuse(shared: Mapping[str, torch.Tensor], private: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Input of the domain-specific heads: the mean of shared and private features per level."""
        return OrderedDict((k, 0.5 * (shared[k] + private[k])) for k in shared)

    def propose(
        self,
        images: ImageList,
        shared: Mapping[str, torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Shared RPN proposals on the shared features; RPN losses when training (``targets`` needed)."""
        return self.rpn(images, shared, targets)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """L_sim samples of one ``(B, C, H, W)`` level: pooled to the grid, then projected, ``(N, D)``.

        Average pooling and the 1x1 projection are both linear, so pooling first gives the same
        samples as projecting the full map first, for less work.
        """
        pooled = F.adaptive_avg_pool2d(features, self.mmd_grid)
        if isinstance(self.sim_projection, nn.Conv2d):
            pooled = self.sim_projection(pooled)
            return pooled.flatten(2).transpose(1, 2).reshape(-1, pooled.shape[1])
        return self.sim_projection(pooled.flatten(2).transpose(1, 2).reshape(-1, features.shape[1]))

    def detect_with_features(
        self,
        images: ImageList,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        domain: str = "target",
        features: str = "private",
    ) -> tuple[list[dict[str, torch.Tensor]], list[torch.Tensor]]:
        """Detections of ``domain``'s head and the RoI features of their masks (for L_target, eq 4).

        Boxes, scores and mask probabilities are computed without gradient (inference path,
        in the RoI frame, ``(N, 1, 28, 28)``). The returned mask RoI features ``(N, C, 14, 14)``
        keep their gradient: of the private features h_p (``features="private"``, eq 4, so
        L_target trains E_p alone) or of the fused ``(h_c + h_p) / 2`` the heads read
        (``"fused"``, so E_c receives L_target's gradient too).
        """
        if features not in L_TARGET_FEATURES:
            raise ValueError(f"features must be one of {L_TARGET_FEATURES}, got {features!r}")
        head = self.heads[domain]
        fused = self.fuse(shared, private)
        with torch.no_grad(), _inference_flag(self.rpn, head):
            proposals, _ = self.rpn(images, shared)
            detections, _ = head(fused, proposals, images.image_sizes)
        pooled_from = private if features == "private" else fused
        roi_features = head.mask_roi_pool(pooled_from, [d["boxes"] for d in detections], images.image_sizes)
        return detections, list(roi_features.split([len(d["boxes"]) for d in detections]))

    # ------------------------------------------------------------------ torchvision-style call
    def forward(
        self,
        images: Sequence[torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
        domain: str = "target",
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Mask R-CNN of one branch: E_c + E_p^domain, shared RPN, M^domain.

        Args:
            images: list of ``(C, H, W)`` images in ``[0, 1]``.
            targets: torchvision targets (``boxes``, ``labels``, ``masks``), needed when training.
            domain: ``"source"`` or ``"target"``.

        Returns:
            training: dict of the RPN, box and mask losses; eval: torchvision detections per image
            (``boxes``, ``labels``, ``scores``, ``masks (N, 1, H, W)``) at the input size.
        """
        if domain not in self.domains:
            raise ValueError(f"no {domain!r} branch; this network has {self.domains}")
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, targets = self.preprocess(images, targets)
        shared, private = self.encode(image_list, domain)
        proposals, rpn_losses = self.propose(image_list, shared, targets)
        detections, head_losses = self.heads[domain](
            self.fuse(shared, private), proposals, image_list.image_sizes, targets
        )
        if self.training:
            return {**rpn_losses, **head_losses}
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def branch_copy(self, domain: str = "target") -> DomainSeparationMaskRCNN:
        """A deep copy holding only ``domain``'s branch (shared parts included), e.g. a teacher."""
        clone = copy.deepcopy(self)
        for other in [d for d in clone.domains if d != domain]:
            del clone.private_encoders[other]
            del clone.heads[other]
        clone.domains = (domain,)
        return clone
