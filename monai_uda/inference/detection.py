"""Tiled instance inference for detectors (Mask R-CNN of CyC-PDAM and DARCNN), 2D and 3D.

Images larger than the training patches are cut into overlapping tiles; a ``detect`` callable
(e.g. :func:`mask_rcnn_detector`) returns soft masks and scores per tile; instances from all
tiles are merged in image coordinates:

* an instance touching a tile side that is *inside* the image may be cut; it only competes
  after every instance seen whole (so with an overlap larger than a nucleus, no cut nucleus
  survives: a neighbouring tile sees it whole);
* candidates are painted in decreasing score order (whole ones first); a candidate whose
  pixels are mostly (``duplicate_overlap``) already claimed is a duplicate from another tile
  and dropped; otherwise it keeps only its unclaimed pixels (overlap removal between
  instances) and is dropped if fewer than ``min_size`` remain.

An untiled image is the one-tile case of the same procedure, so tiled and untiled inference
agree whenever every nucleus is whole in some tile. Whole slides that do not fit in memory go
through the same tiles, candidates and painting, streamed tile row by tile row
(:class:`~monai_uda.inference.wsi_detection.SlideDetector`). 3D volumes (the documented 3D variant)
are segmented slice by slice and the slices' instances are linked across z by overlap
(:func:`stitch_slices`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from monai_uda.inference.folder import ImageFolder, folder_output_names
from monai_uda.inference.network import prepare_network, window_size
from monai_uda.inference.segment import segment_image
from monai_uda.transforms import inference_transforms

__all__ = [
    "DetectFn",
    "Candidate",
    "tile_starts",
    "tile_candidates",
    "paint_order",
    "paint_candidate",
    "paint_instances",
    "detect_tiled",
    "stitch_slices",
    "detect_volume",
    "mask_rcnn_detector",
    "FolderDetector",
    "TiledDetection",
]

#: ``detect(tile) -> {"masks": (N, 1, h, w) or (N, h, w) probabilities, "scores": (N,)}`` for a ``(C, h, w)`` tile
DetectFn = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


@dataclass
class Candidate:
    """One detected instance in image coordinates (mask cropped to its bounding box); ``whole`` unless it
    touches a tile side inside the image (see :func:`tile_candidates`)."""

    score: float
    whole: bool
    y0: int
    x0: int
    mask: np.ndarray


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)`` with at least ``overlap``.

    The last tile ends at ``size``; an axis shorter than the tile is one tile.
    """
    if size <= tile:
        return [0]
    if tile <= overlap:
        raise ValueError(f"tile size {tile} must exceed the overlap {overlap}")
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def tile_candidates(
    detections: Mapping[str, torch.Tensor],
    y0: int,
    x0: int,
    tile_shape: tuple[int, int],
    image_shape: tuple[int, int],
    score_threshold: float,
    mask_threshold: float,
) -> list[Candidate]:
    """Thresholded instances of the tile at ``(y0, x0)`` of an ``image_shape`` image, flagged whole unless they
    touch a tile side inside the image."""
    scores = detections["scores"].detach().float().cpu().numpy()
    masks = detections["masks"].detach().float().cpu()
    if masks.ndim == 4:
        masks = masks[:, 0]
    keep = scores >= score_threshold
    binary = (masks.numpy() >= mask_threshold)[keep]
    h, w = tile_shape
    inner = (y0 > 0, y0 + h < image_shape[0], x0 > 0, x0 + w < image_shape[1])  # top, bottom, left, right
    out = []
    for mask, score in zip(binary, scores[keep]):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if rows.size == 0:
            continue
        touches = (rows[0] == 0, rows[-1] == h - 1, cols[0] == 0, cols[-1] == w - 1)
        whole = not any(t and i for t, i in zip(touches, inner))
        # not a view: it would keep the tile's masks alive
        crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()
        out.append(Candidate(float(score), whole, y0 + int(rows[0]), x0 + int(cols[0]), crop))
    return out


def paint_order(candidate: Candidate) -> tuple[bool, float]:
    """Sort key of the greedy painting: whole instances first, then by decreasing score (ties keep arrival order)."""
    return (not candidate.whole, -candidate.score)


