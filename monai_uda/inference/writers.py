"""Writers of the runners' outputs: whole images, tiled TIFFs streamed tile by tile, memory-mapped volumes.

* :func:`write_image_outputs`: mask, instance map and overlay of an image held in memory;
* :func:`write_slide_outputs`: the instance ids of a whole slide as a zlib-compressed tiled TIFF
  written tile row by tile row from a generator (``tifffile.TiffWriter.write``), then the binary
  mask from it, and one CSV row per nucleus as nuclei complete;
* :class:`MemmapVolumeWriter`: a 3D output filled slab by slab in a memory-mapped file
  (uncompressed NIfTI, gzip-compressed afterwards as a stream for ``.nii.gz``, or ``.npy``).

Every output is written to a temporary file and moved in place when complete (:mod:`monai_uda.files`).
"""

from __future__ import annotations

import gzip
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from monai.data import MetaTensor

from monai_uda.data.io import write_array
from monai_uda.errors import UDAInputError
from monai_uda.files import atomic_write, commit, output_target, temporary_sibling
from monai_uda.inference.overlay import save_overlay
from monai_uda.inference.readers import SlideReader
from monai_uda.inference.records import SLIDE_AXES, NucleiTable, nuclei_table
from monai_uda.inference.threads import default_workers
from monai_uda.inference.windows import Slab

__all__ = [
    "MemmapVolumeWriter",
    "ZLIB_LEVEL",
    "tile_rows",
    "volume_geometry",
    "write_image_outputs",
    "write_slide_outputs",
    "write_tiled_tiff",
]

#: zlib level of the written TIFFs: the fastest (see :func:`write_tiled_tiff`)
ZLIB_LEVEL = 1


def volume_geometry(affine: np.ndarray | None, spacing: Sequence[float] | None) -> dict[str, Any]:
    """:func:`~monai_uda.data.io.write_array` meta for a 3D output: the input's NIfTI ``affine`` when
    there is one, else its ``spacing`` (a TIFF z-step ``z`` gives ``(z, 1, 1)``), else nothing."""
    if affine is not None:
        return {"affine": np.asarray(affine)}
    if spacing and len(spacing) == 1:
        spacing = (spacing[0], 1.0, 1.0)
    return {"spacing": tuple(spacing)} if spacing and len(spacing) == 3 else {}


def write_image_outputs(
    paths: dict[str, Path], image: MetaTensor, instances: np.ndarray, write_meta: dict[str, Any]
) -> int:
    """Write the outputs of one image segmented in memory; returns the number of instances.

    ``paths["mask"]`` (2D: ``uint8`` 0/255; 3D: 0/1), ``paths["instances"]`` (``uint16``, ``uint32``
    beyond 65535 ids) with ``write_meta`` (3D geometry) and, given, ``paths["overlay"]`` (instance
    boundaries over ``image``).
    """
    n_instances = int(instances.max())
    instances = instances.astype(np.uint16 if n_instances < 2**16 else np.uint32)
    mask = (instances > 0).astype(np.uint8) * (255 if instances.ndim == 2 else 1)
    write_array(paths["mask"], mask, write_meta)
    write_array(paths["instances"], instances, write_meta)
    if "overlay" in paths:
        save_overlay(paths["overlay"], image.numpy(), instances)
    return n_instances


def tile_rows(slabs: Iterator[tuple[int, np.ndarray]], width: int, tile: int, dtype: np.dtype) -> Iterator[np.ndarray]:
    """Cut a stream of row slabs ``(start, (h, W))`` into ``tile x tile`` tiles in raster order (edges zero-padded).

    Tiles are filled from the pending slabs piece by piece: no tile-row-high copy across the slide is made.
    """
    pending: list[np.ndarray] = []
    rows = 0

    def emit(n: int) -> Iterator[np.ndarray]:
        """The first ``n <= tile`` pending rows as a row of tiles; then drops them."""
        for x0 in range(0, width, tile):
            out = np.zeros((tile, tile), dtype=dtype)
            y = 0
            for piece in pending:
                part = piece[: n - y, x0 : x0 + tile]
                out[y : y + part.shape[0], : part.shape[1]] = part
                y += part.shape[0]
                if y == n:
                    break
            yield out
        while n:
            if pending[0].shape[0] <= n:
                n -= pending.pop(0).shape[0]
            else:  # a copy: the rest of the slab is not kept alive by a view
                pending[0], n = pending[0][n:].copy(), 0

    for _, slab in slabs:
        if slab.shape[0]:
            pending.append(np.asarray(slab, dtype=dtype))
            rows += slab.shape[0]
        while rows >= tile:
            yield from emit(tile)
            rows -= tile
    if rows:
        yield from emit(rows)


