"""Instance post-processing of semantic predictions (2D and 3D).

Two routes from a network's output to an instance-id map (0 = background, ``uint32``):

* :func:`binary_to_instances` for a foreground probability (CellSegUDA/SSDA, AD-GAN): threshold,
  clean, then a marker-controlled watershed on the distance transform, markers being the
  h-maxima of the smoothed distance (one per nucleus, so touching nuclei are split);
* :func:`ternary_to_instances` for a ``[background, edge, interior]`` prediction (AD-GAN-INS):
  each connected interior region is a marker and the watershed grows it over the foreground
  (edge + interior), so nuclei separated only by an edge band come out as different instances.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import numpy as np
from scipy import ndimage
from skimage import morphology, segmentation

__all__ = [
    "DIAMETER_KEY",
    "binary_to_instances",
    "component_radii",
    "h_maxima_markers",
    "relabel_sequential",
    "remove_small",
    "split_scale",
    "ternary_to_instances",
    "typical_diameter",
]

#: the entry of ``model.pt`` recording the source's typical nucleus diameter (pixels), see :func:`typical_diameter`
DIAMETER_KEY = "source_diameter"

# scikit-image 0.26 renamed ``min_size``/``area_threshold`` to ``max_size`` (removing sizes <= max_size).
_HAS_MAX_SIZE = "max_size" in inspect.signature(morphology.remove_small_objects).parameters


def remove_small(mask: np.ndarray, min_size: int, holes: bool = False) -> np.ndarray:
    """Drop connected objects (or fill holes, when ``holes``) with fewer than ``min_size`` pixels/voxels.

    Thin version-independent wrapper of ``skimage.morphology.remove_small_objects`` /
    ``remove_small_holes`` (full connectivity, so diagonal neighbours belong to the same object).
    """
    mask = np.asarray(mask, dtype=bool)
    if min_size <= 1:
        return mask
    connectivity = mask.ndim
    if holes:
        if _HAS_MAX_SIZE:
            return morphology.remove_small_holes(mask, max_size=min_size - 1, connectivity=connectivity)
        return morphology.remove_small_holes(mask, area_threshold=min_size - 1, connectivity=connectivity)
    if _HAS_MAX_SIZE:
        return morphology.remove_small_objects(mask, max_size=min_size - 1, connectivity=connectivity)
    return morphology.remove_small_objects(mask, min_size=min_size, connectivity=connectivity)


def relabel_sequential(instances: np.ndarray) -> np.ndarray:
    """Renumber instance ids to ``1..N`` keeping 0 as background (``skimage.segmentation.relabel_sequential``)."""
    relabelled, _, _ = segmentation.relabel_sequential(np.asarray(instances))
    return relabelled.astype(np.uint32, copy=False)


def _clean(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Foreground without objects nor holes smaller than ``min_size``: what both the split and its scale see."""
    return remove_small(remove_small(mask, min_size), min_size, holes=True)


