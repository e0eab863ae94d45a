"""What a whole slide holds, from one streaming pass: intensity histogram, thumbnail, tissue mask.

:func:`scan_slide` reads the slide once, region by region, for the exact intensity histogram
(integer images: the percentiles of the in-memory path) and a thumbnail; :func:`tissue_mask` is
Otsu's threshold of the thumbnail's saturation (RGB), so windows over blank glass are skipped.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from monai_uda.inference.readers import SlideReader
from monai_uda.inference.threads import ordered_map

__all__ = ["scan_slide", "tissue_mask"]


def scan_slide(
    reader: SlideReader, factor: int, chunk: int = 4096, workers: int = 1
) -> tuple[np.ndarray | None, np.ndarray]:
    """One streaming pass: intensity histogram (integer images, all channels) and a thumbnail.

    Regions are read here and summarised in ``workers`` threads (:func:`~monai_uda.inference.threads.ordered_map`).

    Returns:
        ``(histogram or None, thumbnail)``; the thumbnail is the ``factor x factor`` block mean,
        ``(H // factor, W // factor, C)`` float32 (partial blocks at the far edges dropped).
    """
    height, width = reader.shape
    integer = reader.dtype.kind in "ub" and reader.dtype.itemsize <= 2
    hist = np.zeros(1 << (8 * reader.dtype.itemsize), dtype=np.int64) if integer else None
    thumb = np.zeros((height // factor, width // factor, reader.channels), dtype=np.float32)
    band = factor * max(1, chunk // 16 // factor)
    step = factor * max(1, chunk // factor)
    regions = ((y0, x0) for y0 in range(0, height, band) for x0 in range(0, width, step))
    read = ((y0, x0, reader.read(y0, x0, min(band, height - y0), min(step, width - x0))) for y0, x0 in regions)

    def summarise(item: tuple[int, int, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray]:
        region = item[2]
        counts = np.bincount(region.ravel(), minlength=hist.size) if hist is not None else None
        th, tw = region.shape[0] // factor, region.shape[1] // factor
        # explicit channels: a last band thinner than ``factor`` (th = 0) gives an empty block, not an error
        blocks = region[: th * factor, : tw * factor].reshape(th, factor, tw, factor, region.shape[2])
        return counts, blocks.mean(axis=(1, 3), dtype=np.float32)

    for (y0, x0, _), (counts, block) in ordered_map(summarise, read, workers):
        if counts is not None:
            hist += counts
        thumb[y0 // factor : y0 // factor + block.shape[0], x0 // factor : x0 // factor + block.shape[1]] = block
    return hist, thumb


def tissue_mask(thumbnail: np.ndarray, min_saturation: float = 0.05, dilation: int = 2) -> np.ndarray | None:
    """Tissue pixels of an RGB thumbnail: saturation above Otsu's threshold (and ``min_saturation``).

    Returns ``None`` (no skipping) for non-RGB images; an all-blank slide gives an empty mask.
    """
    if thumbnail.shape[-1] != 3 or min(thumbnail.shape[:2]) < 2:
        return None
    brightest, darkest = thumbnail.max(axis=-1), thumbnail.min(axis=-1)
    saturation = np.where(brightest > 0, (brightest - darkest) / np.maximum(brightest, 1e-12), 0.0)  # HSV saturation
    if float(saturation.max()) < min_saturation:
        return np.zeros(saturation.shape, dtype=bool)
    tissue = saturation > max(float(threshold_otsu(saturation)), min_saturation)
    return ndimage.binary_dilation(tissue, iterations=dilation) if dilation else tissue
