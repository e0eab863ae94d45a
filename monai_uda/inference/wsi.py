"""Whole-slide inference in bounded memory: tiled TIFF in, tiled TIFF masks and a nuclei table out.

:class:`SlideSegmenter` is :class:`~monai_uda.inference.segment.FolderSegmenter` for slides
that do not fit in memory (``inference_wsi.yaml`` of a bundle swaps one for the other):

1. :class:`SlideReader` decodes only the TIFF tiles a region needs (tifffile, tiled/pyramidal
   TIFF and OME-TIFF level 0; MONAI's tifffile ``WSIReader`` would load the whole level).
   PNG and untiled TIFF are small images and are read whole.
2. One streaming pass (:func:`scan_slide`) gives the exact intensity histogram (integer
   images; the 1st/99.8th percentiles of the in-memory path) and a thumbnail. The tissue mask
   is Otsu's threshold of the thumbnail's saturation (RGB): windows without tissue are skipped
   and the fraction skipped is reported.
3. Windows of MONAI's sliding-window grid are read, scaled, batched through the network and
   blended slab by slab (:class:`~monai_uda.inference.tiles.StreamingBlender`); slabs are
   thresholded and instance-labelled as components complete
   (:class:`~monai_uda.inference.tiles.StreamingInstanceLabeller`): a nucleus crossing a tile
   border keeps one id, ids are unique across the slide. On a GPU (``prefetch_slabs``) the
   network runs in a worker thread while the previous slabs are labelled; the post-processing
   of a slab's groups, the scan's summaries and the TIFF compression run in a few threads
   (:func:`~monai_uda.inference.tiles.default_workers`).
4. Instance ids are written as a zlib-compressed tiled TIFF, tile row by tile row from a
   generator (``tifffile.TiffWriter.write``), then the binary mask from it; one CSV row per
   nucleus (id, centroid, area, bounding box) is written as nuclei complete.

Without tissue skipping the mask equals the in-memory ``FolderSegmenter``'s on the same image.
Steps 1, 2 and 4 are :class:`SlideInference`, shared with the detectors' streaming
:class:`~monai_uda.inference.wsi_detection.SlideDetector`.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from scipy import ndimage
from skimage.filters import threshold_otsu

from monai_uda.data.io import read_array
from monai_uda.errors import UDAInputError
from monai_uda.files import atomic_write
from monai_uda.inference.tiles import (
    SLIDE_AXES,
    NucleiTable,
    Slab,
    StreamingInstanceLabeller,
    StreamingSegmenter,
    default_workers,
    nuclei_table,
    ordered_map,
    window_starts,
)
from monai_uda.transforms.intensity import PERCENTILES

__all__ = [
    "SlideReader",
    "SlideInference",
    "SlideSegmenter",
    "scan_slide",
    "percentile_from_histogram",
    "tissue_mask",
    "write_tiled_tiff",
]


#: zlib level of the written TIFFs: the fastest (see :func:`write_tiled_tiff`)
ZLIB_LEVEL = 1


class SlideReader:
    """Regions of a 2D image as ``(h, w, C)`` arrays of its own dtype, decoding only the tiles needed.

    Tiled TIFFs (incl. pyramidal/OME-TIFF, level 0, channels last) are read tile by tile with a
    small LRU cache of decoded tiles; other images are read whole with
    :func:`monai_uda.data.io.read_array`.

    Args:
        path: the image.
        cache_tiles: decoded tiles kept (least recently used dropped). The default holds the tiles
            of two neighbouring 512-pixel windows, so their overlap is decoded once; the overlap
            of two window rows is decoded again (keeping a row of tiles across a 32k RGB slide
            would take 48 MB more; decoding a 256 x 256 tile again takes about 1 ms).
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
            if page.is_tiled and page.imagedepth == 1 and len(page.shape) in (2, 3) and (page.samplesperpixel == 1 or page.planarconfig == 1):
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
        segments = self._tif.filehandle.read_segments([page.dataoffsets[index]], [page.databytecounts[index]], indices=[index])
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
                out[ys - y0 : ye - y0, xs - x0 : xe - x0] = tile[ys - ty * th : ye - ty * th, xs - tx * tw : xe - tx * tw]
        return out

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scan_slide(reader: SlideReader, factor: int, chunk: int = 4096, workers: int = 1) -> tuple[np.ndarray | None, np.ndarray]:
    """One streaming pass: intensity histogram (integer images, all channels) and a thumbnail.

    Regions are read here and summarised in ``workers`` threads (:func:`~monai_uda.inference.tiles.ordered_map`).

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


def percentile_from_histogram(hist: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) of the integer values counted in ``hist``."""
    cumulative = np.cumsum(hist)
    position = q / 100.0 * (cumulative[-1] - 1)
    low, high = math.floor(position), math.ceil(position)
    v_low, v_high = (int(np.searchsorted(cumulative, k, side="right")) for k in (low, high))
    return v_low + (v_high - v_low) * (position - low)


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


