"""Whole-slide instance detection in bounded memory (Mask R-CNN of CyC-PDAM and DARCNN).

:class:`SlideDetector` is :class:`~monai_uda.inference.detection.FolderDetector` for slides
that do not fit in memory (``inference_wsi.yaml`` of the detector bundles swaps one for the
other). It shares the slide side with :class:`~monai_uda.inference.wsi.SlideSegmenter`
(:class:`~monai_uda.inference.slides.SlideRun`: tiles decoded on demand, percentiles from one
streaming pass, blank glass skipped, tiled TIFF and CSV outputs) and the detection side with
``FolderDetector`` (:class:`~monai_uda.inference.detection.TiledDetection`): the same tile grid
(:func:`~monai_uda.inference.detection.tile_starts` over
the whole slide), the same per-tile candidates (cut where they touch a tile side inside the
slide) and the same greedy merge (:func:`~monai_uda.inference.detection.paint_candidate` in
:func:`~monai_uda.inference.detection.paint_order`). Tiles are detected tile row by tile row and
:class:`StreamingPainter` paints each candidate as soon as no candidate that must be painted
before it can still arrive, so a nucleus crossing tile rows is painted once, with one id, and
ids are unique across the slide.

Without tissue skipping the instances equal the in-memory ``FolderDetector``'s on the same
image, up to the numbering of the ids.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_uda.inference.detection import (
    Candidate,
    TiledDetection,
    paint_candidate,
    paint_order,
    tile_candidates,
    tile_starts,
)
from monai_uda.inference.readers import SlideReader
from monai_uda.inference.records import SLIDE_AXES, NucleiTable, concatenate_records, instance_records
from monai_uda.inference.slides import SlideRun, pop_slide_options
from monai_uda.inference.windows import Slab
from monai_uda.inference.writers import write_slide_outputs

__all__ = ["StreamingPainter", "SlideDetector"]


class StreamingPainter:
    """:func:`~monai_uda.inference.detection.detect_tiled`'s merge for candidates arriving tile row by tile row.

    ``detect_tiled`` paints all candidates of an image in one order (:func:`paint_order`, ties in
    arrival order). A candidate reads and writes only its own pixels
    (:func:`paint_candidate`), so any order that keeps the relative order of every two
    overlapping candidates paints the same instances (ids aside). After each tile row, the
    painter paints, in that order, every candidate that

    * ends above ``frontier``, the first row a later tile row covers (no later candidate can
      overlap it), and
    * overlaps no waiting candidate that comes before it;

    the others wait for the next tile row. Painted pixels never change: the rows above the
    frontier and above every waiting candidate are final and handed out, and each nucleus's
    record is written when it is painted.

    Memory: the rows from the highest waiting candidate to the lowest candidate received (about a
    tile plus the overlap; at most ``max_pending_rows`` plus a tile) times the slide width, 5 bytes
    a pixel (``uint32`` ids and a ``bool`` map of the waiting candidates while painting), plus the
    waiting candidates' cropped masks. It does not grow with the slide height.

    Args:
        shape: ``(height, width)`` of the slide.
        min_size: smallest instance (pixels) kept.
        duplicate_overlap: see :func:`~monai_uda.inference.detection.paint_instances`.
        max_pending_rows: a candidate ending above the frontier and starting more than this many
            rows above it is painted even if an overlapping candidate before it still waits. Only a
            chain of overlapping candidates in decreasing order, each waiting for the one before,
            that long reaches this (no nuclei do); it changes at most who keeps the pixels contested
            within that chain.
        axis_names: names of the axes in the nuclei records.
    """

    def __init__(
        self,
        shape: Sequence[int],
        min_size: int = 5,
        duplicate_overlap: float = 0.5,
        max_pending_rows: int = 1024,
        axis_names: Sequence[str] = SLIDE_AXES,
    ) -> None:
        self.width = int(shape[1])
        self.min_size = min_size
        self.duplicate_overlap = duplicate_overlap
        self.max_pending_rows = max_pending_rows
        self.axis_names = tuple(axis_names)
        self.origin = 0  # image row of self.instances[0]
        self.instances = np.zeros((0, self.width), dtype=np.uint32)
        self.pending: list[Candidate] = []  # waiting candidates, in arrival order
        self.next_id = 1

    def push(self, candidates: list[Candidate], frontier: int) -> tuple[list[Slab], np.ndarray]:
        """Add the candidates of the next tile row; paint those that need not wait; hand out the final rows.

        Args:
            candidates: the tile row's candidates in arrival order (tiles left to right).
            frontier: first row of the next tile row; the slide height after the last one.

        Returns:
            ``([(start_row, uint32 ids)], records)``: the rows made final and the nuclei painted
            (:func:`~monai_uda.inference.records.instance_records` columns, slide coordinates).
        """
        self.pending += candidates
        bottom = max([frontier, *(c.y0 + c.mask.shape[0] for c in self.pending)])
        if bottom > self.origin + self.instances.shape[0]:
            grow = np.zeros((bottom - self.origin - self.instances.shape[0], self.width), dtype=np.uint32)
            self.instances = np.concatenate([self.instances, grow])
        waiting = np.zeros(self.instances.shape, dtype=bool)  # pixels of the waiting candidates
        waits: set[int] = set()
        records: list[np.ndarray] = []
        for cand in sorted(self.pending, key=paint_order):
            h, w = cand.mask.shape
            box = (slice(cand.y0 - self.origin, cand.y0 - self.origin + h), slice(cand.x0, cand.x0 + w))
            if cand.y0 + h > frontier or (
                cand.y0 >= frontier - self.max_pending_rows and waiting[box][cand.mask].any()
            ):
                waiting[box] |= cand.mask
                waits.add(id(cand))
                continue
            painted = paint_candidate(
                self.instances, cand, self.next_id, self.min_size, self.duplicate_overlap, self.origin
            )
            if painted is not None:
                records.append(
                    instance_records(painted.view(np.uint8), self.axis_names, self.next_id - 1, (cand.y0, cand.x0))
                )
                self.next_id += 1
        self.pending = [c for c in self.pending if id(c) in waits]
        final = min([frontier, *(c.y0 for c in self.pending)]) - self.origin
        slab = (self.origin, self.instances[:final])
        self.instances = self.instances[final:]
        self.origin += final
        return ([slab] if final > 0 else []), concatenate_records(records, self.axis_names)


class SlideDetector:
    """Detect the nuclei of whole slides of any size in bounded memory (see the module docstring).

    For every input ``<stem>`` it writes ``<stem>_instances.tif`` (``uint32`` ids, tiled),
    ``<stem>_mask.tif`` (``uint8`` 0/255, tiled) and ``<stem>_nuclei.csv``, as
    :class:`~monai_uda.inference.wsi.SlideSegmenter`. Memory is that of :class:`StreamingPainter`
    plus one tile and its detections: it grows with the slide width, not its height.

    Args:
        network, input_dir, output_dir: as for :class:`~monai_uda.inference.detection.FolderDetector`.
        max_pending_rows: see :class:`StreamingPainter`; default ``tile_size``.
        kwargs: ``channels`` (default 3), ``invert``, ``value_range`` (as for ``FolderDetector``) and
            ``tissue`` (skips tiles over glass), ``thumbnail_size``, ``tile`` (see
            :class:`~monai_uda.inference.slides.SlideRun`); the rest configure the detector (see
            :class:`~monai_uda.inference.detection.TiledDetection`; ``spatial_dims`` is 2,
            ``overlay`` is accepted and unused).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        input_dir: str,
        output_dir: str,
        max_pending_rows: int | None = None,
        **kwargs: Any,
    ) -> None:
        options = {"channels": 3, **pop_slide_options(kwargs)}
        self.slides = SlideRun(input_dir, output_dir, **options, window_name="tile", in_memory="FolderDetector")
        for name in ("spatial_dims", "overlay"):
            kwargs.pop(name, None)
        self.detector = TiledDetection(network, spatial_dims=2, **kwargs)
        self.max_pending_rows = max_pending_rows or int(self.detector.tiled["tile_size"])

    def segment_file(self, path: str | Path) -> dict[str, Any]:
        """Detect the nuclei of one slide and write its outputs; returns the record of :meth:`SlideRun.segment_file`."""
        return self.slides.segment_file(path, self.detector.roi_size, self._grid, self._infer, self.detector)

    def _grid(self, shape: tuple[int, int]) -> list[tuple[int, int]]:
        """``FolderDetector``'s tile grid over the whole slide, in raster order."""
        size, overlap = int(self.detector.tiled["tile_size"]), int(self.detector.tiled["overlap"])
        return [(y, x) for y in tile_starts(shape[0], size, overlap) for x in tile_starts(shape[1], size, overlap)]

    def _infer(
        self,
        reader: SlideReader,
        windows: list[tuple[int, int]],
        scale: Callable[[np.ndarray], torch.Tensor],
        paths: dict[str, Path],
    ) -> int:
        """Tiles (those with tissue) -> detector -> candidates -> :class:`StreamingPainter`, tile row by tile row."""
        tiled = self.detector.tiled
        size = int(tiled["tile_size"])
        painter = StreamingPainter(reader.shape, tiled["min_size"], tiled["duplicate_overlap"], self.max_pending_rows)
        rows = tile_starts(reader.shape[0], size, int(tiled["overlap"]))
        columns: dict[int, list[int]] = defaultdict(list)
        for y0, x0 in windows:
            columns[y0].append(x0)

        def slabs(table: NucleiTable) -> Iterator[Slab]:
            for row, y0 in enumerate(rows):
                candidates: list[Candidate] = []
                for x0 in columns[y0]:
                    tile = scale(np.moveaxis(reader.read(y0, x0, size, size), -1, 0)[None])[0]
                    start = time.perf_counter()
                    detections = self.detector.detect(tile)
                    self.detector.network_seconds += time.perf_counter() - start
                    candidates += tile_candidates(
                        detections,
                        y0,
                        x0,
                        (size, size),
                        reader.shape,
                        tiled["score_threshold"],
                        tiled["mask_threshold"],
                    )
                final, records = painter.push(candidates, rows[row + 1] if row + 1 < len(rows) else reader.shape[0])
                table.writerows(records)
                yield from final

        write_slide_outputs(paths, reader.shape, slabs, self.slides.tile)
        return painter.next_id - 1

    def run(self) -> list[dict[str, Any]]:
        """Detect the nuclei of every slide of ``input_dir``; one record per slide (see :meth:`segment_file`)."""
        return self.slides.folder.run(self.segment_file)
