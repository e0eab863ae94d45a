"""Whole-volume inference in bounded memory: 3D sliding window, 3D instances, memory-mapped outputs.

:class:`VolumeSegmenter` is :class:`~monai_uda.inference.segment.FolderSegmenter` (3D) for
volumes too large to hold with their probability and instance maps: the volume is read slab by
slab along its first axis (:class:`VolumeReader`), windows of MONAI's sliding-window grid are
blended slab by slab and every 3D nucleus is labelled once, as soon as it is complete
(:class:`~monai_uda.inference.tiles.StreamingSegmenter`), and the outputs are written into
memory-mapped files (:class:`MemmapVolumeWriter`): uncompressed NIfTI (gzip-compressed
afterwards, streaming, for ``.nii.gz``) or ``.npy``.

Axis conventions are :mod:`monai_uda.data.io`'s: NIfTI ``(X, Y, Z)`` with the input's affine
written back unchanged; TIFF stacks, ``.npy``, NRRD/MHA ``(Z, Y, X)`` with their spacing.
Memory: NIfTI (uncompressed: memory-mapped; ``.nii.gz``: decompressed slab by slab), ``.npy``
(memory-mapped) and TIFF stacks (page by page) are never read whole; NRRD/MHA are read whole
by ITK.
"""

from __future__ import annotations

import gzip
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_uda.data.io import read_array
from monai_uda.errors import UDAInputError
from monai_uda.files import commit, output_target, temporary_sibling
from monai_uda.inference.tiles import StreamingInstanceLabeller, StreamingSegmenter, nuclei_table, window_starts
from monai_uda.inference.wsi import percentile_from_histogram
from monai_uda.transforms.intensity import PERCENTILES

__all__ = ["VolumeReader", "MemmapVolumeWriter", "VolumeSegmenter"]

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
        self.meta: dict[str, Any] = {"format": next((s for s in (".nii.gz", ".nii") if name.endswith(s)), self.path.suffix.lower())}
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
                import tifffile

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
            raise UDAInputError(f"expected a 3D volume (optionally with up to 4 channels last), got shape {shape}", self.path)
        self.shape = shape[:3]
        self.channels = shape[3] if len(shape) == 4 else 1
        self.dtype = np.dtype(self._source.dtype)
        self._slab: tuple[int, int, np.ndarray] | None = None

    def slab(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of axis 0 as ``(C, rows, *rest)`` in the file's dtype (the last slab is cached)."""
        if self._slab is None or self._slab[:2] != (start, stop):
            if self._tif is not None:
                data = self._tif.asarray(key=range(start, stop), series=0).reshape(stop - start, *self._source.shape[1:])
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
                samples.append(np.asarray(block[:, (-start) % stride :: stride, ::stride, ::stride], np.float64).ravel())
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


class MemmapVolumeWriter:
    """A 3D output array on disk, filled slab by slab, then moved in place atomically.

    ``.nii``/``.nii.gz``: NIfTI-1 with ``affine`` (or a diagonal one from ``spacing``), data
    memory-mapped in Fortran order; ``.nii.gz`` is gzip-compressed from it as a stream on
    :meth:`close`. ``.npy``: :func:`numpy.lib.format.open_memmap`.
    """

    NIFTI_OFFSET = 352

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, affine: np.ndarray | None = None, spacing: Any = None) -> None:
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
            with open(self.tmp, "rb") as source, gzip.open(self.tmp.with_suffix(".gz"), "wb", compresslevel=1) as target:
                shutil.copyfileobj(source, target, length=1 << 24)
            self.tmp.unlink()
            self.tmp = self.tmp.with_suffix(".gz")
        commit(self.tmp, self.target)
        return self.path

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


