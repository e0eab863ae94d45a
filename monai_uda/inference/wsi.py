"""Whole-slide segmentation in bounded memory: tiled TIFF in, tiled TIFF masks and a nuclei table out.

:class:`SlideSegmenter` is :class:`~monai_uda.inference.segment.FolderSegmenter` for slides that
do not fit in memory (``inference_wsi.yaml`` of a bundle swaps one for the other). It composes:

1. the slide side (:class:`~monai_uda.inference.slides.SlideRun`): tiles decoded on demand,
   percentiles and a tissue mask from one streaming pass, windows over blank glass skipped;
2. the network stage (:class:`~monai_uda.inference.network.SegmentationNetwork`) on windows of
   MONAI's sliding-window grid (:func:`~monai_uda.inference.windows.window_starts`);
3. the streaming core (:class:`~monai_uda.inference.streaming.StreamingSegmentation`): windows
   blended slab by slab, slabs thresholded and instance-labelled as components complete, so a
   nucleus crossing a tile border keeps one id and ids are unique across the slide;
4. the writers (:func:`~monai_uda.inference.writers.write_slide_outputs`).

Without tissue skipping the mask equals the in-memory ``FolderSegmenter``'s on the same image.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_uda.inference.network import SegmentationNetwork
from monai_uda.inference.readers import SlideReader
from monai_uda.inference.records import SLIDE_AXES
from monai_uda.inference.slides import SlideRun, pop_slide_options
from monai_uda.inference.streaming import StreamingSegmentation
from monai_uda.inference.windows import window_starts
from monai_uda.inference.writers import write_slide_outputs

__all__ = ["SlideSegmenter"]

#: in-memory arguments a slide runner accepts and ignores (2D only; its outputs are fixed tiled TIFFs)
_FOLDER_ONLY = ("spatial_dims", "overlay", "mask_ext", "instance_ext")


class SlideSegmenter:
    """Segment whole slides of any size in bounded memory (see the module docstring).

    For every input ``<stem>`` it writes ``<stem>_instances.tif`` (``uint32`` ids, tiled),
    ``<stem>_mask.tif`` (``uint8`` 0/255, tiled) and ``<stem>_nuclei.csv``.

    Args:
        network, input_dir, output_dir: as for :class:`~monai_uda.inference.segment.FolderSegmenter`.
        group_width: width of the groups post-processed together (see
            :class:`~monai_uda.inference.labeller.StreamingInstanceLabeller`).
        max_width: components wider than this (not nuclei: folds, pen marks, glass edges) are
            post-processed in pieces this wide (the labeller's ``max_width``).
        max_height: components taller than this are cut where they reach it (the labeller's
            ``max_open_rows``): at most this many rows wait for the next slab.
        prefetch_slabs, postprocess_workers: see :class:`~monai_uda.inference.streaming.StreamingSegmentation`.
        kwargs: ``channels``, ``invert``, ``value_range`` (as for ``FolderSegmenter``) and ``tissue``,
            ``thumbnail_size``, ``tile`` (see :class:`~monai_uda.inference.slides.SlideRun`); the rest
            configure the network as for ``FolderSegmenter`` (``spatial_dims`` is 2; ``overlay``,
            ``mask_ext`` and ``instance_ext`` are accepted and unused).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        input_dir: str,
        output_dir: str,
        group_width: int = 1024,
        max_width: int = 1024,
        max_height: int = 256,
        prefetch_slabs: int | None = None,
        postprocess_workers: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.slides = SlideRun(input_dir, output_dir, **pop_slide_options(kwargs))
        for name in _FOLDER_ONLY:
            kwargs.pop(name, None)
        self.model = SegmentationNetwork(network, spatial_dims=2, **kwargs)
        self.stream = StreamingSegmentation(self.model, group_width, prefetch_slabs, postprocess_workers)
        self.max_width = max_width
        self.max_height = max_height

    @property
    def postprocess_workers(self) -> int:
        return self.stream.postprocess_workers

    def segment_file(self, path: str | Path) -> dict[str, Any]:
        """Segment one slide and write its outputs; returns the record of :meth:`SlideRun.segment_file`."""
        roi = self.model.roi_size
        grid = lambda shape: window_starts(shape, roi, float(self.model.inferer.overlap))  # noqa: E731
        return self.slides.segment_file(path, roi, grid, self._infer, self.model)

    def _infer(
        self,
        reader: SlideReader,
        windows: list[tuple[int, int]],
        scale: Callable[[np.ndarray], torch.Tensor],
        paths: dict[str, Path],
    ) -> int:
        """Windows -> network -> blended slabs -> instances labelled as they complete (with the CSV)."""
        labeller = self.stream.labeller(SLIDE_AXES, max_open_rows=self.max_height, max_width=self.max_width)
        roi = self.model.roi_size
        read = lambda start: np.moveaxis(reader.read(*start, *roi), -1, 0)  # noqa: E731
        slabs = lambda table: self.stream.instance_slabs(read, reader.shape, windows, scale, labeller, table)  # noqa: E731
        write_slide_outputs(paths, reader.shape, slabs, self.slides.tile)
        return labeller.next_id - 1

    def run(self) -> list[dict[str, Any]]:
        """Segment every slide of ``input_dir``; one record per slide (see :meth:`segment_file`)."""
        return self.slides.folder.run(self.segment_file)
