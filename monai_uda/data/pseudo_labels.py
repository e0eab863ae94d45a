"""Detection targets from instance maps, and DARCNN's augmented pseudo-labels (stage 2).

* :func:`instance_targets` turns an instance-id map into torchvision detection targets
  (``boxes``, ``labels``, ``masks``), for ground truth and pseudo-labels alike;
* :class:`PseudoLabelAugment` is the target-image augmentation of DARCNN's stage 2 (Hsu et
  al., CVPR 2021, sec. 3.3): Gaussian blur (sigma 1), contrast x1.5 and brightness -150 on
  the 0-255 scale, each configurable or disabled;
* :func:`filter_detections` keeps the detections scoring above z as pseudo-labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.ops import masks_to_boxes

__all__ = ["instance_targets", "PseudoLabelAugment", "filter_detections"]


def _masks_to_targets(masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Boxes covering every pixel of each ``(N, H, W)`` boolean mask (x2/y2 exclusive)."""
    boxes = masks_to_boxes(masks).to(torch.float32)
    boxes[:, 2:] += 1.0  # pixel extents: a one-pixel nucleus gets a 1x1 box, never a degenerate one
    labels = torch.ones(masks.shape[0], dtype=torch.int64, device=masks.device)
    return {"boxes": boxes, "labels": labels, "masks": masks.to(torch.uint8)}


def instance_targets(label: torch.Tensor) -> dict[str, torch.Tensor]:
    """Class-agnostic torchvision targets from an instance-id map (0 = background).

    Args:
        label: ``(H, W)`` or ``(1, H, W)`` instance ids (any integer or integral float dtype).

    Returns:
        ``{"boxes": (N, 4) float, "labels": (N,) int64 ones, "masks": (N, H, W) uint8}``;
        ``N = 0`` for an empty map (torchvision trains on it as a negative image).
    """
    if label.ndim == 3 and label.shape[0] == 1:
        label = label[0]
    if label.ndim != 2:
        raise ValueError(f"expected an (H, W) or (1, H, W) instance map, got shape {tuple(label.shape)}")
    label = label.round().to(torch.int64) if label.is_floating_point() else label.to(torch.int64)
    ids = torch.unique(label)
    ids = ids[ids > 0]
    return _masks_to_targets(label.unsqueeze(0) == ids.view(-1, 1, 1))


@dataclass
class PseudoLabelAugment:
    """DARCNN stage-2 augmentation applied to target images before pseudo-labelling.

    Applied in this order to ``[0, 1]`` images, then clipped to ``[0, 1]``; ``None`` disables
    a step. Contrast scales the distance to the image's mean grey level
    (:func:`torchvision.transforms.v2.functional.adjust_contrast`); brightness is additive.

    Args:
        blur_sigma: Gaussian blur sigma in pixels (kernel ``2 * ceil(3 sigma) + 1``); paper 1.
        contrast: contrast factor; paper 1.5.
        brightness: value added to every pixel on the ``[0, 1]`` scale; paper -150/255.
    """

    blur_sigma: float | None = 1.0
    contrast: float | None = 1.5
    brightness: float | None = -150.0 / 255.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Augment ``(B, C, H, W)`` or ``(C, H, W)`` images with C = 1 or 3."""
        out = images
        if self.blur_sigma:
            size = 2 * math.ceil(3 * self.blur_sigma) + 1
            out = TF.gaussian_blur(out, kernel_size=[size, size], sigma=[self.blur_sigma, self.blur_sigma])
        if self.contrast is not None and self.contrast != 1.0:
            out = TF.adjust_contrast(out.clamp(0.0, 1.0), self.contrast)
        if self.brightness:
            out = out + self.brightness
        return out.clamp(0.0, 1.0)


def filter_detections(
    detections: Mapping[str, torch.Tensor], score_threshold: float = 0.5, mask_threshold: float = 0.5
) -> dict[str, torch.Tensor]:
    """Pseudo-label targets from one image's Mask R-CNN detections (DARCNN stage 2).

    Keeps the instances with score > ``score_threshold`` (z) whose mask, binarised at
    ``mask_threshold``, is not empty; boxes are recomputed from the binary masks so boxes and
    masks agree as in ground truth.

    Args:
        detections: torchvision output for one image: ``scores (N,)`` and ``masks (N, 1, H, W)``
            probabilities (or ``(N, H, W)``).
        score_threshold: z, minimum (exclusive) detection score.
        mask_threshold: probability above which a pixel belongs to the instance.

    Returns:
        targets as :func:`instance_targets` plus the kept ``scores``.
    """
    masks = detections["masks"]
    if masks.ndim == 4:
        masks = masks[:, 0]
    keep = detections["scores"] > score_threshold
    binary = masks[keep] > mask_threshold
    non_empty = binary.flatten(1).any(1)
    targets = _masks_to_targets(binary[non_empty])
    targets["scores"] = detections["scores"][keep][non_empty]
    return targets
