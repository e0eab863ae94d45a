"""Ready-made transform chains for training and inference.

The chains start with the deterministic part (loading, channel policy, scaling), which
:class:`~monai_uda.data.dataset.UnpairedDataset` and MONAI's ``CacheDataset`` cache, and end
with the random part (pad, crop, flips, 90 degree rotations) that runs for every item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.transforms import (
    Compose,
    EnsureTyped,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropd,
    SpatialPadd,
    SqueezeDimd,
)

from monai_uda import flag
from monai_uda.errors import UDAInputError
from monai_uda.transforms.croppad import BackgroundPadd
from monai_uda.transforms.intensity import ChannelPolicyd, scale_intensity_percentiles
from monai_uda.transforms.loading import LoadUDAImaged

__all__ = ["train_transforms", "inference_transforms", "default_rotation_axes"]


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise UDAInputError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")


def _check_patch(spatial_dims: int, patch_size: Sequence[int]) -> tuple[int, ...]:
    """``patch_size`` as a tuple of ints, checked against ``spatial_dims``."""
    _check_dims(spatial_dims)
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != spatial_dims or min(patch) < 1:
        raise UDAInputError(f"patch_size must have {spatial_dims} positive sizes, got {tuple(patch_size)}")
    return patch


def default_rotation_axes(spatial_dims: int) -> tuple[int, int]:
    """In-plane axes of the 90 degree rotations: ``(0, 1)`` for ``(H, W)``, ``(1, 2)`` for ``(Z, Y, X)`` stacks.

    NIfTI volumes are read as ``(X, Y, Z)``; pass ``rotation_axes=(0, 1)`` for them.
    """
    _check_dims(spatial_dims)
    return (0, 1) if spatial_dims == 2 else (1, 2)


def _augmentations(keys: list[str], patch: tuple[int, ...], axes: tuple[int, ...], missing: bool) -> list[Any]:
    """Random flips along every axis, and 90 degree rotations in ``axes`` when the patch is square there."""
    spatial_dims = len(patch)
    chain: list[Any] = [
        RandFlipd(keys, prob=0.5, spatial_axis=axis, allow_missing_keys=missing) for axis in range(spatial_dims)
    ]
    if len(axes) != 2 or not all(0 <= a < spatial_dims for a in axes) or axes[0] == axes[1]:
        raise UDAInputError(f"rotation_axes must be two different axes of {spatial_dims}D, got {axes}")
    if patch[axes[0]] == patch[axes[1]]:
        # prob 0.75 with k in {1, 2, 3}: each of the four orientations with probability 1/4
        chain.append(RandRotate90d(keys, prob=0.75, max_k=3, spatial_axes=axes, allow_missing_keys=missing))
    return chain


def train_transforms(
    spatial_dims: int,
    patch_size: Sequence[int],
    channels: int,
    invert: bool = False,
    value_range: Sequence[float] = (0.0, 1.0),
    image_key: str = "image",
    label_key: str | None = "label",
    augment: Any = True,
    allow_missing_label: bool = False,
    rotation_axes: tuple[int, int] | None = None,
) -> Compose:
    """Training chain: load, channel policy, percentile scaling, pad, random patch, flips, rotations.

    Images smaller than ``patch_size`` are padded with each channel's median, the background colour in any
    modality (:class:`~monai_uda.transforms.BackgroundPadd`), labels with 0. Rotations by 90 degrees are used
    only where the patch is square in ``rotation_axes``, so every output has the shape ``patch_size``.

    Args:
        spatial_dims: 2 or 3.
        patch_size: training patch, one size per spatial axis.
        channels: channel count of the networks (see :class:`~monai_uda.transforms.ChannelPolicy`).
        invert: make bright-on-dark images dark-on-bright (after scaling).
        value_range: output intensity range, ``(0, 1)`` or ``(-1, 1)`` for tanh generators.
        image_key: item key of the image.
        label_key: item key of the instance map, ``None`` for unlabelled domains.
        augment: add random flips and 90 degree rotations (a bool or a true/false word, as a
            command line gives it).
        allow_missing_label: items without ``label_key`` pass (semi-supervised target domains,
            where only some items are labelled).
        rotation_axes: in-plane axes of the rotations (default :func:`default_rotation_axes`).

    Returns:
        A ``Compose`` whose items hold ``image_key`` as a ``(channels, *patch_size)`` float32
        tensor and ``label_key`` as a ``(1, *patch_size)`` int32 tensor (plain tensors, so the
        default collate works).

    Raises:
        UDAInputError: invalid ``spatial_dims``, ``patch_size`` or ``value_range``.
    """
    patch = _check_patch(spatial_dims, patch_size)
    keys = [image_key] if label_key is None else [image_key, label_key]
    missing = allow_missing_label and label_key is not None
    axes = default_rotation_axes(spatial_dims) if rotation_axes is None else tuple(rotation_axes)
    labels = () if label_key is None else label_key
    chain = [
        LoadUDAImaged(image_key, label_keys=labels, spatial_dims=spatial_dims, allow_missing_keys=missing),
        scale_intensity_percentiles(image_key, value_range),
        ChannelPolicyd(image_key, channels, invert),
        BackgroundPadd(image_key, spatial_size=patch),
    ]
    if label_key is not None:
        chain.append(SpatialPadd(label_key, spatial_size=patch, mode="constant", allow_missing_keys=missing))
    chain.append(RandSpatialCropd(keys, roi_size=patch, random_size=False, allow_missing_keys=missing))
    if flag(augment):
        chain += _augmentations(keys, patch, axes, missing)
    chain.append(EnsureTyped(image_key, dtype=torch.float32, track_meta=False))
    if label_key is not None:
        label_type = EnsureTyped(label_key, dtype=torch.int32, track_meta=False, allow_missing_keys=allow_missing_label)
        chain.append(label_type)
    return Compose(chain)


def slice_train_transforms(
    patch_size: Sequence[int],
    channels: int,
    invert: Any = False,
    label_key: str | None = "label",
    augment: Any = True,
) -> Compose:
    """Training chain of 2D networks on 3D volumes: one random ``patch_size`` slice per item.

    :func:`train_transforms` crops a ``1 x H x W`` patch from the volume (one slice along the first
    spatial axis) and the singleton axis is squeezed, so a 2D network (the Mask R-CNN detectors)
    trains on slices and its inference on volumes detects slice by slice.

    Args:
        patch_size: the 2D patch ``(H, W)``.
        channels, invert, label_key, augment: as in :func:`train_transforms`.
    """
    chain = train_transforms(3, [1, *patch_size], channels, invert=invert, label_key=label_key, augment=augment)
    keys = ["image"] if label_key is None else ["image", label_key]
    return Compose([*chain.flatten().transforms, SqueezeDimd(keys, dim=1)])


def inference_transforms(
    spatial_dims: int, channels: int, invert: bool = False, value_range: Sequence[float] = (0.0, 1.0)
) -> Compose:
    """Inference chain on key ``"image"``: load, channel policy, percentile scaling, no crop.

    The image stays a ``MetaTensor`` so that writers find the input's file name, spacing and
    affine in ``image.meta`` (``"filename_or_obj"``, ``"spacing"``, ``"affine"``,
    ``"spatial_shape"``).

    Args:
        spatial_dims: 2 or 3.
        channels: channel count of the network.
        invert: as in :func:`train_transforms`.
        value_range: as in :func:`train_transforms`.
    """
    _check_dims(spatial_dims)
    return Compose(
        [
            LoadUDAImaged("image", spatial_dims=spatial_dims),
            scale_intensity_percentiles("image", value_range),
            ChannelPolicyd("image", channels, invert),
            EnsureTyped("image", dtype=torch.float32, track_meta=True),
        ]
    )
