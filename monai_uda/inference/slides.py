"""The whole-slide side of the slide runners: slide in, windows with tissue, tiled TIFFs and a nuclei table out.

:class:`SlideRun` is the part :class:`~monai_uda.inference.wsi.SlideSegmenter` and
:class:`~monai_uda.inference.wsi_detection.SlideDetector` hold. For one slide it opens a
:class:`~monai_uda.inference.readers.SlideReader`, scans it once
(:func:`~monai_uda.inference.tissue.scan_slide`: percentiles, thumbnail), drops the windows over
glass (:func:`~monai_uda.inference.tissue.tissue_mask`), scales windows as the in-memory path
(:func:`~monai_uda.inference.scaling.window_scaler`) and lets the runner's ``infer`` stream the
instance slabs into :func:`~monai_uda.inference.writers.write_slide_outputs`:
``<stem>_instances.tif``, ``<stem>_mask.tif`` and ``<stem>_nuclei.csv``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_uda import flag
from monai_uda.errors import UDAInputError
from monai_uda.inference.folder import ImageFolder
from monai_uda.inference.readers import SlideReader
from monai_uda.inference.scaling import percentile_from_histogram, window_scaler
from monai_uda.inference.threads import default_workers
from monai_uda.inference.tissue import scan_slide, tissue_mask
from monai_uda.transforms.intensity import PERCENTILES

__all__ = ["SLIDE_OPTIONS", "SlideRun", "pop_slide_options", "slide_output_names"]

#: ``infer(reader, windows, scale, paths) -> number of nuclei``: infers the windows and writes the outputs
InferFn = Callable[[SlideReader, list[tuple[int, int]], Callable[[np.ndarray], torch.Tensor], dict[str, Path]], int]


#: the keyword arguments of a slide runner that configure its :class:`SlideRun`
SLIDE_OPTIONS = ("channels", "invert", "value_range", "tissue", "thumbnail_size", "tile")


def pop_slide_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the :data:`SLIDE_OPTIONS` out of a runner's keyword arguments (the rest configure its network)."""
    return {name: kwargs.pop(name) for name in SLIDE_OPTIONS if name in kwargs}


def slide_output_names(stem: str) -> dict[str, str]:
    """The outputs of one slide: tiled TIFF mask and instances, nuclei CSV."""
    return {"mask": f"{stem}_mask.tif", "instances": f"{stem}_instances.tif", "table": f"{stem}_nuclei.csv"}


class SlideRun:
    """Slides of a folder, read, scanned and scaled for a runner that streams their outputs.

    Args:
        input_dir, output_dir: the folders (see :class:`~monai_uda.inference.folder.ImageFolder`).
        channels, invert, value_range: the preprocessing of in-memory inference.
        tissue: skip windows without tissue (RGB slides; Otsu on the thumbnail's saturation).
        thumbnail_size: long side of the thumbnail used for the tissue mask.
        tile: tile side of the output TIFFs.
        window_name: what a window is called in messages (``"window"``, ``"tile"``).
        in_memory: the in-memory runner to name for slides smaller than one window.
    """

    def __init__(
        self,
        input_dir: str,
        output_dir: str,
        channels: int = 1,
        invert: bool = False,
        value_range: Sequence[float] = (0.0, 1.0),
        tissue: bool = True,
        thumbnail_size: int = 1024,
        tile: int = 256,
        window_name: str = "window",
        in_memory: str = "FolderSegmenter",
    ) -> None:
        self.folder = ImageFolder(input_dir, output_dir, slide_output_names)
        self.scaling = {
            "value_range": tuple(float(v) for v in value_range),
            "channels": int(channels),
            "invert": flag(invert),
        }
        self.tissue = flag(tissue)
        self.thumbnail_size = thumbnail_size
        self.tile = tile
        self.window_name = window_name
        self.in_memory = in_memory

    def windows(
        self, reader: SlideReader, roi: tuple[int, ...], grid: Callable[[tuple[int, int]], list[tuple[int, int]]]
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], Callable[[np.ndarray], torch.Tensor]]:
        """All windows of the slide (``grid(shape)``), those with tissue, and the window scaler."""
        height, width = reader.shape
        factor = max(1, math.ceil(max(height, width) / self.thumbnail_size))
        hist, thumb = scan_slide(reader, factor, workers=default_workers())
        tissue = tissue_mask(thumb) if self.tissue else None
        all_windows = grid(reader.shape)
        windows = [
            (y, x)
            for y, x in all_windows
            if tissue is None
            or tissue[y // factor : -(-(y + roi[0]) // factor), x // factor : -(-(x + roi[1]) // factor)].any()
        ]
        if hist is not None:
            a_min, a_max = (percentile_from_histogram(hist, q) for q in PERCENTILES)
        else:
            a_min, a_max = (float(np.percentile(thumb, q)) for q in PERCENTILES)
        return all_windows, windows, window_scaler(a_min, a_max, **self.scaling)

    def segment_file(
        self,
        path: str | Path,
        roi: tuple[int, ...],
        grid: Callable[[tuple[int, int]], list[tuple[int, int]]],
        infer: InferFn,
        timed: Any,
    ) -> dict[str, Any]:
        """Segment one slide with ``infer`` over the windows of ``grid`` that hold tissue.

        Returns:
            The record of :meth:`ImageFolder.run` plus ``table``, ``windows``, ``windows_skipped``,
            ``fraction_skipped``, ``network_seconds`` (``timed.network_seconds``, reset here) and
            ``megapixels_per_s``.
        """
        path = Path(path)
        start = time.perf_counter()
        timed.network_seconds = 0.0
        paths = self.folder.output_paths(path)
        self.folder.output_dir.mkdir(parents=True, exist_ok=True)
        with SlideReader(path) as reader:
            height, width = reader.shape
            if height < roi[0] or width < roi[1]:
                message = (
                    f"slide {reader.shape} is smaller than the {self.window_name} {roi}; "
                    f"use {self.in_memory} (inference.yaml)"
                )
                raise UDAInputError(message, path)
            all_windows, windows, scale = self.windows(reader, roi, grid)
            n_instances = infer(reader, windows, scale, paths)
        seconds = time.perf_counter() - start
        skipped = len(all_windows) - len(windows)
        record = self.folder.record(path, paths)
        record.update(
            n_instances=n_instances, seconds=seconds, windows=len(all_windows), windows_skipped=skipped,
            fraction_skipped=skipped / len(all_windows), network_seconds=timed.network_seconds,
            megapixels_per_s=height * width / 1e6 / seconds,
        )
        skipped_text = (
            f"{skipped}/{len(all_windows)} {self.window_name}s skipped as blank ({record['fraction_skipped']:.1%})"
        )
        print(f"{path.name}: {n_instances} nuclei, {skipped_text}")
        return record
