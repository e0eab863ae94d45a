"""Size and count ranges of AD-GAN's synthetic masks (Yao et al.): named presets and ``auto``.

The synthetic mask domain (:mod:`monai_uda.data.synthetic`) needs the target's nuclei sizes and
counts: the major semi-axis range ``(a_min, a_max)`` in pixels and the object count range
``(n_min, n_max)`` per patch. They come from

* a named preset (``monai_uda/data/presets/<name>.yaml``, see :func:`load_preset`): the paper's
  settings (Table 9) and ours, each file stating its source; or
* ``auto`` (:data:`AUTO`, the bundle's default): :func:`auto_mask_statistics` estimates them from
  the unlabelled target images when training starts (:func:`estimate_mask_statistics`) and logs
  them, so that a data set at another magnification gets masks at its own scale.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import ndimage
from skimage.filters import gaussian, threshold_otsu
from skimage.measure import label, regionprops

from monai_uda.errors import UDAInputError

__all__ = [
    "AUTO", "available_presets", "load_preset", "check_preset_name", "estimate_mask_statistics", "auto_mask_statistics"
]

logger = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).resolve().parent / "presets"
AUTO = "auto"
"""Preset name: estimate the ranges from the target images (:func:`auto_mask_statistics`)."""


def available_presets() -> list[str]:
    """Names of the named presets shipped in ``monai_uda/data/presets`` (``auto`` is not a file)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _unknown(name: str) -> UDAInputError:
    return UDAInputError(f"unknown synthetic-mask preset {name!r}; valid: {', '.join([AUTO, *available_presets()])}")


def load_preset(name: str) -> dict[str, Any]:
    """Parameters of a named preset: ``axis_range``, ``count_range``, ``eccentricity_range``, ``shape``.

    ``shape`` is the patch (2D) or volume patch (3D) the counts were set for; its length is the
    preset's dimensionality. Other keys (``description``, ``source``, ``mode``) document it.

    Raises:
        UDAInputError: unknown name (the message lists the valid ones), or ``auto``, which needs
            target images and is resolved by :func:`auto_mask_statistics`.
    """
    if name == AUTO:
        raise UDAInputError(
            "preset 'auto' estimates the ranges from target images, which are not given here: pass "
            "--axis_range/--count_range (a training logs the values it estimated) or a named preset "
            f"({', '.join(available_presets())})"
        )
    path = PRESET_DIR / f"{name}.yaml"
    if not str(name) or not path.is_file():
        raise _unknown(str(name))
    with open(path) as fh:
        preset = yaml.safe_load(fh)
    for key in ("axis_range", "count_range", "eccentricity_range", "shape"):
        preset[key] = tuple(preset[key])
    return preset


def check_preset_name(name: str | None) -> None:
    """Raise :class:`UDAInputError` listing the valid names unless ``name`` is ``None``, ``auto`` or a preset."""
    if name is not None and name != AUTO and name not in available_presets():
        raise _unknown(str(name))


def _components(image: np.ndarray, sigma: float) -> tuple[list[Any], tuple[int, ...]]:
    """Otsu foreground components of one grey image (objects = the minority class, holes filled)."""
    smooth = gaussian(image, sigma=sigma, preserve_range=True) if sigma > 0 else image
    foreground = smooth > threshold_otsu(smooth)
    if foreground.mean() > 0.5:  # dark nuclei on a bright background (bright-field, H&E)
        foreground = ~foreground
    return regionprops(label(ndimage.binary_fill_holes(foreground))), image.shape


def _touches_border(region: Any, shape: tuple[int, ...]) -> bool:
    box = region.bbox
    dims = len(shape)
    return any(box[d] == 0 or box[d + dims] == shape[d] for d in range(dims))


def _patch_fraction(shape: Sequence[int], patch_shape: Sequence[int] | None) -> float:
    """Share of an image's objects that a patch holds: its area/volume ratio, at most the whole (padded) image."""
    if patch_shape is None:
        return 1.0
    return float(np.prod([min(p, s) for p, s in zip(patch_shape, shape)])) / float(np.prod(shape))


def _weighted_percentiles(values: Sequence[float], weights: Sequence[float], q: Sequence[float]) -> list[float]:
    """Percentiles ``q`` of ``values`` where each value counts ``weight`` times (inverted CDF)."""
    order = np.argsort(values)
    cdf = np.cumsum(np.asarray(weights, dtype=float)[order])
    positions = np.searchsorted(cdf, np.asarray(q, dtype=float) / 100.0 * cdf[-1], side="left")
    return [float(np.asarray(values)[order][min(i, len(order) - 1)]) for i in positions]


