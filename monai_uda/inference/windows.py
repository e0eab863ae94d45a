"""The window grid of sliding-window inference, and the slab a streaming stage hands on.

Streaming runners (whole slides, whole volumes) go over the image along its first spatial axis:
every stage (blender, labeller, painter) hands on finished *slabs*, ``(first row, array)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.data.utils import dense_patch_slices

__all__ = ["Slab", "window_starts"]


#: ``(start along axis 0, array)``: a finished slab of the output
Slab = tuple[int, Any]


def window_starts(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> list[tuple[int, ...]]:
    """Window start corners of MONAI's sliding-window inference, in its (raster) order.

    The scan interval is ``int(roi * (1 - overlap))`` (at least 1; the whole axis when the
    window spans it) and the last window of each axis ends at the image border
    (:func:`monai.data.utils.dense_patch_slices`). Every axis must be at least the window size.
    """
    if any(s < r for s, r in zip(image_size, roi_size)):
        raise ValueError(f"image size {tuple(image_size)} is smaller than the window {tuple(roi_size)}")
    interval = [r if r == s else max(int(r * (1 - overlap)), 1) for s, r in zip(image_size, roi_size)]
    return [tuple(int(s.start) for s in window) for window in dense_patch_slices(image_size, roi_size, interval)]
