"""Whole-volume segmentation in bounded memory: 3D sliding window, 3D instances, memory-mapped outputs.

:class:`VolumeSegmenter` is :class:`~monai_uda.inference.segment.FolderSegmenter` (3D) for
volumes too large to hold with their probability and instance maps. It composes the volume
reader (:class:`~monai_uda.inference.readers.VolumeReader`, slab by slab along the first axis),
the network stage (:class:`~monai_uda.inference.network.SegmentationNetwork`), the streaming core
(:class:`~monai_uda.inference.streaming.StreamingSegmentation`: windows of MONAI's grid blended
slab by slab, every 3D nucleus labelled once, as soon as it is complete) and memory-mapped writers
(:class:`~monai_uda.inference.writers.MemmapVolumeWriter`): uncompressed NIfTI (gzip-compressed
afterwards, streaming, for ``.nii.gz``) or ``.npy``.

NIfTI outputs get the input's affine unchanged; other formats their spacing. NIfTI (uncompressed:
memory-mapped; ``.nii.gz``: decompressed slab by slab), ``.npy`` (memory-mapped) and TIFF stacks
(page by page) are never read whole; NRRD/MHA are read whole by ITK.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_uda.errors import UDAInputError
from monai_uda.inference.folder import ImageFolder, folder_output_names
from monai_uda.inference.network import SegmentationNetwork
from monai_uda.inference.readers import VolumeReader
from monai_uda.inference.records import nuclei_table
from monai_uda.inference.scaling import window_scaler
from monai_uda.inference.streaming import StreamingSegmentation
from monai_uda.inference.windows import window_starts
from monai_uda.inference.writers import MemmapVolumeWriter

__all__ = ["VolumeSegmenter"]


class VolumeSegmenter:
    """Segment 3D volumes of any size in bounded memory (see the module docstring).

    For every input ``<stem>`` it writes ``<stem>_mask`` (``uint8`` 0/1), ``<stem>_instances``
    (``uint32`` 3D ids) with the input's affine/spacing, and ``<stem>_nuclei.csv`` (id, centroid,
    volume in voxels as ``area``, bounding box; voxel indices in the array's axis order).

    Args:
        network, input_dir, output_dir, channels, invert, value_range, mask_ext, instance_ext: as
            for :class:`FolderSegmenter` (extensions ``.nii.gz`` (default), ``.nii`` or ``.npy``).
        group_width: see :class:`~monai_uda.inference.labeller.StreamingInstanceLabeller`.
        prefetch_slabs, postprocess_workers: see :class:`~monai_uda.inference.streaming.StreamingSegmentation`.
        network_kwargs: roi_size, sw_batch_size, overlap, mode, device, ckpt_path, ckpt_key,
            output_activation, threshold, postprocess, min_size, amp, padding_mode: as for
            :class:`FolderSegmenter` (``spatial_dims`` is 3; ``overlay`` is accepted and unused).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        input_dir: str,
        output_dir: str,
        group_width: int = 512,
        channels: int = 1,
        invert: bool = False,
        value_range: Sequence[float] = (0.0, 1.0),
        mask_ext: str | None = None,
        instance_ext: str | None = None,
        prefetch_slabs: int | None = None,
        postprocess_workers: int | None = None,
        **network_kwargs: Any,
    ) -> None:
        for name in ("spatial_dims", "overlay"):
            network_kwargs.pop(name, None)
        self.model = SegmentationNetwork(network, spatial_dims=3, **network_kwargs)
        self.stream = StreamingSegmentation(self.model, group_width, prefetch_slabs, postprocess_workers)
        self.scaling = {
            "value_range": tuple(float(v) for v in value_range),
            "channels": int(channels),
            "invert": bool(invert),
        }
        names = folder_output_names(mask_ext or ".nii.gz", instance_ext or ".nii.gz", table=True)
        self.folder = ImageFolder(input_dir, output_dir, names)

    def segment_file(self, path: str | Path) -> dict[str, Any]:
        """Segment one volume and write its outputs; returns :meth:`FolderSegmenter.run`'s record plus ``table``."""
        path = Path(path)
        start_time = time.perf_counter()
        self.model.network_seconds = 0.0
        paths = self.folder.output_paths(path)
        reader = VolumeReader(path)
        try:
            roi = self.model.roi_size
            if any(s < r for s, r in zip(reader.shape, roi)):
                raise UDAInputError(
                    f"volume {reader.shape} is smaller than the window {roi}; use FolderSegmenter (inference.yaml)",
                    path,
                )
            scale = window_scaler(*reader.intensity_range(), **self.scaling)
            windows = window_starts(reader.shape, roi, float(self.model.inferer.overlap))
            geometry = {"affine": reader.meta.get("affine"), "spacing": reader.meta.get("spacing")}
            axes = ("i", "j", "k") if "affine" in reader.meta else ("z", "y", "x")
            n_instances = self._write_outputs(reader, windows, scale, paths, geometry, axes)
        finally:
            reader.close()
        record = self.folder.record(path, paths)
        record.update(
            n_instances=n_instances,
            seconds=time.perf_counter() - start_time,
            network_seconds=self.model.network_seconds,
        )
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
        roi = self.model.roi_size
        labeller = self.stream.labeller(axes)
        instances = MemmapVolumeWriter(paths["instances"], reader.shape, np.dtype(np.uint32), **geometry)
        mask = MemmapVolumeWriter(paths["mask"], reader.shape, np.dtype(np.uint8), **geometry)
        try:
            with nuclei_table(paths["table"], axes) as table:
                for start, slab in self.stream.instance_slabs(
                    lambda s: reader.read(s, roi), reader.shape, windows, scale, labeller, table
                ):
                    instances.write(start, slab)
                    mask.write(start, (slab > 0).astype(np.uint8))
                instances.close()
                mask.close()
        except BaseException:
            instances.discard()
            mask.discard()
            raise
        return labeller.next_id - 1

    def run(self) -> list[dict[str, Any]]:
        """Segment every volume of ``input_dir``; one record per volume (see :meth:`segment_file`)."""
        return self.folder.run(self.segment_file)