class VolumeSegmenter(StreamingSegmenter):
    """Segment 3D volumes of any size in bounded memory (see the module docstring).

    For every input ``<stem>`` it writes ``<stem>_mask`` (``uint8`` 0/1), ``<stem>_instances``
    (``uint32`` 3D ids) with the input's affine/spacing, and ``<stem>_nuclei.csv`` (id, centroid,
    volume in voxels as ``area``, bounding box; voxel indices in the array's axis order).

    Args:
        network, input_dir, output_dir, channels, invert, value_range, roi_size, sw_batch_size,
            overlap, mode, device, ckpt_path, ckpt_key, output_activation, threshold,
            postprocess, min_size, amp, mask_ext, instance_ext: as for :class:`FolderSegmenter`
            (``spatial_dims`` is 3; extensions ``.nii.gz`` (default), ``.nii`` or ``.npy``).
        group_width: see :class:`~monai_uda.inference.tiles.StreamingInstanceLabeller`.
    """

    def __init__(self, network: torch.nn.Module, input_dir: str, output_dir: str, group_width: int = 512, **kwargs: Any) -> None:
        kwargs.update(spatial_dims=3, overlay=False)
        super().__init__(network, input_dir, output_dir, group_width=group_width, **kwargs)

    def _output_paths(self, image_path: Path) -> dict[str, Path]:
        paths = super()._output_paths(image_path)
        paths["table"] = self.output_dir / f"{self._stem(image_path)}_nuclei.csv"
        return paths

    def segment_file(self, path: str | Path) -> dict[str, Any]:
        """Segment one volume and write its outputs; returns :meth:`FolderSegmenter.run`'s record plus ``table``."""
        path = Path(path)
        start_time = time.perf_counter()
        self.network_seconds = 0.0
        paths = self._output_paths(path)
        reader = VolumeReader(path)
        try:
            roi = tuple(int(r) for r in self.inferer.roi_size)
            if any(s < r for s, r in zip(reader.shape, roi)):
                raise UDAInputError(f"volume {reader.shape} is smaller than the window {roi}; use FolderSegmenter (inference.yaml)", path)
            scale = self._scaler(*reader.intensity_range())
            windows = window_starts(reader.shape, roi, float(self.inferer.overlap))
            geometry = {"affine": reader.meta.get("affine"), "spacing": reader.meta.get("spacing")}
            axes = ("i", "j", "k") if "affine" in reader.meta else ("z", "y", "x")
            n_instances = self._write_outputs(reader, windows, scale, paths, geometry, axes)
        finally:
            reader.close()
        record: dict[str, Any] = {"stem": self._stem(path), "image": str(path), **{key: str(p) for key, p in paths.items()}}
        record.update(n_instances=n_instances, seconds=time.perf_counter() - start_time, network_seconds=self.network_seconds)
        return record

    def _write_outputs(
        self,
        reader: VolumeReader,
        windows: list[tuple[int, ...]],
        scale: Callable[[np.ndarray], torch.Tensor],
        paths: dict[str, Path],
        geometry: dict[str, Any],
        axes: tuple[str, ...],
    ) -> int:
        """Stream instances and mask into memory-mapped outputs and the nuclei CSV; returns the number of nuclei."""
        roi = tuple(int(r) for r in self.inferer.roi_size)
        labeller = StreamingInstanceLabeller(self._to_instances, axes, group_width=self.group_width, workers=self.postprocess_workers)
        instances = MemmapVolumeWriter(paths["instances"], reader.shape, np.dtype(np.uint32), **geometry)
        mask = MemmapVolumeWriter(paths["mask"], reader.shape, np.dtype(np.uint8), **geometry)
        try:
            with nuclei_table(paths["table"], axes) as table:
                for start, slab in self._instance_slabs(lambda s: reader.read(s, roi), reader.shape, windows, scale, labeller, table):
                    instances.write(start, slab)
                    mask.write(start, (slab > 0).astype(np.uint8))
                instances.close()
                mask.close()
        except BaseException:
            instances.discard()
            mask.discard()
            raise
        return labeller.next_id - 1