def write_tiled_tiff(
    path: Path, tiles: Iterator[np.ndarray], shape: tuple[int, int], dtype: np.dtype, tile: int = 256, workers: int = 1
) -> Path:
    """Write raster-ordered ``tile x tile`` tiles as a zlib-compressed tiled TIFF, atomically.

    ``workers`` threads compress the tiles, taking a few MB of them from the generator at a time
    (tifffile's ``buffersize``; its default would take hundreds of MB and undo the streaming).
    zlib's fastest level (:data:`ZLIB_LEVEL`): instance maps compress well at any level, and
    the compression runs once per tile of the whole slide.
    """
    bigtiff = shape[0] * shape[1] * np.dtype(dtype).itemsize > 2**31
    with atomic_write(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as writer:
        writer.write(
            tiles,
            shape=shape,
            dtype=dtype,
            tile=(tile, tile),
            compression="zlib",
            compressionargs={"level": ZLIB_LEVEL},
            maxworkers=workers,
            buffersize=4 * 2**20,
        )
    return path


def write_slide_outputs(
    paths: dict[str, Path], shape: tuple[int, int], slabs: Callable[[NucleiTable], Iterator[Slab]], tile: int = 256
) -> None:
    """Write the outputs of one slide of ``shape``: ``slabs(table)`` yields the final instance rows
    ``(start, (h, W) ids)`` top to bottom and writes their nuclei to ``table`` (``paths["table"]``);
    ``paths["instances"]`` is written from them, ``paths["mask"]`` from the instance TIFF."""
    with nuclei_table(paths["table"], SLIDE_AXES) as table:
        tiles = tile_rows(slabs(table), shape[1], tile, np.dtype(np.uint32))
        write_tiled_tiff(paths["instances"], tiles, shape, np.uint32, tile, default_workers())
    with SlideReader(paths["instances"], cache_tiles=1) as instances:
        rows, cols = (math.ceil(s / tile) for s in shape)
        masks = (
            (instances.tile(ty, tx)[..., 0] > 0).astype(np.uint8) * 255 for ty in range(rows) for tx in range(cols)
        )
        write_tiled_tiff(paths["mask"], masks, shape, np.uint8, tile, default_workers())


class MemmapVolumeWriter:
    """A 3D output array on disk, filled slab by slab, then moved in place atomically.

    ``.nii``/``.nii.gz``: NIfTI-1 with ``affine`` (or a diagonal one from ``spacing``), data
    memory-mapped in Fortran order; ``.nii.gz`` is gzip-compressed from it as a stream on
    :meth:`close`. ``.npy``: :func:`numpy.lib.format.open_memmap`.
    """

    NIFTI_OFFSET = 352

    def __init__(
        self, path: Path, shape: tuple[int, ...], dtype: np.dtype, affine: np.ndarray | None = None, spacing: Any = None
    ) -> None:
        self.path = path
        self.gzip = path.name.lower().endswith(".nii.gz")
        suffix = ".npy" if path.suffix.lower() == ".npy" else ".nii"
        if suffix == ".nii" and not path.name.lower().endswith((".nii", ".nii.gz")):
            raise UDAInputError(f"volume outputs must be .nii, .nii.gz or .npy, got {path.name}", path)
        self.target = output_target(path)  # through a symlink; devices and FIFOs refused (monai_uda.files)
        self.tmp = temporary_sibling(self.target.with_name(self.target.name[:-3]) if self.gzip else self.target)
        if suffix == ".npy":
            self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=shape)
            return
        import nibabel as nib

        if affine is None:
            affine = np.diag(list(spacing or (1.0, 1.0, 1.0))[:3] + [1.0])
        header = nib.Nifti1Image(np.zeros((1, 1, 1), dtype=dtype), np.asarray(affine)).header
        header.set_data_shape(shape)
        header["vox_offset"] = self.NIFTI_OFFSET
        with open(self.tmp, "wb") as handle:
            header.write_to(handle)
            handle.write(b"\0" * (self.NIFTI_OFFSET - handle.tell()))
            handle.truncate(self.NIFTI_OFFSET + math.prod(shape) * np.dtype(dtype).itemsize)
        self.array = np.memmap(self.tmp, dtype=dtype, mode="r+", offset=self.NIFTI_OFFSET, shape=shape, order="F")

    def write(self, start: int, slab: np.ndarray) -> None:
        self.array[start : start + slab.shape[0]] = slab

    def close(self) -> Path:
        self.array.flush()
        del self.array
        if self.gzip:
            with (
                open(self.tmp, "rb") as source,
                gzip.open(self.tmp.with_suffix(".gz"), "wb", compresslevel=1) as target,
            ):
                shutil.copyfileobj(source, target, length=1 << 24)
            self.tmp.unlink()
            self.tmp = self.tmp.with_suffix(".gz")
        commit(self.tmp, self.target)
        return self.path

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)
