"""Readers of images too large to load whole: regions of 2D slides, slabs of 3D volumes.

:class:`SlideReader` decodes only the TIFF tiles a region needs (tifffile; tiled/pyramidal TIFF
and OME-TIFF level 0); :class:`VolumeReader` reads a volume slab by slab along its first axis
(memory-mapped NIfTI and ``.npy``, TIFF stacks page by page). MONAI's tifffile ``WSIReader``
loads a whole level, which is why the slide reader is ours. :func:`read_preprocessed` reads a
whole image for in-memory inference with the shared preprocessing of training.

Axis conventions are :mod:`monai_uda.data.io`'s: NIfTI ``(X, Y, Z)``; TIFF stacks, ``.npy``,
NRRD/MHA ``(Z, Y, X)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from monai.data import MetaTensor

from monai_uda.data.io import read_array
from monai_uda.errors import UDAInputError
from monai_uda.inference.scaling import percentile_from_histogram
from monai_uda.transforms import unwrap_input_errors
from monai_uda.transforms.intensity import PERCENTILES

__all__ = ["SlideReader", "VolumeReader", "read_preprocessed"]


def read_preprocessed(transforms: Callable[[dict[str, Any]], dict[str, Any]], path: Path) -> MetaTensor:
    """Read ``path`` with the inference transforms (:func:`monai_uda.transforms.inference_transforms`):
    ``(C, *spatial)`` network input with its meta data; transform errors become one-line input errors."""
    with unwrap_input_errors():
        return transforms({"image": str(path)})["image"]


class SlideReader:
    """Regions of a 2D image as ``(h, w, C)`` arrays of its own dtype, decoding only the tiles needed.

    Tiled TIFFs (incl. pyramidal/OME-TIFF, level 0, channels last) are read tile by tile with a
    small LRU cache of decoded tiles; other images are read whole with
    :func:`monai_uda.data.io.read_array`.

    Args:
        path: the image.
        cache_tiles: decoded tiles kept (least recently used dropped). The default holds the tiles
            of two neighbouring windows, so their overlap is decoded once; the overlap of two
            window rows is decoded again, as keeping a row of tiles across a wide slide would
            cost more memory than decoding a tile again costs time.
    """

    def __init__(self, path: str | Path, cache_tiles: int = 32) -> None:
        self.path = Path(path)
        self._tif: tifffile.TiffFile | None = None
        self._array: np.ndarray | None = None
        if self.path.suffix.lower() in (".tif", ".tiff") and self.path.is_file():
            try:
                tif = tifffile.TiffFile(self.path)
            except Exception as exc:
                raise UDAInputError(f"cannot read image ({type(exc).__name__}: {exc})", self.path) from exc
            page = tif.series[0].levels[0].keyframe
            if (
                page.is_tiled
                and page.imagedepth == 1
                and len(page.shape) in (2, 3)
                and (page.samplesperpixel == 1 or page.planarconfig == 1)
            ):
                self._tif, self._page = tif, page
                self.shape = tuple(int(s) for s in page.shape[:2])
                self.channels = int(page.samplesperpixel)
                self.dtype = np.dtype(page.dtype)
                self.tile_shape = (int(page.tilelength), int(page.tilewidth))
                self._tiles_across = math.ceil(self.shape[1] / self.tile_shape[1])
                self.tile = functools.lru_cache(maxsize=cache_tiles)(self._decode_tile)
                return
            tif.close()
        array, _ = read_array(self.path)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3 or array.shape[-1] > 4:
            raise UDAInputError(f"expected a 2D grey or RGB(A) image, got shape {array.shape}", self.path)
        self._array = array[..., :3] if array.shape[-1] == 4 else array
        self.shape = tuple(int(s) for s in self._array.shape[:2])
        self.channels = int(self._array.shape[-1])
        self.dtype = self._array.dtype
        self.tile_shape = (256, 256)

    def _decode_tile(self, ty: int, tx: int) -> np.ndarray:
        index = ty * self._tiles_across + tx
        page = self._page
        segments = self._tif.filehandle.read_segments(
            [page.dataoffsets[index]], [page.databytecounts[index]], indices=[index]
        )
        data, index = next(iter(segments))
        tile, _, _ = page.decode(data, index)
        if tile is None:  # sparse (empty) tile
            return np.zeros((*self.tile_shape, self.channels), dtype=self.dtype)
        return tile.reshape(*self.tile_shape, self.channels)

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Pixels ``[y0:y0+h, x0:x0+w]`` (must lie inside the image) as ``(h, w, C)``."""
        if self._array is not None:
            return self._array[y0 : y0 + h, x0 : x0 + w]
        th, tw = self.tile_shape
        out = np.empty((h, w, self.channels), dtype=self.dtype)
        for ty in range(y0 // th, (y0 + h - 1) // th + 1):
            for tx in range(x0 // tw, (x0 + w - 1) // tw + 1):
                tile = self.tile(ty, tx)
                ys, xs = max(y0, ty * th), max(x0, tx * tw)
                ye, xe = min(y0 + h, (ty + 1) * th), min(x0 + w, (tx + 1) * tw)
                out[ys - y0 : ye - y0, xs - x0 : xe - x0] = tile[
                    ys - ty * th : ye - ty * th, xs - tx * tw : xe - tx * tw
                ]
        return out

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: samples taken for the percentiles of float volumes (integer volumes use an exact histogram)
MAX_PERCENTILE_SAMPLES = 1 << 24


class VolumeReader:
    """Channel-first slabs ``(C, rows, *rest)`` of a 3D volume along its first spatial axis.

    Args:
        path: NIfTI, ``.npy``, TIFF stack, NRRD or MHA file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        name = self.path.name.lower()
        self.meta: dict[str, Any] = {
            "format": next((s for s in (".nii.gz", ".nii") if name.endswith(s)), self.path.suffix.lower())
        }
        self._tif = None
        try:
            if self.meta["format"] in (".nii", ".nii.gz"):
                import nibabel as nib

                image = nib.load(str(self.path))
                self._source = image.dataobj
                self.meta["affine"] = np.asarray(image.affine, dtype=np.float64)
                self.meta["spacing"] = tuple(float(z) for z in image.header.get_zooms()[:3])
                self._channels_last = len(image.shape) == 4
            elif self.meta["format"] == ".npy":
                self._source = np.load(self.path, mmap_mode="r", allow_pickle=False)
                self._channels_last = self._source.ndim == 4
            elif self.meta["format"] in (".tif", ".tiff"):
                self._tif = tifffile.TiffFile(self.path)
                self._source = self._tif.series[0]
                self._channels_last = len(self._source.shape) == 4
                spacing = (self._tif.imagej_metadata or {}).get("spacing")
                self.meta["spacing"] = (float(spacing), 1.0, 1.0) if spacing else None
            else:
                self._source, meta = read_array(self.path)
                self.meta["spacing"] = meta.get("spacing")
                self._channels_last = self._source.ndim == 4
        except UDAInputError:
            raise
        except Exception as exc:
            raise UDAInputError(f"cannot read volume ({type(exc).__name__}: {exc})", self.path) from exc
        shape = tuple(int(s) for s in self._source.shape)
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] > 4):
            raise UDAInputError(
                f"expected a 3D volume (optionally with up to 4 channels last), got shape {shape}", self.path
            )
        self.shape = shape[:3]
        self.channels = shape[3] if len(shape) == 4 else 1
        self.dtype = np.dtype(self._source.dtype)
        self._slab: tuple[int, int, np.ndarray] | None = None

    def slab(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of axis 0 as ``(C, rows, *rest)`` in the file's dtype (the last slab is cached)."""
        if self._slab is None or self._slab[:2] != (start, stop):
            if self._tif is not None:
                data = self._tif.asarray(key=range(start, stop), series=0).reshape(
                    stop - start, *self._source.shape[1:]
                )
            else:
                data = np.asarray(self._source[start:stop])
            self._slab = (start, stop, np.moveaxis(data, -1, 0) if self._channels_last else data[None])
        return self._slab[2]

    def read(self, start: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
        """Window ``(C, *size)`` at ``start`` (reads, and caches, the window-high slab it lies in)."""
        block = self.slab(start[0], start[0] + size[0])
        return block[(slice(None), slice(None), *(slice(s, s + n) for s, n in zip(start[1:], size[1:])))]

    def intensity_range(self, slab_rows: int = 16) -> tuple[float, float]:
        """1st and 99.8th percentiles over all voxels and channels: exact (histogram) for 8/16-bit
        integers, else from an evenly strided sample of at most ``MAX_PERCENTILE_SAMPLES`` voxels."""
        integer = self.dtype.kind in "ub" and self.dtype.itemsize <= 2
        if integer:
            hist = np.zeros(1 << (8 * self.dtype.itemsize), dtype=np.int64)
        stride = max(1, math.ceil((math.prod(self.shape) * self.channels / MAX_PERCENTILE_SAMPLES) ** (1 / 3)))
        samples = []
        for start in range(0, self.shape[0], slab_rows):
            block = self.slab(start, min(start + slab_rows, self.shape[0]))
            if integer:
                hist += np.bincount(block.ravel(), minlength=hist.size)
            else:
                samples.append(
                    np.asarray(block[:, (-start) % stride :: stride, ::stride, ::stride], np.float64).ravel()
                )
        self._slab = None
        if integer:
            return tuple(percentile_from_histogram(hist, q) for q in PERCENTILES)
        values = np.concatenate(samples)
        if not np.isfinite(values).all():
            raise UDAInputError("volume contains NaN or infinite voxels", self.path)
        return tuple(float(np.percentile(values, q)) for q in PERCENTILES)

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
