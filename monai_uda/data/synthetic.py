"""Synthetic mask domain of AD-GAN (Yao et al.): random ellipses (2D) and ellipsoids (3D).

AD-GAN translates real images to a *synthetic mask* domain whose samples are drawn on the fly:
objects with major semi-axis ``a ~ U[a_min, a_max]``, eccentricity ``e ~ U(e_min, e_max)``,
minor semi-axes ``b = sqrt(1 - e^2) a``, random rotation (3D: random orientation), random
centre and no overlap; the number of objects is ``n ~ U[n_min, n_max]``. AD-GAN-INS adds an
edge class (the outer part of each object's normalised distance map) so that touching
nuclei can be split by a marker watershed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable
from scipy import ndimage
from scipy.spatial.transform import Rotation
from skimage.draw import ellipse

from monai_uda import flag
from monai_uda.data.mask_statistics import (
    AUTO,
    auto_mask_statistics,
    available_presets,
    check_preset_name,
    estimate_mask_statistics,
    load_preset,
)
from monai_uda.errors import UDAInputError

__all__ = [
    "AUTO",
    "random_ellipses",
    "edge_class_map",
    "mask_to_domain_image",
    "domain_image_to_classes",
    "available_presets",
    "load_preset",
    "estimate_mask_statistics",
    "SyntheticMaskDataset",
    "RandSyntheticMaskd",
]


def _check_range(name: str, value: Sequence[float], low: float, high: float | None = None) -> tuple[float, float]:
    if len(value) != 2 or value[0] > value[1] or value[0] < low or (high is not None and value[1] > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise UDAInputError(f"{name} must be (min, max) with min <= max within {bound}, got {tuple(value)}")
    return float(value[0]), float(value[1])


def _ellipsoid_voxels(
    shape: tuple[int, ...], centre: np.ndarray, semi_axes: np.ndarray, rotation: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Indices of the voxels inside an oriented ellipsoid (``skimage.draw.ellipsoid`` has no orientation).

    A voxel ``x`` is inside when ``sum(((R^T (x - c)) / s)^2) <= 1`` with ``R`` the rotation whose
    columns are the ellipsoid's axes and ``s`` its semi-axes.
    """
    radius = float(semi_axes.max())
    lo = np.maximum(np.floor(centre - radius).astype(int), 0)
    hi = np.minimum(np.ceil(centre + radius).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return tuple(np.empty(0, dtype=int) for _ in shape)
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
    local = (grid - centre) @ rotation / semi_axes
    inside = np.sum(local**2, axis=-1) <= 1.0
    return tuple(grid[inside].T)


def _random_object(
    rng: np.random.Generator, shape: tuple[int, ...], axis_range: tuple[float, float], ecc_range: tuple[float, float]
) -> tuple[np.ndarray, ...]:
    """Pixel coordinates of one random ellipse (2D) or ellipsoid (3D), clipped to ``shape``."""
    a = rng.uniform(*axis_range)
    eccentricities = rng.uniform(*ecc_range, size=len(shape) - 1)
    centre = rng.uniform(0, shape)
    if len(shape) == 2:
        b = np.sqrt(1.0 - eccentricities[0] ** 2) * a
        return ellipse(centre[0], centre[1], a, b, shape=shape, rotation=rng.uniform(-np.pi, np.pi))
    semi_axes = np.concatenate([[a], np.sqrt(1.0 - eccentricities**2) * a])
    rotation = Rotation.random(random_state=rng).as_matrix()
    return _ellipsoid_voxels(shape, centre, semi_axes, rotation)


def random_ellipses(
    shape: Sequence[int],
    axis_range: Sequence[float] = (13, 18),
    count_range: Sequence[int] = (5, 40),
    eccentricity_range: Sequence[float] = (0.25, 0.75),
    seed: int | np.random.Generator = 0,
    max_retries: int = 200,
) -> np.ndarray:
    """Random non-overlapping ellipses (2D) or ellipsoids (3D) as an instance map.

    Args:
        shape: spatial shape, 2 (``(H, W)``) or 3 (``(Z, Y, X)``) values.
        axis_range: ``(a_min, a_max)`` of the major semi-axis ``a`` in pixels, ``a ~ U[a_min, a_max]``.
        count_range: ``(n_min, n_max)``, the object count ``n`` is drawn uniformly from the integers.
        eccentricity_range: ``(e_min, e_max)`` within ``[0, 1)``; minor semi-axes are
            ``b = sqrt(1 - e^2) a`` (3D: two minor axes, one eccentricity each).
        seed: seed or generator, the same seed gives the same map.
        max_retries: placement attempts per object; when an object cannot be placed without
            overlap in that many attempts, no further objects are added and a warning says how
            many were placed.

    Returns:
        ``uint16`` instance map of ``shape`` (0 = background, objects ``1..k``); objects whose
        centre lies near the border are clipped by it, as in a crop of a larger image.

    Raises:
        UDAInputError: invalid shape or ranges.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise UDAInputError(f"shape must have 2 or 3 positive sizes, got {shape}")
    a_min, a_max = _check_range("axis_range", axis_range, 0.5)
    n_min, n_max = _check_range("count_range", count_range, 0, 65535)
    e_min, e_max = _check_range("eccentricity_range", eccentricity_range, 0.0, 0.999)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    count = int(rng.integers(int(n_min), int(n_max) + 1))
    instances = np.zeros(shape, dtype=np.uint16)
    for object_id in range(1, count + 1):
        for _ in range(max_retries):
            coords = _random_object(rng, shape, (a_min, a_max), (e_min, e_max))
            if coords[0].size and not instances[coords].any():
                instances[coords] = object_id
                break
        else:
            warnings.warn(
                f"random_ellipses: placed {object_id - 1} of {count} objects; no free place after "
                f"{max_retries} attempts (image {shape} too small or too crowded for a <= {a_max})",
                RuntimeWarning,
                stacklevel=2,
            )
            break
    return instances


def edge_class_map(instances: np.ndarray, edge_fraction: float = 0.3) -> np.ndarray:
    """AD-GAN-INS ternary map: 0 background, 1 edge, 2 interior.

    Each object's Euclidean distance map (distance to the nearest pixel outside the object,
    including pixels of touching objects) is normalised by its maximum; pixels whose normalised
    distance is at most ``edge_fraction`` are edge, the others interior. Touching objects are
    therefore always separated by edge pixels, which the instance post-processing uses as
    watershed ridges.

    Args:
        instances: integer instance map (2D or 3D), 0 = background.
        edge_fraction: outer part of the normalised distance map labelled edge, in ``(0, 1)``.

    Raises:
        UDAInputError: non-integer map or ``edge_fraction`` outside ``(0, 1)``.
    """
    instances = np.asarray(instances)
    if instances.dtype.kind not in "uib":
        raise UDAInputError(f"instance map must be integer, got {instances.dtype}")
    if not 0.0 < edge_fraction < 1.0:
        raise UDAInputError(f"edge_fraction must be in (0, 1), got {edge_fraction}")
    classes = np.zeros(instances.shape, dtype=np.uint8)
    for index, box in enumerate(ndimage.find_objects(instances), start=1):
        if box is None:
            continue
        padded = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        inside = instances[padded] == index
        distance = ndimage.distance_transform_edt(np.pad(inside, 1))[(slice(1, -1),) * inside.ndim]
        normalised = distance / distance.max()
        view = classes[padded]
        view[inside] = np.where(normalised[inside] <= edge_fraction, 1, 2)
    return classes


def mask_to_domain_image(instances: np.ndarray, ternary: bool = False, edge_fraction: float = 0.3) -> np.ndarray:
    """Instance map -> mask-domain image in ``[-1, 1]`` (float32, same shape).

    Semantic (AD-GAN): background -1, objects 1. Ternary (AD-GAN-INS, see :func:`edge_class_map`):
    background -1, edge 0, interior 1.
    """
    instances = np.asarray(instances)
    if ternary:
        return edge_class_map(instances, edge_fraction).astype(np.float32) - 1.0
    return np.where(instances > 0, 1.0, -1.0).astype(np.float32)


def domain_image_to_classes(image: np.ndarray | torch.Tensor, ternary: bool = False) -> np.ndarray:
    """Mask-domain image (a translation) -> classes: semantic ``x > 0``; ternary 0 / 1 / 2.

    The ternary classes are the nearest of the levels -1 (background), 0 (edge), 1 (interior).
    """
    image = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if ternary:
        return np.digitize(image, [-0.5, 0.5]).astype(np.uint8)
    return (image > 0).astype(np.uint8)


def _scale_counts(
    counts: Sequence[int], preset_shape: Sequence[int], shape: Sequence[int], name: str
) -> tuple[int, int]:
    """Object counts of a preset (set for ``preset_shape``) rescaled to patches of ``shape`` by area/volume."""
    if len(preset_shape) != len(shape):
        raise UDAInputError(f"preset {name!r} is {len(preset_shape)}D; give count_range for {len(shape)}D masks")
    scale = float(np.prod(shape)) / float(np.prod(preset_shape))
    return int(np.floor(counts[0] * scale)), max(1, int(np.ceil(counts[1] * scale)))


class SyntheticMaskDataset(torch.utils.data.Dataset):
    """Synthetic mask domain drawn on the fly: item ``i`` is the same map for the same ``seed``.

    Args:
        shape: spatial shape of each mask (2D or 3D).
        length: number of items.
        preset: name of a preset (:func:`load_preset`) giving the ranges; explicit ranges win.
            The preset's counts are rescaled from its ``shape`` to ``shape`` (by area).
        axis_range, count_range, eccentricity_range: see :func:`random_ellipses`.
        ternary: AD-GAN-INS masks (background / edge / interior) instead of semantic ones.
        edge_fraction: edge width of the ternary masks, see :func:`edge_class_map`.
        seed: base seed; item ``i`` of epoch ``k`` uses the stream ``(seed, k, i)``, so each pass
            (see :meth:`set_epoch`) draws fresh masks, reproducibly.
        max_retries: see :func:`random_ellipses`.

    Items are dicts: ``"image"`` float32 ``(1, *shape)`` in ``[-1, 1]`` and ``"label"`` int32
    ``(1, *shape)`` instance ids.
    """

    def __init__(
        self,
        shape: Sequence[int],
        length: int = 1000,
        preset: str | None = None,
        axis_range: Sequence[float] | None = None,
        count_range: Sequence[int] | None = None,
        eccentricity_range: Sequence[float] | None = None,
        ternary: bool = False,
        edge_fraction: float = 0.3,
        seed: int = 0,
        max_retries: int = 200,
    ) -> None:
        defaults = load_preset(preset) if preset is not None else {
            "axis_range": (13, 18), "count_range": (5, 40), "eccentricity_range": (0.25, 0.75)
        }  # fmt: skip
        self.shape = tuple(int(s) for s in shape)
        self.length = int(length)
        self.axis_range = tuple(axis_range) if axis_range is not None else defaults["axis_range"]
        if count_range is None and preset is not None:
            count_range = _scale_counts(defaults["count_range"], defaults["shape"], self.shape, preset)
        self.count_range = tuple(count_range) if count_range is not None else defaults["count_range"]
        self.eccentricity_range = (
            tuple(eccentricity_range) if eccentricity_range is not None else defaults["eccentricity_range"]
        )
        self.ternary = flag(ternary)
        self.edge_fraction = edge_fraction
        self.seed = seed
        self.max_retries = max_retries
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the masks of pass ``epoch`` (the trainer's resumable sampler calls this)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        instances = random_ellipses(
            self.shape, self.axis_range, self.count_range, self.eccentricity_range,
            seed=np.random.default_rng([self.seed, self.epoch, index]), max_retries=self.max_retries,
        )  # fmt: skip
        image = mask_to_domain_image(instances, self.ternary, self.edge_fraction)
        return {"image": torch.from_numpy(image)[None], "label": torch.from_numpy(instances.astype(np.int32))[None]}


class RandSyntheticMaskd(Randomizable, MapTransform):
    """Replace an item's image and label by a fresh synthetic mask (the AD-GAN mask domain).

    A MONAI random transform, so :class:`~monai_uda.data.dataset.UnpairedDataset` seeds it per
    item and epoch like any augmentation: the mask domain is "source" items
    ``{"image": "synthetic", "label": "synthetic"}`` whose chain is this transform.

    Args:
        keys: ``(image_key, label_key)``.
        shape: spatial shape of the masks.
        axis_range, count_range, eccentricity_range, ternary, edge_fraction, max_retries: as in
            :class:`SyntheticMaskDataset`; ``preset`` fills the ranges not given.
        preset: ``"auto"`` (:data:`AUTO`): estimate the ranges not given from ``target_items``
            here, when the training builds its data (:func:`auto_mask_statistics`, one INFO
            line), with the paper's eccentricity range (0.25, 0.75) unless given; or a named
            preset (:func:`load_preset`), its counts rescaled to ``shape``; or ``None``.
        target_items: the unlabelled target images (datalist items or paths) for ``auto``.
        auto_images: at most this many of them are read for ``auto``.

    Raises:
        UDAInputError: unknown preset name (the message lists the valid ones), or ``auto``
            without target images.
    """

    def __init__(
        self,
        keys: Sequence[str] = ("image", "label"),
        shape: Sequence[int] = (256, 256),
        preset: str | None = None,
        axis_range: Sequence[float] | None = None,
        count_range: Sequence[int] | None = None,
        eccentricity_range: Sequence[float] | None = None,
        ternary: bool = False,
        edge_fraction: float = 0.3,
        max_retries: int = 200,
        target_items: Sequence[Any] | None = None,
        auto_images: int = 32,
    ) -> None:
        MapTransform.__init__(self, keys)
        self.image_key, self.label_key = self.keys
        check_preset_name(preset)
        if preset == AUTO:
            preset = None
            if axis_range is None or count_range is None:
                if target_items is None:
                    raise UDAInputError("synthetic-mask preset 'auto' needs target images (target_items)")
                stats = auto_mask_statistics(target_items, len(shape), shape, auto_images)
                axis_range = stats["axis_range"] if axis_range is None else axis_range
                count_range = stats["count_range"] if count_range is None else count_range
        ranges = (axis_range, count_range, eccentricity_range)
        self.masks = SyntheticMaskDataset(shape, 1, preset, *ranges, ternary, edge_fraction, max_retries=max_retries)
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        self._seed = int(self.R.randint(2**31 - 1))

    def __call__(self, data: Any) -> dict[str, Any]:
        self.randomize()
        self.masks.seed = self._seed
        out = dict(data)
        item = self.masks[0]
        out[self.image_key], out[self.label_key] = item["image"], item["label"]
        return out
