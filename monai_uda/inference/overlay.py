"""Instance boundaries drawn over the input image, for a quick visual check of a segmentation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage.exposure import rescale_intensity
from skimage.segmentation import mark_boundaries

from monai_uda.data.io import write_array

__all__ = ["overlay_instances", "save_overlay"]


def _display_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` float image in ``[0, 1]`` from a ``(H, W)`` or channel-first ``(C, H, W)`` image.

    Intensities are stretched between the 1st and 99th percentiles (all channels together, so
    colours keep their balance); images with other than 1 or 3 channels are shown as their mean.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ValueError(f"expected a (H, W) or (C, H, W) image, got shape {image.shape}")
    if image.shape[0] != 3:
        image = image.mean(axis=0, keepdims=True)
    low, high = np.percentile(image, (1, 99))
    if high <= low:
        low, high = float(image.min()), float(image.min()) + 1.0
    scaled = rescale_intensity(image, in_range=(float(low), float(high)), out_range=(0.0, 1.0))
    return np.broadcast_to(np.moveaxis(scaled, 0, -1), (*image.shape[1:], 3))


def overlay_instances(
    image: np.ndarray, instances: np.ndarray, color: Sequence[int] = (255, 255, 0)
) -> np.ndarray:
    """Draw the inner boundary of every instance in ``color`` over the percentile-scaled image.

    Args:
        image: ``(H, W)`` or channel-first ``(C, H, W)`` image of any intensity range.
        instances: ``(H, W)`` instance-id map (0 = background).
        color: boundary colour as 8-bit RGB.

    Returns:
        ``(H, W, 3)`` ``uint8`` RGB image.
    """
    rgb = _display_rgb(image)
    instances = np.asarray(instances)
    if instances.shape != rgb.shape[:2]:
        raise ValueError(f"instances of shape {instances.shape} do not match the image {rgb.shape[:2]}")
    marked = mark_boundaries(rgb, instances, color=tuple(c / 255.0 for c in color), mode="inner")
    return np.round(marked * 255.0).astype(np.uint8)


def save_overlay(path: str | Path, image: np.ndarray, instances: np.ndarray) -> Path:
    """Write :func:`overlay_instances` of ``image`` and ``instances`` to ``path`` (PNG, atomic)."""
    return write_array(path, overlay_instances(image, instances))