def _tile_rows(slabs: Iterator[tuple[int, np.ndarray]], width: int, tile: int, dtype: np.dtype) -> Iterator[np.ndarray]:
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

    ``workers`` threads compress the tiles, taking about 4 MB of them (16 ``uint32`` tiles) from the
    generator at a time (tifffile's ``buffersize``; its default, hundreds of MB, would undo the
    streaming). zlib level 1 (:data:`ZLIB_LEVEL`): on instance tiles of a tissue-dense slide it
    takes 2.0 ms a tile instead of 9.8 ms at zlib's default 6, for files 1.4x larger (13% of the
    raw ``uint32`` size instead of 9%).
    """
    bigtiff = shape[0] * shape[1] * np.dtype(dtype).itemsize > 2**31
    with atomic_write(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as writer:
        writer.write(
            tiles, shape=shape, dtype=dtype, tile=(tile, tile), compression="zlib", compressionargs={"level": ZLIB_LEVEL},
            maxworkers=workers, buffersize=4 * 2**20,
        )
    return path


class SlideInference:
    """The whole-slide driver shared by :class:`SlideSegmenter` and
    :class:`~monai_uda.inference.wsi_detection.SlideDetector` (mixed in before their
    :class:`~monai_uda.inference.segment.FolderSegmenter` base).

    One slide: :class:`SlideReader`, :func:`scan_slide` (percentiles, thumbnail), the tissue mask
    (:func:`tissue_mask`) to drop windows over glass, the in-memory path's scaling
    (:meth:`~monai_uda.inference.segment.FolderSegmenter._scaler`); then the host's
    :meth:`_write_outputs` streams instance slabs into :meth:`_write_slide`, which writes
    ``<stem>_instances.tif``, ``<stem>_mask.tif`` and ``<stem>_nuclei.csv``.

    The host implements :meth:`_window_starts` and :meth:`_write_outputs`; its ``inferer.roi_size``
    is the window.

    Args:
        network, input_dir, output_dir: as for :class:`FolderSegmenter` (``spatial_dims`` is 2, no overlay).
        tissue: skip windows without tissue (RGB slides; Otsu on the thumbnail's saturation).
        thumbnail_size: long side of the thumbnail used for the tissue mask.
        tile: tile side of the output TIFFs.
        kwargs: the host's further arguments.
    """

    #: what a window is called in messages, and the in-memory inferer for slides smaller than one
    window_name = "window"
    in_memory = "FolderSegmenter"

    network_seconds: float
    output_dir: Path
    inferer: Any

    def __init__(
        self,
        network: torch.nn.Module,
        input_dir: str,
        output_dir: str,
        tissue: bool = True,
        thumbnail_size: int = 1024,
        tile: int = 256,
        **kwargs: Any,
    ) -> None:
        kwargs.update(spatial_dims=2, overlay=False)
        super().__init__(network, input_dir, output_dir, **kwargs)
        self.tissue = tissue
        self.thumbnail_size = thumbnail_size
        self.tile = tile

    def _output_paths(self, image_path: Path) -> dict[str, Path]:
        stem = self._stem(image_path)
        names = {"mask": f"{stem}_mask.tif", "instances": f"{stem}_instances.tif", "table": f"{stem}_nuclei.csv"}
        return {key: self.output_dir / name for key, name in names.items()}

    def _window_starts(self, shape: tuple[int, int]) -> list[tuple[int, int]]:
        """Top-left corners of all windows of a slide of ``shape``, in processing order."""
        raise NotImplementedError

    def _write_outputs(
        self, reader: SlideReader, windows: list[tuple[int, int]], scale: Callable[[np.ndarray], torch.Tensor], paths: dict[str, Path]
    ) -> int:
        """Infer ``windows`` (those with tissue) and write the outputs with :meth:`_write_slide`; returns the number of nuclei."""
        raise NotImplementedError

    def segment_file(self, path: str | Path) -> dict[str, Any]:
        """Segment one slide and write its outputs; returns the record of :meth:`FolderSegmenter.run` plus
        ``table``, ``windows``, ``windows_skipped``, ``fraction_skipped``, ``network_seconds`` and ``megapixels_per_s``."""
        path = Path(path)
        start = time.perf_counter()
        self.network_seconds = 0.0
        paths = self._output_paths(path)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with SlideReader(path) as reader:
            height, width = reader.shape
            roi = tuple(int(r) for r in self.inferer.roi_size)
            if height < roi[0] or width < roi[1]:
                message = f"slide {reader.shape} is smaller than the {self.window_name} {roi}; use {self.in_memory} (inference.yaml)"
                raise UDAInputError(message, path)
            factor = max(1, math.ceil(max(height, width) / self.thumbnail_size))
            hist, thumb = scan_slide(reader, factor, workers=default_workers())
            tissue = tissue_mask(thumb) if self.tissue else None
            all_windows = self._window_starts(reader.shape)
            windows = [
                (y, x) for y, x in all_windows
                if tissue is None or tissue[y // factor : -(-(y + roi[0]) // factor), x // factor : -(-(x + roi[1]) // factor)].any()
            ]
            if hist is not None:
                a_min, a_max = (percentile_from_histogram(hist, q) for q in PERCENTILES)
            else:
                a_min, a_max = (float(np.percentile(thumb, q)) for q in PERCENTILES)
            n_instances = self._write_outputs(reader, windows, self._scaler(a_min, a_max), paths)
        seconds = time.perf_counter() - start
        skipped = len(all_windows) - len(windows)
        record: dict[str, Any] = {"stem": self._stem(path), "image": str(path), **{key: str(p) for key, p in paths.items()}}
        record.update(
            n_instances=n_instances, seconds=seconds, windows=len(all_windows), windows_skipped=skipped,
            fraction_skipped=skipped / len(all_windows), network_seconds=self.network_seconds,
            megapixels_per_s=height * width / 1e6 / seconds,
        )
        skipped_text = f"{skipped}/{len(all_windows)} {self.window_name}s skipped as blank ({record['fraction_skipped']:.1%})"
        print(f"{path.name}: {n_instances} nuclei, {skipped_text}")
        return record

    def _write_slide(self, reader: SlideReader, paths: dict[str, Path], slabs: Callable[[NucleiTable], Iterator[Slab]]) -> None:
        """Write the outputs of one slide: ``slabs(table)`` yields the final instance rows ``(start, (h, W) ids)``
        top to bottom and writes their nuclei to ``table``; the mask TIFF is derived from the instance TIFF."""
        with nuclei_table(paths["table"], SLIDE_AXES) as table:
            tiles = _tile_rows(slabs(table), reader.shape[1], self.tile, np.dtype(np.uint32))
            write_tiled_tiff(paths["instances"], tiles, reader.shape, np.uint32, self.tile, default_workers())
        with SlideReader(paths["instances"], cache_tiles=1) as instances:
            rows, cols = (math.ceil(s / self.tile) for s in reader.shape)
            masks = ((instances.tile(ty, tx)[..., 0] > 0).astype(np.uint8) * 255 for ty in range(rows) for tx in range(cols))
            write_tiled_tiff(paths["mask"], masks, reader.shape, np.uint8, self.tile, default_workers())


class SlideSegmenter(SlideInference, StreamingSegmenter):
    """Segment whole slides of any size in bounded memory (see the module docstring).

    For every input ``<stem>`` it writes ``<stem>_instances.tif`` (``uint32`` ids, tiled),
    ``<stem>_mask.tif`` (``uint8`` 0/255, tiled) and ``<stem>_nuclei.csv``.

    Args:
        network, input_dir, output_dir, channels, invert, value_range, roi_size, sw_batch_size,
            overlap, mode, device, ckpt_path, ckpt_key, output_activation, threshold,
            postprocess, min_size, amp: as for :class:`FolderSegmenter` (``spatial_dims`` is 2).
        tissue, thumbnail_size, tile: see :class:`SlideInference` (default ``True``, 1024, 256).
        group_width: width of the groups post-processed together (see
            :class:`~monai_uda.inference.tiles.StreamingInstanceLabeller`).
        max_width: components wider than this (not nuclei: folds, pen marks, glass edges) are
            post-processed in pieces this wide (see
            :class:`~monai_uda.inference.tiles.StreamingInstanceLabeller`).
        max_height: components taller than this are cut where they reach it (its ``max_open_rows``):
            at most this many rows wait for the next slab.
        kwargs: further :class:`SlideInference` and :class:`FolderSegmenter` arguments (e.g. ``padding_mode``).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        input_dir: str,
        output_dir: str,
        group_width: int = 1024,
        max_width: int = 1024,
        max_height: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(network, input_dir, output_dir, group_width=group_width, **kwargs)
        self.max_width = max_width
        self.max_height = max_height

    def _window_starts(self, shape: tuple[int, int]) -> list[tuple[int, int]]:
        """MONAI's sliding-window grid (:func:`~monai_uda.inference.tiles.window_starts`)."""
        return window_starts(shape, tuple(self.inferer.roi_size), float(self.inferer.overlap))

    def _write_outputs(
        self, reader: SlideReader, windows: list[tuple[int, int]], scale: Callable[[np.ndarray], torch.Tensor], paths: dict[str, Path]
    ) -> int:
        """Windows -> network -> blended slabs -> instances labelled as they complete (with the CSV)."""
        labeller = StreamingInstanceLabeller(
            self._to_instances, SLIDE_AXES, group_width=self.group_width, max_open_rows=self.max_height, max_width=self.max_width,
            workers=self.postprocess_workers,
        )
        roi = tuple(self.inferer.roi_size)
        read = lambda start: np.moveaxis(reader.read(*start, *roi), -1, 0)  # noqa: E731
        self._write_slide(reader, paths, lambda table: self._instance_slabs(read, reader.shape, windows, scale, labeller, table))
        return labeller.next_id - 1
