"""Intensity scaling of images read piece by piece (whole slides, whole volumes).

In-memory inference scales a whole image by its 1st/99.8th percentiles
(:func:`monai_uda.transforms.inference_transforms`); streaming runners get the same percentiles
from one pass over the image (an exact histogram of integer images,
:func:`percentile_from_histogram`) and scale each window with :func:`window_scaler`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from monai_uda.transforms.intensity import ChannelPolicy

__all__ = ["percentile_from_histogram", "window_scaler"]


def percentile_from_histogram(hist: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) of the integer values counted in ``hist``."""
    cumulative = np.cumsum(hist)
    position = q / 100.0 * (cumulative[-1] - 1)
    low, high = math.floor(position), math.ceil(position)
    v_low, v_high = (int(np.searchsorted(cumulative, k, side="right")) for k in (low, high))
    return v_low + (v_high - v_low) * (position - low)


def window_scaler(
    a_min: float, a_max: float, value_range: Sequence[float], channels: int, invert: bool
) -> Callable[[np.ndarray], torch.Tensor]:
    """Raw channel-first windows ``(B, C, *roi)`` -> network input.

    The preprocessing of in-memory inference with the image's percentiles given: ``a_min``/``a_max``
    scaled to ``value_range`` and clipped, the channel policy
    (:class:`~monai_uda.transforms.intensity.ChannelPolicy`) and ``invert``.
    """
    a_min, a_max = np.float32(a_min), np.float32(a_max)
    low, high = (float(v) for v in value_range)
    policy = ChannelPolicy(channels)

    def scale(raw: np.ndarray) -> torch.Tensor:
        x = np.asarray(raw, dtype=np.float32)
        if a_max == a_min:
            x = x - a_min + low
        else:
            x = np.clip((x - a_min) / (a_max - a_min) * (high - low) + low, low, high)
        tensor = torch.from_numpy(np.ascontiguousarray(x))
        if tensor.shape[1] != channels:
            tensor = torch.stack([policy(item) for item in tensor])
        return (low + high) - tensor if invert else tensor

    return scale