def estimate_mask_statistics(
    images: Sequence[np.ndarray],
    spatial_dims: int = 2,
    patch_shape: Sequence[int] | None = None,
    min_size: int = 10,
    min_solidity: float = 0.9,
    sigma: float = 1.0,
) -> dict[str, Any]:
    """Estimate ``axis_range`` and ``count_range`` for the synthetic masks from unlabelled images.

    Each image (channels averaged) is smoothed (Gaussian, ``sigma``), thresholded with Otsu's
    method (objects are the minority class, so dark nuclei work too) and split into connected
    components. Components smaller than ``min_size`` pixels or a tenth of the median component
    are noise (the relative cut keeps the estimate independent of the magnification). Radii come
    from the *single nuclei*: convex components (solidity >= ``min_solidity``; touching nuclei
    merge into non-convex clumps) that do not touch the image border (cut objects look small);
    ``axis_range`` is the 10th-90th percentile of their major semi-axes, each single nucleus
    weighted by its image's nuclei per single nucleus (so that dense images, whose nuclei touch,
    count by their nuclei, not by their few isolated ones). Counts count a convex component as
    one nucleus and a clump as ``area / median single-nucleus area`` (of its image) nuclei.

    Args:
        images: channel-first ``(C, *spatial)`` or channel-less ``(*spatial)`` arrays.
        spatial_dims: 2 or 3.
        patch_shape: training patch size; counts are rescaled from each image's size to it (an image
            smaller than the patch, padded, keeps its count).
        min_size: smallest component (pixels/voxels) counted as an object.
        min_solidity: smallest solidity of a component measured as one nucleus.
        sigma: Gaussian smoothing (pixels) before thresholding; 0 for none.

    Returns:
        ``{"axis_range": (a_min, a_max), "count_range": (n_min, n_max), "median_axis": a_median,
        "images": n}``.

    Raises:
        UDAInputError: no image, wrong dimensionality or no object found.
    """
    if not images:
        raise UDAInputError("estimate_mask_statistics needs at least one image")
    per_image = []
    for index, image in enumerate(images):
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == spatial_dims + 1:
            image = image.mean(axis=0)
        if image.ndim != spatial_dims:
            raise UDAInputError(f"image {index}: expected {spatial_dims} spatial axes, got shape {image.shape}")
        per_image.append(([], image.shape) if image.max() == image.min() else _components(image, sigma))
    areas = [r.area for regions, _ in per_image for r in regions if r.area >= min_size]
    if not areas:
        raise UDAInputError("no object found in the images (Otsu threshold gave empty foreground)")
    cut = max(min_size, 0.1 * float(np.median(areas)))
    kept = [([r for r in regions if r.area >= cut], shape) for regions, shape in per_image]
    singles = [[r for r in regions if r.solidity >= min_solidity and not _touches_border(r, shape)]
               for regions, shape in kept]  # fmt: skip
    if not any(singles):
        singles = [regions for regions, _ in kept]
    unit = float(np.median([r.area for group in singles for r in group]))
    counts, semi_axes, weights = [], [], []
    for (regions, shape), group in zip(kept, singles):
        own = float(np.median([r.area for r in group])) if group else unit  # the image's own magnification
        nuclei = sum(1.0 if r.solidity >= min_solidity else max(1.0, round(r.area / own)) for r in regions)
        counts.append(nuclei * _patch_fraction(shape, patch_shape))
        semi_axes += [r.axis_major_length / 2 for r in group]
        weights += [nuclei / len(group)] * len(group)  # each single nucleus stands for its image's share
    a_min, a_med, a_max = _weighted_percentiles(semi_axes, weights, (10, 50, 90))
    return {
        "axis_range": (round(float(a_min), 1), round(float(max(a_max, a_min)), 1)),
        "count_range": (int(np.floor(min(counts))), max(1, int(np.ceil(max(counts))))),
        "median_axis": round(float(a_med), 1),
        "images": len(images),
    }


def auto_mask_statistics(
    items: Sequence[Mapping[str, Any] | str],
    spatial_dims: int,
    patch_shape: Sequence[int],
    max_images: int = 32,
    seed: int = 0,
    image_key: str = "image",
) -> dict[str, Any]:
    """Preset ``auto``: :func:`estimate_mask_statistics` on up to ``max_images`` target images, logged.

    The images are drawn at random (``seed``) from ``items`` (datalist items or paths) and read
    with :func:`monai_uda.data.io.read_image`; one INFO line gives the estimated ranges.

    Raises:
        UDAInputError: no target item, an unreadable image, or no object found.
    """
    from monai_uda.data.io import read_image

    paths = [item[image_key] if isinstance(item, Mapping) else item for item in items]
    if not paths:
        raise UDAInputError("synthetic-mask preset 'auto' needs target images; the \"target\" list is empty")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(paths), size=min(int(max_images), len(paths)), replace=False).tolist())
    stats = estimate_mask_statistics(
        [read_image(paths[i], spatial_dims)[0] for i in chosen], spatial_dims, patch_shape
    )
    patch = "x".join(str(int(s)) for s in patch_shape)
    logger.info(
        "synthetic masks, preset auto, from %d of %d target images: major semi-axis a %s-%s px (median %s), "
        "%s-%s nuclei per %s patch",
        len(chosen), len(paths), *stats["axis_range"], stats["median_axis"], *stats["count_range"], patch,
    )
    return stats