def _add_unmarked(instances: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Give every foreground component the watershed did not reach (it had no marker) its own id."""
    missing, n_missing = ndimage.label(mask & (instances == 0), structure=np.ones((3,) * mask.ndim))
    if n_missing:
        instances = np.where(missing > 0, missing + instances.max(), instances)
    return instances


def _reconstruction_by_dilation(seed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grey reconstruction by dilation of ``seed`` under ``mask`` (full connectivity) with ITK.

    Same result as ``skimage.morphology.reconstruction(seed, mask)`` on ``float32`` input; ITK's
    filter scales to multi-megapixel images, where scikit-image's queue-based one does not. Only
    the two wrapper modules needed are imported: the lazy
    ``itk.ReconstructionByDilationImageFilter`` lookup would load many unrelated wrappers.
    """
    from itk import itkPyBufferPython, itkReconstructionByDilationImageFilterPython

    dims = mask.ndim
    buffer = getattr(itkPyBufferPython, f"itkPyBufferIF{dims}")
    seed = np.ascontiguousarray(seed, dtype=np.float32)  # the ITK views below borrow these buffers
    mask = np.ascontiguousarray(mask, dtype=np.float32)
    reconstruction = getattr(
        itkReconstructionByDilationImageFilterPython, f"itkReconstructionByDilationImageFilterIF{dims}IF{dims}"
    ).New(
        MarkerImage=buffer.GetImageViewFromArray(seed),
        MaskImage=buffer.GetImageViewFromArray(mask),
        FullyConnected=True,
    )
    reconstruction.Update()
    return np.array(buffer.GetArrayViewFromImage(reconstruction.GetOutput()))


def h_maxima_markers(distance: np.ndarray, h: float) -> np.ndarray:
    """Markers of the maxima of ``distance`` with a dynamic of at least ``h``, per foreground component.

    ``skimage.morphology.h_maxima``'s float recipe (reconstruct by dilation from ``distance - h -
    resolution``, keep residues ``>= h``), with the reconstruction done by ITK: the same markers,
    cheaper on tissue-dense slides, where this step dominates post-processing. ``distance`` is 0 on
    the background, so through it no component's reconstruction is raised above its own values:
    every component gets the markers it would get alone. Pixels below ``h`` are never markers, so a
    component whose maximum is below ``h`` gets none (whole-image ``h_maxima`` marks its top when no
    taller component is near, an artefact of its global shift); :func:`binary_to_instances` gives it
    its own id anyway.

    Args:
        distance: non-negative map (positive on the foreground, 0 on the background), 2D or 3D;
            computed in ``float32``.
        h: minimal dynamic of a maximum.

    Returns:
        boolean marker map of ``distance``'s shape.
    """
    distance = np.asarray(distance, dtype=np.float32)
    seed = distance - np.float32(h) - 2 * np.finfo(np.float32).resolution * np.abs(distance)
    return ((distance - _reconstruction_by_dilation(seed, distance)) >= h) & (distance >= h)


def component_radii(mask: np.ndarray, distance: np.ndarray | None = None) -> np.ndarray:
    """Largest distance to the background of each connected foreground component (its inscribed radius).

    A clump of touching nuclei has the radius of its largest nucleus, not of the clump, so the
    median over components is robust to clumps, which equivalent-area diameters are not.

    Args:
        mask: boolean foreground, 2D or 3D (full connectivity).
        distance: ``distance_transform_edt(mask)`` when already computed.

    Returns:
        ``float32`` radii in pixels/voxels, one per component (empty without foreground).
    """
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    if not n:
        return np.zeros(0, dtype=np.float32)
    distance = ndimage.distance_transform_edt(mask) if distance is None else distance
    return np.asarray(ndimage.maximum(distance, labels, np.arange(1, n + 1)), dtype=np.float32)


def typical_diameter(masks: np.ndarray | Iterable[np.ndarray], min_size: int = 10) -> float | None:
    """Typical nucleus diameter of one foreground mask or of several pooled: twice the median component radius.

    The same estimate serves at training (the source labels' ``label > 0``, recorded in
    ``model.pt`` under :data:`DIAMETER_KEY`) and at inference (``diameter: auto``, the predicted
    foreground of each image), so their ratio is the scale of the target relative to the source.

    Args:
        masks: a boolean (or label) map, or an iterable of them; nonzero is foreground.
        min_size: components smaller than this (pixels/voxels) are debris, not nuclei: ignored.

    Returns:
        the diameter in pixels/voxels, ``None`` without any component of ``min_size``.
    """
    if isinstance(masks, np.ndarray):
        masks = [masks]
    radii = [component_radii(_clean(np.asarray(m) > 0, min_size)) for m in masks]
    pooled = np.concatenate(radii) if radii else np.zeros(0)
    return float(2.0 * np.median(pooled)) if pooled.size else None


#: nuclei within this factor of the source's size are split as at the source's own scale
SAME_SCALE = 1.5


def split_scale(diameter: float | None, reference: float | None) -> float:
    """How much larger the nuclei are than the source's: ``diameter / reference``.

    1 when either is unknown, and when the ratio is within :data:`SAME_SCALE` either way: a typical
    diameter estimated from one image varies by some tens of percent, and scaling within that
    spread would only move today's split at the source's own scale, where ``h = 1`` is right.
    """
    if diameter is None or reference is None or diameter <= 0 or reference <= 0:
        return 1.0
    ratio = float(diameter) / float(reference)
    return 1.0 if 1.0 / SAME_SCALE <= ratio <= SAME_SCALE else ratio


def binary_to_instances(
    prob: np.ndarray,
    threshold: float = 0.5,
    min_size: int = 10,
    h: float = 1.0,
    sigma: float = 1.0,
    diameter: float | str | None = None,
    reference_diameter: float | None = None,
) -> np.ndarray:
    """Split a foreground probability (or binary mask) into nuclei with a distance-transform watershed.

    Steps: ``prob > threshold``; remove objects and fill holes smaller than ``min_size``;
    Euclidean distance to the background (``scipy.ndimage.distance_transform_edt``), smoothed by
    a Gaussian of ``sigma``; markers = regional maxima whose height above the surrounding
    saddle is at least ``h`` (:func:`h_maxima_markers`); watershed of the negated distance
    from those markers restricted to the mask. Two discs of radius ``r`` touching along a neck
    of half-width ``w`` are split when ``r - w >= h``; a single convex nucleus keeps one marker.

    ``h`` and ``sigma`` are lengths tuned at the source's scale: with ``diameter`` and
    ``reference_diameter`` both given they are multiplied by :func:`split_scale`, so that a
    nucleus three times larger than the source's needs a dip three times deeper to be cut (the
    bumps of its outline are three times larger too). At the reference scale the split is
    unchanged.

    Args:
        prob: foreground probability map or boolean mask, shape ``(H, W)`` or ``(D, H, W)``.
        threshold: probability above which a pixel is foreground (ignored for boolean input).
        min_size: smallest object and largest hole (exclusive) kept, in pixels/voxels.
        h: minimal dynamic (in pixels of distance, at the reference scale) of a distance maximum
            to seed its own nucleus; larger values merge more.
        sigma: Gaussian smoothing of the distance map before finding maxima (0 = none), at the
            reference scale.
        diameter: typical nucleus diameter of this image in pixels, ``"auto"`` to estimate it from
            the foreground (:func:`typical_diameter`), or ``None``: no scaling.
        reference_diameter: the source's typical diameter (recorded at training); ``None``: no scaling.

    Returns:
        ``uint32`` instance ids ``1..N`` with ``prob``'s shape; 0 is background.
    """
    prob = np.asarray(prob)
    if prob.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D probability map, got shape {prob.shape}")
    mask = prob if prob.dtype == bool else prob > threshold
    mask = _clean(mask, min_size)
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.uint32)
    distance = ndimage.distance_transform_edt(mask).astype(np.float32)
    if diameter == "auto":
        diameter = 2.0 * float(np.median(component_radii(mask, distance)))
    scale = split_scale(diameter, reference_diameter)
    if sigma > 0:
        distance = ndimage.gaussian_filter(distance, sigma * scale) * mask
    markers, _ = ndimage.label(h_maxima_markers(distance, h * scale), structure=np.ones((3,) * mask.ndim))
    instances = segmentation.watershed(-distance, markers, mask=mask)
    # already 1..N: markers are 1..K, each keeps its seed pixels (all in the mask), unmarked components follow
    return _add_unmarked(instances, mask).astype(np.uint32, copy=False)