def paint_candidate(
    instances: np.ndarray, candidate: Candidate, label: int, min_size: int, duplicate_overlap: float, origin: int = 0
) -> np.ndarray | None:
    """Paint one candidate with id ``label`` over the instances painted before it.

    It keeps its unclaimed pixels (overlap removal), unless more than ``duplicate_overlap`` of it
    is already claimed (a duplicate from another tile) or fewer than ``min_size`` pixels are left.

    Args:
        instances: the instance map so far; its row 0 is image row ``origin``.
        candidate: the instance to paint.
        label: its id.
        min_size: smallest instance (pixels) kept.
        duplicate_overlap: see :func:`paint_instances`.
        origin: image row of ``instances[0]``.

    Returns:
        the painted pixels (``bool``, the candidate's bounding box), or ``None`` when it is dropped.
    """
    h, w = candidate.mask.shape
    region = instances[candidate.y0 - origin : candidate.y0 - origin + h, candidate.x0 : candidate.x0 + w]
    area = int(candidate.mask.sum())
    free = candidate.mask & (region == 0)
    kept = int(free.sum())
    if area == 0 or (area - kept) / area > duplicate_overlap or kept < min_size:
        return None
    region[free] = label
    return free


def _paint(candidates: list[Candidate], shape: tuple[int, int], min_size: int, duplicate_overlap: float) -> np.ndarray:
    """Greedy painting in :func:`paint_order`: duplicates dropped, overlaps removed."""
    instances = np.zeros(shape, dtype=np.int32)
    next_id = 1
    for cand in sorted(candidates, key=paint_order):
        if paint_candidate(instances, cand, next_id, min_size, duplicate_overlap) is not None:
            next_id += 1
    return instances


def paint_instances(
    masks: np.ndarray, scores: Sequence[float], min_size: int = 5, duplicate_overlap: float = 0.5
) -> np.ndarray:
    """Instance map from overlapping binary masks (one image): higher scores keep contested pixels.

    Args:
        masks: ``(N, H, W)`` bool masks.
        scores: ``N`` confidences.
        min_size: smallest instance (pixels) kept after overlap removal.
        duplicate_overlap: a mask whose pixels are more than this fraction already claimed is dropped.

    Returns:
        ``(H, W)`` int32 instance ids 1..K (0 = background), numbered in painting order.
    """
    candidates = [Candidate(float(s), True, 0, 0, np.asarray(m, dtype=bool)) for m, s in zip(masks, scores)]
    return _paint(candidates, tuple(np.shape(masks)[1:]), min_size, duplicate_overlap)


def detect_tiled(
    image: np.ndarray | torch.Tensor,
    detect: DetectFn,
    tile_size: int | Sequence[int] = 256,
    overlap: int = 64,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    min_size: int = 5,
    duplicate_overlap: float = 0.5,
) -> np.ndarray:
    """Instance map of a 2D image of any size by tiled detection (see the module docstring).

    Args:
        image: ``(C, H, W)`` image as the detector expects it (e.g. in [0, 1]).
        detect: per-tile detector, see :data:`DetectFn`.
        tile_size: tile side(s); use the training patch size.
        overlap: tile overlap in pixels; larger than the biggest nucleus for no cut nuclei.
        score_threshold: minimum detection score.
        mask_threshold: soft-mask probability threshold.
        min_size: smallest instance (pixels) kept.
        duplicate_overlap: see :func:`paint_instances`.

    Returns:
        ``(H, W)`` int32 instance map (the binary mask is ``instances > 0``).
    """
    tensor = torch.as_tensor(image, dtype=torch.float32)
    if tensor.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {tuple(tensor.shape)}")
    height, width = tensor.shape[1:]
    tile_h, tile_w = (tile_size, tile_size) if isinstance(tile_size, int) else tuple(tile_size)
    candidates: list[Candidate] = []
    for y0 in tile_starts(height, tile_h, overlap):
        for x0 in tile_starts(width, tile_w, overlap):
            tile = tensor[:, y0 : y0 + tile_h, x0 : x0 + tile_w]
            detections = detect(tile)
            candidates += tile_candidates(
                detections, y0, x0, tuple(tile.shape[1:]), (height, width), score_threshold, mask_threshold
            )
    return _paint(candidates, (height, width), min_size, duplicate_overlap)


