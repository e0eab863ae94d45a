"""The mask domain of AD-GAN (Yao et al.): synthetic masks, or the masks of a labelled source.

AD-GAN learns image <-> mask translation from two *unpaired* sets: real images and masks. With
``mask_domain: synthetic`` the masks are random ellipses drawn on the fly
(:mod:`monai_uda.data.synthetic`, sized by a preset or ``auto``). With ``mask_domain: source``
they are the label maps of the datalist's labelled ``"source"`` items, the natural mask domain of
a domain-adaptation setting: real nuclei shapes, sizes and crowding, and still unpaired with the
target images. Only the label files are read (never the source images); each sample is a random
patch of one label map (padded with background when smaller, flipped and rotated by 90 degrees as
the image patches are), turned into the mask-domain image as the synthetic masks are
(:func:`~monai_uda.data.synthetic.mask_to_domain_image`: binary for AD-GAN, background / edge /
interior for AD-GAN-INS with the edge of :func:`~monai_uda.data.synthetic.edge_class_map`,
computed on the patch).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, EnsureTyped, MapTransform, RandSpatialCropd, SpatialPadd

from monai_uda import flag
from monai_uda.data.synthetic import RandSyntheticMaskd, mask_to_domain_image
from monai_uda.errors import UDAInputError
from monai_uda.transforms.loading import LoadUDAImaged
from monai_uda.transforms.pipelines import _augmentations, _check_patch, default_rotation_axes

__all__ = ["MASK_DOMAINS", "check_mask_domain", "mask_domain_items", "SourceMaskd", "mask_domain_transform"]

logger = logging.getLogger(__name__)

MASK_DOMAINS = ("synthetic", "source")
"""Values of the ``mask_domain`` config key."""

#: label maps read (evenly spaced) to log the source nuclei's typical diameter
DIAMETER_SAMPLES = 16


def check_mask_domain(mask_domain: Any) -> str:
    """``mask_domain`` as one of :data:`MASK_DOMAINS`, else :class:`UDAInputError` naming the key."""
    if mask_domain not in MASK_DOMAINS:
        raise UDAInputError(f"mask_domain must be one of {', '.join(MASK_DOMAINS)}, got {mask_domain!r}")
    return str(mask_domain)


def mask_domain_items(mask_domain: str, datalist: Mapping[str, Any], masks_per_epoch: int = 1000) -> list[dict]:
    """The mask domain's items for :class:`~monai_uda.data.dataset.UnpairedDataset` (its ``source``).

    Args:
        mask_domain: ``"synthetic"``: ``masks_per_epoch`` placeholders that
            :class:`~monai_uda.data.synthetic.RandSyntheticMaskd` replaces by fresh masks;
            ``"source"``: ``{"label": path}`` of every labelled ``"source"`` item (its image dropped,
            so it is never read).
        datalist: the loaded datalist (:func:`~monai_uda.data.datalist.load_datalist`).
        masks_per_epoch: synthetic items per epoch.

    Raises:
        UDAInputError: unknown ``mask_domain``; ``"source"`` and no labelled ``"source"`` item (the
            message names the datalist file).
    """
    if check_mask_domain(mask_domain) == "synthetic":
        return [{"image": "synthetic", "label": "synthetic"}] * int(masks_per_epoch)
    source = datalist.get("source") or []
    items = [{"label": item["label"]} for item in source if "label" in item]
    if not items:
        held = f"none of its {len(source)} \"source\" items has" if source else "it has no \"source\" items with"
        raise UDAInputError(
            f"mask_domain 'source' takes the labelled source's masks as AD-GAN's mask domain, but {held} a 'label' "
            "(use mask_domain synthetic)",
            getattr(datalist, "path", None),
        )
    return items


class SourceMaskd(MapTransform):
    """Write the mask-domain image of an item's instance map: ``image = mask_to_domain_image(label)``.

    Args:
        keys: ``(image_key, label_key)``; the label is a ``(1, *spatial)`` instance map.
        ternary: AD-GAN-INS background -1 / edge 0 / interior 1, else background -1 / nuclei 1.
        edge_fraction: edge width, see :func:`~monai_uda.data.synthetic.edge_class_map`.
    """

    def __init__(self, keys: Sequence[str] = ("image", "label"), ternary: bool = False, edge_fraction: float = 0.3):
        super().__init__(keys)
        self.image_key, self.label_key = self.keys
        self.ternary = flag(ternary)
        self.edge_fraction = edge_fraction

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        instances = np.asarray(torch.as_tensor(d[self.label_key]).cpu().numpy()[0])
        d[self.image_key] = torch.from_numpy(mask_to_domain_image(instances, self.ternary, self.edge_fraction))[None]
        return d


def _source_transform(
    spatial_dims: int, shape: Sequence[int], ternary: bool, edge_fraction: float, augment: Any
) -> Compose:
    """Load a label map, pad/crop a random patch, flips and 90 degree rotations, then :class:`SourceMaskd`."""
    patch = _check_patch(spatial_dims, shape)
    chain: list[Any] = [
        LoadUDAImaged((), label_keys="label", spatial_dims=spatial_dims),
        SpatialPadd("label", spatial_size=patch, mode="constant"),
        RandSpatialCropd("label", roi_size=patch, random_size=False),
    ]
    if flag(augment):
        chain += _augmentations(["label"], patch, default_rotation_axes(spatial_dims), False)
    chain += [
        EnsureTyped("label", dtype=torch.int32, track_meta=False),
        SourceMaskd(("image", "label"), ternary, edge_fraction),
    ]
    return Compose(chain)


def _log_source(items: Sequence[Mapping[str, Any]], spatial_dims: int) -> None:
    """One INFO line: the source masks are the mask domain, the synthetic settings unused, their diameter."""
    from monai_uda.data.io import read_label
    from monai_uda.inference.postprocess import typical_diameter  # the measure model.pt records

    picks = sorted({round(i) for i in np.linspace(0, len(items) - 1, min(DIAMETER_SAMPLES, len(items)))})
    diameter = typical_diameter(read_label(items[i]["label"], spatial_dims) for i in picks)
    unit = "px" if spatial_dims == 2 else "voxels"
    measured = "no nucleus found" if diameter is None else f"typical nucleus diameter {diameter:.1f} {unit}"
    logger.info(
        "AD-GAN mask domain: the label maps of %d labelled source items (source images are not read); "
        "preset/axis_range/count_range/eccentricity_range are not used; source masks: %s (from %d label maps)",
        len(items), measured, len(picks),
    )


def mask_domain_transform(
    mask_domain: str,
    shape: Sequence[int],
    spatial_dims: int = 2,
    ternary: bool = False,
    edge_fraction: float = 0.3,
    source_items: Sequence[Mapping[str, Any]] | None = None,
    augment: Any = True,
    **synthetic: Any,
) -> Compose:
    """The chain that turns a mask-domain item into ``{"image": (1, *shape) in [-1, 1], "label": (1, *shape)}``.

    Args:
        mask_domain: ``"synthetic"``: ``Compose([RandSyntheticMaskd(...)])`` with ``synthetic`` (``preset``,
            ``axis_range``, ``count_range``, ``eccentricity_range``, ``target_items``, ``auto_images``, ...);
            ``"source"``: a random patch of each label map of ``source_items``
            (:func:`mask_domain_items`); ``synthetic`` is unused then, which one INFO line says, with the
            source masks' typical nucleus diameter.
        shape: patch size.
        spatial_dims: 2 or 3.
        ternary, edge_fraction: AD-GAN-INS masks and their edge width.
        source_items: the ``"source"`` mask items (needed, and read for the log line, with ``"source"``).
        augment: random flips and 90 degree rotations of the source patches.

    Raises:
        UDAInputError: unknown ``mask_domain``, bad ``shape``, or the synthetic settings' errors.
    """
    if check_mask_domain(mask_domain) == "synthetic":
        return Compose([RandSyntheticMaskd(("image", "label"), shape, ternary=ternary, edge_fraction=edge_fraction,
                                           **synthetic)])
    if not source_items:
        raise UDAInputError("mask_domain 'source' needs the labelled source's mask items (source_items)")
    chain = _source_transform(spatial_dims, shape, ternary, edge_fraction, augment)
    _log_source(source_items, spatial_dims)
    return chain