def _ternary_classes(probs: np.ndarray) -> np.ndarray:
    """Class map (0 background, 1 edge, 2 interior) from an integer class map or ``(3, *spatial)`` scores."""
    probs = np.asarray(probs)
    if probs.dtype.kind in "uib":
        if probs.ndim not in (2, 3):
            raise ValueError(f"expected a 2D or 3D class map, got shape {probs.shape}")
        return probs.astype(np.uint8)
    if probs.ndim not in (3, 4) or probs.shape[0] != 3:
        raise ValueError(f"expected (3, *spatial) [background, edge, interior] scores, got shape {probs.shape}")
    return np.argmax(probs, axis=0).astype(np.uint8)


def ternary_to_instances(probs: np.ndarray, min_size: int = 10, min_marker_size: int = 3) -> np.ndarray:
    """AD-GAN-INS instances from a ``[background, edge, interior]`` prediction.

    Connected interior regions (at least ``min_marker_size`` pixels) are the markers; a watershed
    of the distance to the nearest interior pixel grows them over the foreground (edge and
    interior classes), so every edge pixel joins its nearest interior. Foreground components
    without any interior become one instance each; instances smaller than ``min_size`` are dropped.

    Args:
        probs: ``(3, *spatial)`` class scores/probabilities (argmax taken over axis 0) or an
            integer class map with values 0 (background), 1 (edge), 2 (interior).
        min_size: smallest instance kept, in pixels/voxels.
        min_marker_size: smallest interior region used as a marker.

    Returns:
        ``uint32`` instance ids ``1..N`` of the spatial shape; 0 is background.
    """
    classes = _ternary_classes(probs)
    foreground = remove_small(classes > 0, min_size, holes=True)
    interior = remove_small((classes == 2) & foreground, min_marker_size)
    if not foreground.any():
        return np.zeros(classes.shape, dtype=np.uint32)
    markers, _ = ndimage.label(interior, structure=np.ones((3,) * classes.ndim))
    elevation = ndimage.distance_transform_edt(~interior)
    instances = _add_unmarked(segmentation.watershed(elevation, markers, mask=foreground), foreground)
    sizes = np.bincount(instances.ravel())
    instances[(sizes < min_size)[instances]] = 0
    return relabel_sequential(instances)