def stitch_slices(slices: Sequence[np.ndarray], min_overlap: float = 0.3) -> np.ndarray:
    """Link per-slice 2D instance maps into 3D instances by overlap with the previous slice.

    An instance of slice z takes the id of the instance of slice z-1 it overlaps most if that
    overlap is at least ``min_overlap`` of the smaller of the two (each previous instance is
    continued by at most one instance); otherwise it starts a new 3D instance.

    Returns:
        ``(Z, H, W)`` int32 instance ids, consecutive from 1.
    """
    volume = np.zeros((len(slices), *np.shape(slices[0])), dtype=np.int32)
    next_id = 1
    previous: np.ndarray | None = None
    for z, current in enumerate(slices):
        current = np.asarray(current, dtype=np.int64)
        ids, areas = np.unique(current[current > 0], return_counts=True)
        lut = np.zeros(int(current.max(initial=0)) + 1, dtype=np.int32)
        continued: set[int] = set()
        if previous is not None and ids.size:
            both = (current > 0) & (previous > 0)
            pairs, counts = np.unique(np.stack([current[both], previous[both]]), axis=1, return_counts=True)
            prev_ids, prev_areas = np.unique(previous[previous > 0], return_counts=True)
            prev_area = dict(zip(prev_ids.tolist(), prev_areas.tolist()))
            area = dict(zip(ids.tolist(), areas.tolist()))
            for k in np.argsort(-counts, kind="stable"):  # largest overlaps claim their partner first
                cur, prev = int(pairs[0, k]), int(pairs[1, k])
                if lut[cur] or prev in continued:
                    continue
                if counts[k] >= min_overlap * min(area[cur], prev_area[prev]):
                    lut[cur] = prev
                    continued.add(prev)
        for cur in ids.tolist():
            if not lut[cur]:
                lut[cur] = next_id
                next_id += 1
        volume[z] = lut[current]
        previous = volume[z]
    return volume


def detect_volume(
    volume: np.ndarray | torch.Tensor, detect: DetectFn, min_overlap: float = 0.3, **tiled_kwargs: float | int
) -> np.ndarray:
    """The 3D variant: :func:`detect_tiled` on every z slice of ``(C, Z, H, W)``, then :func:`stitch_slices`."""
    tensor = torch.as_tensor(volume, dtype=torch.float32)
    if tensor.ndim != 4:
        raise ValueError(f"expected a (C, Z, H, W) volume, got shape {tuple(tensor.shape)}")
    slices = [detect_tiled(tensor[:, z], detect, **tiled_kwargs) for z in range(tensor.shape[1])]
    return stitch_slices(slices, min_overlap)


def mask_rcnn_detector(model: nn.Module, device: str | torch.device = "cpu") -> DetectFn:
    """Wrap a torchvision-style detector (``model([image]) -> [{"masks", "scores", ...}]``) as :data:`DetectFn`.

    The model is put in ``eval()`` mode; tiles run one at a time without gradients.
    """
    model.eval()
    device = torch.device(device)

    @torch.no_grad()
    def detect(tile: torch.Tensor) -> Mapping[str, torch.Tensor]:
        out = model([tile.to(device)])[0]
        return {"masks": out["masks"], "scores": out["scores"]}

    return detect


