"""MONAI-style transforms shared by all bundles: loading, channel policy, scaling, chains."""

from __future__ import annotations

from monai_uda.errors import unwrap_input_errors
from monai_uda.transforms.croppad import BackgroundPadd
from monai_uda.transforms.intensity import LUMINANCE_WEIGHTS, ChannelPolicy, ChannelPolicyd, scale_intensity_percentiles
from monai_uda.transforms.loading import LoadUDAImaged, filename_of
from monai_uda.transforms.pipelines import (
    default_rotation_axes,
    inference_transforms,
    slice_train_transforms,
    train_transforms,
)

__all__ = [
    "BackgroundPadd",
    "LUMINANCE_WEIGHTS",
    "ChannelPolicy",
    "ChannelPolicyd",
    "LoadUDAImaged",
    "default_rotation_axes",
    "filename_of",
    "inference_transforms",
    "scale_intensity_percentiles",
    "slice_train_transforms",
    "train_transforms",
    "unwrap_input_errors",
]
