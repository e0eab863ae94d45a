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

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation
from skimage.draw import ellipse

from monai_uda.errors import UDAInputError

__all__ = ["random_ellipses", "edge_class_map"]


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
    for label in range(1, count + 1):
        for _ in range(max_retries):
            a = rng.uniform(a_min, a_max)
            eccentricities = rng.uniform(e_min, e_max, size=len(shape) - 1)
            centre = rng.uniform(0, shape)
            if len(shape) == 2:
                b = np.sqrt(1.0 - eccentricities[0] ** 2) * a
                coords = ellipse(centre[0], centre[1], a, b, shape=shape, rotation=rng.uniform(-np.pi, np.pi))
            else:
                semi_axes = np.concatenate([[a], np.sqrt(1.0 - eccentricities**2) * a])
                rotation = Rotation.random(random_state=rng).as_matrix()
                coords = _ellipsoid_voxels(shape, centre, semi_axes, rotation)
            if coords[0].size and not instances[coords].any():
                instances[coords] = label
                break
        else:
            warnings.warn(
                f"random_ellipses: placed {label - 1} of {count} objects; no free place after "
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