class TiledDetection:
    """The detector stage of inference: a detector on its device with its weights, and the tiled merge.

    Args:
        network: a torchvision-style detector (``eval()`` forward returns ``masks``/``scores``).
        spatial_dims: 2, or 3 for slice-wise detection linked across z (:func:`detect_volume`).
        device, ckpt_path, ckpt_key: as for :class:`~monai_uda.inference.network.SegmentationNetwork`.
        tile_size, tile_overlap, score_threshold, mask_threshold, min_size, duplicate_overlap: see :func:`detect_tiled`.
        z_overlap: 3D only: ``min_overlap`` of :func:`stitch_slices`.
    """

    def __init__(
        self,
        network: nn.Module,
        spatial_dims: int = 2,
        device: str = "cpu",
        ckpt_path: str | None = None,
        ckpt_key: str | None = None,
        tile_size: int = 256,
        tile_overlap: int = 64,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        min_size: int = 5,
        duplicate_overlap: float = 0.5,
        z_overlap: float = 0.3,
    ) -> None:
        self.roi_size = window_size([tile_size] * spatial_dims, spatial_dims)
        self.spatial_dims = spatial_dims
        self.device = torch.device(device)
        self.network = prepare_network(network, self.device, ckpt_path, ckpt_key)
        self.detect = mask_rcnn_detector(self.network, self.device)
        self.tiled: dict[str, Any] = {
            "tile_size": tile_size,
            "overlap": tile_overlap,
            "score_threshold": score_threshold,
            "mask_threshold": mask_threshold,
            "min_size": min_size,
            "duplicate_overlap": duplicate_overlap,
        }
        self.z_overlap = z_overlap
        self.network_seconds = 0.0  # time in the detector (whole-slide runs)

    def instances(self, image: np.ndarray) -> np.ndarray:
        """Instance ids of a preprocessed ``(C, *spatial)`` image: :func:`detect_tiled`, slice-wise in 3D."""
        if self.spatial_dims == 3:
            return detect_volume(image, self.detect, self.z_overlap, **self.tiled)
        return detect_tiled(image, self.detect, **self.tiled)


class FolderDetector:
    """:class:`~monai_uda.inference.segment.FolderSegmenter` for instance detectors (Mask R-CNN).

    Same inputs, preprocessing (:func:`monai_uda.transforms.inference_transforms`), checkpoint
    loading and outputs (``<stem>_mask``, ``<stem>_instances``, ``<stem>_overlay.png``), but the
    instance map comes from :func:`detect_tiled` (2D) or :func:`detect_volume` (3D, slice-wise)
    instead of a sliding-window probability map (:class:`TiledDetection`).

    Args:
        network: a torchvision-style detector (``eval()`` forward returns ``masks``/``scores``).
        input_dir, output_dir, spatial_dims, channels, invert, value_range, overlay: as for
            :class:`~monai_uda.inference.segment.FolderSegmenter`.
        detector_kwargs: ``device``, ``ckpt_path``, ``ckpt_key``, ``tile_size`` (the training patch
            size), ``tile_overlap`` (pixels, larger than the biggest nucleus), ``score_threshold``,
            ``mask_threshold``, ``min_size``, ``duplicate_overlap``, ``z_overlap``: see :class:`TiledDetection`.
    """

    def __init__(
        self,
        network: nn.Module,
        input_dir: str,
        output_dir: str,
        spatial_dims: int = 2,
        channels: int = 3,
        invert: bool = False,
        value_range: Sequence[float] = (0.0, 1.0),
        overlay: bool = True,
        **detector_kwargs: Any,
    ) -> None:
        self.detector = TiledDetection(network, spatial_dims, **detector_kwargs)
        self.spatial_dims = spatial_dims
        self.transforms = inference_transforms(spatial_dims, channels, invert, value_range)
        self.overlay = overlay and spatial_dims == 2
        names = folder_output_names(
            ".png" if spatial_dims == 2 else ".nii.gz", ".tif" if spatial_dims == 2 else ".nii.gz", self.overlay
        )
        self.folder = ImageFolder(input_dir, output_dir, names)

    def segment_file(self, path: str | Path) -> dict[str, Any]:
        """Detect the nuclei of one image and write its outputs; returns the record of :meth:`run`."""
        return segment_image(
            self.folder, self.transforms, path, lambda image, _: self.detector.instances(image.cpu().numpy())
        )

    def run(self) -> list[dict[str, Any]]:
        """Detect the nuclei of every image of ``input_dir``; one record per input (``stem``, ``image``,
        output paths, ``n_instances``, ``seconds``)."""
        return self.folder.run(self.segment_file)
