"""Streaming sliding-window inference and instance labelling along the first spatial axis.

Whole slides (:mod:`monai_uda.inference.wsi`) and whole volumes
(:mod:`monai_uda.inference.volume`) are segmented without ever holding the image, the
probability map or the instance map in memory:

* :func:`window_starts` is the window grid of MONAI's
  :class:`~monai.inferers.SlidingWindowInferer` (same scan interval, same raster order);
* :class:`StreamingBlender` adds window outputs weighted by MONAI's importance map into a
  rolling buffer one window high along axis 0 and hands out every slab no later window can
  touch. Windows arrive in MONAI's order, so each pixel sums the same terms in the same order
  and the result equals the in-memory inferer's;
* :class:`StreamingInstanceLabeller` takes class-map slabs (0 background, >0 foreground) and
  labels every foreground connected component as soon as it is complete (it does not reach
  the newest slab): nuclei cut by a tile or slab border are labelled whole, once, with ids
  unique across the image. Complete components are post-processed in groups of bounded width
  by the same functions as in-memory inference (e.g.
  :func:`~monai_uda.inference.postprocess.binary_to_instances`).

With ``prefetch_slabs > 0`` (the default on a GPU) the network and blending run in a worker
thread, a few class-map slabs ahead of the labelling (:func:`in_background`), so post-processing
overlaps the network; on CPU they run in turn (both would share the same cores). The groups of
a slab are post-processed by ``postprocess_workers`` threads at once (:func:`ordered_map`; scipy,
scikit-image and ITK release the GIL) and given their ids in order, so the output does not depend
on the number of threads.

Memory is one window-high slab across axes 1.. (plus the rows of components still open), so it
does not grow with the length of axis 0 and grows only linearly with the other axes.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import functools
import itertools
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from queue import Full, Queue
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from scipy import ndimage
from tqdm import tqdm

from monai_uda.errors import UDAInputError
from monai_uda.files import atomic_write
from monai_uda.inference.postprocess import binary_to_instances, ternary_to_instances
from monai_uda.inference.segment import FolderSegmenter, to_probabilities

__all__ = [
    "window_starts",
    "in_background",
    "ordered_map",
    "default_workers",
    "trim_freed_memory",
    "StreamingBlender",
    "StreamingInstanceLabeller",
    "StreamingSegmenter",
    "Slab",
    "SLIDE_AXES",
    "instance_records",
    "record_fields",
    "record_dtype",
    "concatenate_records",
    "NucleiTable",
    "nuclei_table",
]

#: ``(start along axis 0, array)``: a finished slab of the output
Slab = tuple[int, Any]


def _move_rows_up(buffer: np.ndarray, start: int, stop: int) -> None:
    """Move ``buffer[start:stop]`` to ``buffer[:stop - start]`` in place.

    Blocks of ``start`` rows are copied top to bottom, so source and destination never overlap
    and numpy needs no temporary copy of the rows moved.
    """
    for dst in range(0, stop - start, max(start, 1)):
        n = min(start, stop - start - dst)
        buffer[dst : dst + n] = buffer[start + dst : start + dst + n]


def window_starts(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> list[tuple[int, ...]]:
    """Window start corners of MONAI's sliding-window inference, in its (raster) order.

    The scan interval is ``int(roi * (1 - overlap))`` (at least 1; the whole axis when the
    window spans it) and the last window of each axis ends at the image border
    (:func:`monai.data.utils.dense_patch_slices`). Every axis must be at least the window size.
    """
    if any(s < r for s, r in zip(image_size, roi_size)):
        raise ValueError(f"image size {tuple(image_size)} is smaller than the window {tuple(roi_size)}")
    interval = [r if r == s else max(int(r * (1 - overlap)), 1) for s, r in zip(image_size, roi_size)]
    return [tuple(int(s.start) for s in window) for window in dense_patch_slices(image_size, roi_size, interval)]


class StreamingBlender:
    """Blend window outputs of a sliding-window inference slab by slab along axis 0.

    Args:
        image_size: spatial size of the whole image.
        roi_size: window size.
        channels: output channels of the network.
        mode: ``"gaussian"`` or ``"constant"`` importance map
            (:func:`monai.data.utils.compute_importance_map`, as the inferer).
        sigma_scale: Gaussian sigma relative to the window size (the inferer's default 0.125).

    Windows must be added in the order of :func:`window_starts`. Windows may be skipped:
    pixels no added window covers come out as NaN.

    Only the weighted sum is buffered (``C x roi_size[0]`` rows across the image); the sum of the
    weights is made for the rows handed out, from the windows added over them (in the order they
    were added, so the values are those of summing as they come), when a slab is finished: while
    the network runs, the buffer holds one array less (64 MB across a 32k slide).
    """

    def __init__(
        self, image_size: Sequence[int], roi_size: Sequence[int], channels: int, mode: str = "gaussian", sigma_scale: float = 0.125
    ) -> None:
        self.image_size = tuple(int(s) for s in image_size)
        self.roi_size = tuple(int(r) for r in roi_size)
        weight = compute_importance_map(self.roi_size, mode=mode, sigma_scale=sigma_scale, device="cpu", dtype=torch.float32)
        self.weight = weight.numpy()
        self.acc = np.zeros((channels, self.roi_size[0], *self.image_size[1:]), dtype=np.float32)
        self.added: list[tuple[int, ...]] = []  # starts of the windows added over the buffer's rows
        self.origin = 0

    def add(self, start: Sequence[int], output: np.ndarray | torch.Tensor) -> Iterator[Slab]:
        """Add one window output ``(C, *roi_size)`` at ``start``; returns the slabs it finished (float32 arrays)."""
        finished = self._advance(int(start[0])) if start[0] > self.origin else iter(())
        rest = self._rest(start)
        output = output.detach().float().cpu().numpy() if isinstance(output, torch.Tensor) else np.asarray(output, np.float32)
        self.acc[(slice(None), slice(None), *rest)] += output * self.weight
        self.added.append(tuple(int(s) for s in start))
        return finished

    def _rest(self, start: Sequence[int]) -> tuple[slice, ...]:
        """The window at ``start`` along axes 1.. (all rows of the buffer cover them)."""
        return tuple(slice(s, s + r) for s, r in zip(start[1:], self.roi_size[1:]))

    def _weight_sum(self, rows: int) -> np.ndarray:
        """Sum of the importance weights of the added windows over the buffer's first ``rows`` rows."""
        total = np.zeros((rows, *self.image_size[1:]), dtype=np.float32)
        for start in self.added:
            top = max(start[0], self.origin)
            bottom = min(start[0] + self.roi_size[0], self.origin + rows)
            if bottom > top:
                total[(slice(top - self.origin, bottom - self.origin), *self._rest(start))] += self.weight[top - start[0] : bottom - start[0]]
        return total

    def _advance(self, new_origin: int) -> Iterator[Slab]:
        """Hand out rows ``[origin, new_origin)``: the buffer's, then uncovered (NaN) slabs for skipped window rows."""
        rows = new_origin - self.origin
        head = min(rows, self.roi_size[0])
        with np.errstate(invalid="ignore", divide="ignore"):
            slabs = [(self.origin, self.acc[:, :head] / self._weight_sum(head))]  # 0 / 0 = NaN where no window was added
        gaps = range(self.origin + head, new_origin, self.roi_size[0])
        shape = (self.acc.shape[0], *self.image_size[1:])
        # uncovered slabs are made one at a time as they are consumed (a blank stretch may be most of the image)
        gap_slabs = ((g, np.full((shape[0], min(self.roi_size[0], new_origin - g), *shape[1:]), np.nan, np.float32)) for g in gaps)
        for channel in self.acc:
            _move_rows_up(channel, head, self.roi_size[0])
        keep = self.roi_size[0] - head
        self.acc[:, keep:] = 0.0
        self.origin = new_origin
        self.added = [start for start in self.added if start[0] + self.roi_size[0] > new_origin]
        return itertools.chain(_handed_out(slabs), gap_slabs)

    def finish(self) -> Iterator[Slab]:
        """The last slabs, up to the end of axis 0."""
        return self._advance(self.image_size[0])


def _handed_out(slabs: list[Slab]) -> Iterator[Slab]:
    """Yield and forget the slabs of a list: the consumer holds the only reference to each once it has it."""
    slabs.reverse()
    while slabs:
        yield slabs.pop()


#: columns of the per-nucleus records (:func:`instance_records`) of a 2D slide
SLIDE_AXES = ("y", "x")


def record_fields(axis_names: Sequence[str]) -> list[str]:
    """Columns of the per-nucleus records and CSV: ``id``, ``centroid_<axis>``, ``area``, ``bbox_<axis>0``, ``bbox_<axis>1``."""
    return ["id", *(f"centroid_{a}" for a in axis_names), "area", *(f"bbox_{a}{end}" for end in (0, 1) for a in axis_names)]


def record_dtype(axis_names: Sequence[str]) -> np.dtype:
    """Structured dtype of the records (:func:`record_fields`): centroids ``float64``, the rest ``int64``."""
    return np.dtype([(name, np.float64 if name.startswith("centroid_") else np.int64) for name in record_fields(axis_names)])


def instance_records(
    instances: np.ndarray, axis_names: Sequence[str], offset: int = 0, corner: Sequence[int] | None = None
) -> np.ndarray:
    """Per-instance records of an instance crop, those of ``skimage.measure.regionprops`` (vectorised).

    Args:
        instances: integer ids ``1..N`` of the crop (0 = background).
        axis_names: names of the spatial axes (``("y", "x")``, ``("z", "y", "x")``).
        offset: added to the ids (the crop's ids follow those already given).
        corner: image coordinates of the crop's first pixel (default the origin).

    Returns:
        Structured array (:func:`record_dtype`), one row per instance present, by id: ``id``,
        ``centroid_<axis>`` (mean pixel coordinate, 2 decimals), ``area`` (pixel count),
        ``bbox_<axis>0``/``bbox_<axis>1`` (end exclusive).
    """
    found = instances > 0
    ids = instances[found].astype(np.int64)
    if not ids.size:
        return concatenate_records([], axis_names)
    dtype = record_dtype(axis_names)
    corner = list(corner) if corner is not None else [0] * instances.ndim
    n = int(ids.max())
    area = np.bincount(ids, minlength=n + 1)
    present = np.flatnonzero(area[1:]) + 1
    records = np.zeros(present.size, dtype=dtype)
    records["id"] = present + offset
    records["area"] = area[present]
    for axis, coords in enumerate(np.nonzero(found)):
        sums = np.bincount(ids, weights=coords, minlength=n + 1)[present]
        records[f"centroid_{axis_names[axis]}"] = np.round(sums / area[present] + corner[axis], 2)
    boxes = ndimage.find_objects(instances.astype(np.int64, copy=False), max_label=n)
    bounds = np.array([[(s.start, s.stop) for s in boxes[k - 1]] for k in present.tolist()], dtype=np.int64).reshape(present.size, -1, 2)
    for axis, name in enumerate(axis_names):
        records[f"bbox_{name}0"] = bounds[:, axis, 0] + corner[axis]
        records[f"bbox_{name}1"] = bounds[:, axis, 1] + corner[axis]
    return records


def concatenate_records(parts: Sequence[np.ndarray], axis_names: Sequence[str]) -> np.ndarray:
    """One record array (:func:`record_dtype`) of ``parts`` in order; empty when there are none."""
    return np.concatenate(parts) if parts else np.zeros(0, dtype=record_dtype(axis_names))


class NucleiTable:
    """CSV writer of per-nucleus records (:func:`instance_records` arrays), one row per nucleus."""

    def __init__(self, handle: Any, axis_names: Sequence[str]) -> None:
        self.fields = record_fields(axis_names)
        self._writer = csv.writer(handle)
        self._writer.writerow(self.fields)

    def writerows(self, records: np.ndarray) -> None:
        """Write the rows of a structured record array (column-wise conversion, no per-row Python objects but the rows)."""
        self._writer.writerows(zip(*(records[name].tolist() for name in self.fields)))


@contextlib.contextmanager
def nuclei_table(path: Path, axis_names: Sequence[str]) -> Iterator[NucleiTable]:
    """Write the nuclei CSV (columns of :func:`record_fields`) atomically: a temporary file in the same
    folder, renamed to ``path`` when the block ends without an error and removed otherwise."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
        yield NucleiTable(handle, axis_names)


class StreamingInstanceLabeller:
    """Instance-label class-map slabs arriving along axis 0, each connected component once.

    A foreground component (full connectivity) is *complete* when it does not reach the newest
    row received: later slabs cannot extend it. Complete components are cut out in groups
    (bounding boxes starting within ``group_width`` along axis 1), background elsewhere, and
    handed to ``to_instances``; their instances get ids following those already given. Rows
    above the first open component are final and handed out. A component wider than
    ``max_width`` along axis 1 (a fold, pen mark or glass edge, not a nucleus) is cut into
    pieces ``max_width`` wide, each post-processed alone, so crops never span the image.

    Args:
        to_instances: class-map crop (``uint8``, 0 = background) -> instance ids ``1..N``
            (0 = background), e.g. ``lambda c: binary_to_instances(c > 0)``.
        axis_names: names of the spatial axes for the per-nucleus records.
        group_width: width along axis 1 of the groups post-processed together (bounds memory:
            crops are at most ``group_width + max_width`` wide).
        max_open_rows: a component reaching the newest row that started more than this many rows
            above it is cut there (labelled as it is; its continuation is a new component), so at
            most this many rows are carried to the next slab; only implausibly large objects
            (folds, pen marks, an untrained network's web) reach it.
        pad: background margin around each group crop (>= 1 so distances see the border).
        max_width: a component wider than this along axis 1 is cut into pieces this wide
            (``group_width`` if smaller); only masks with implausibly large objects reach it.
        workers: threads post-processing groups at once (:func:`ordered_map`; 1 = this thread).
            The output does not depend on it: groups get their ids in the same order.
    """

    def __init__(
        self,
        to_instances: Callable[[np.ndarray], np.ndarray],
        axis_names: Sequence[str] = ("y", "x"),
        group_width: int = 2048,
        max_open_rows: int = 512,
        pad: int = 4,
        max_width: int = 1024,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise UDAInputError(f"workers must be >= 1, got {workers}")
        self.to_instances = to_instances
        self.workers = workers
        self.axis_names = tuple(axis_names)
        self.group_width = group_width
        self.max_open_rows = max_open_rows
        self.pad = pad
        self.max_width = min(max_width, group_width)
        self.origin = 0
        self.next_id = 1
        self.classes: np.ndarray | None = None  # open rows; pixels of labelled components are set to 0
        self.instances: np.ndarray | None = None

    @property
    def rows(self) -> int:
        """Rows carried to the next slab (those of components still open)."""
        return 0 if self.classes is None else int(self.classes.shape[0])

    def push(
        self, classes: np.ndarray, last: bool = False, write: Callable[[np.ndarray], Any] | None = None
    ) -> tuple[list[Slab], np.ndarray]:
        """Add the next class-map slab; returns the finished instance slabs and their nuclei records.

        Args:
            classes: ``(rows, *rest)`` integer class map, 0 = background.
            last: this is the final slab: every component is complete.
            write: given, each group's records are passed to it as soon as they are made (e.g. a CSV
                writer's ``writerows``) instead of being collected: a slab across a wide slide can
                hold a hundred thousand nuclei.

        Returns:
            ``([(start_row, uint32 ids)], records)``; records (:func:`instance_records` array) hold
            ``id``, ``centroid_<axis>``, ``area`` and ``bbox_<axis>0``/``bbox_<axis>1`` (end
            exclusive) in image coordinates (empty with ``write``).
        """
        classes = np.asarray(classes, dtype=np.uint8)
        if not self.rows:
            self.classes = classes.copy()
            self.instances = np.zeros(classes.shape, dtype=np.uint32)
        else:
            self.classes = np.concatenate([self.classes, classes])
            self.instances = np.concatenate([self.instances, np.zeros(classes.shape, dtype=np.uint32)])
        return self._label(last, write)

    def _label(self, last: bool, write: Callable[[np.ndarray], Any] | None) -> tuple[list[Slab], np.ndarray]:
        rows = self.rows
        labels, n_labels = ndimage.label(self.classes, structure=np.ones((3,) * self.classes.ndim))  # nonzero = foreground
        open_top, complete = rows, []
        for k, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is None:
                continue
            if box[0].stop == rows and not last and box[0].start >= rows - self.max_open_rows:
                open_top = min(open_top, box[0].start)
            else:  # complete, or open too long: cut
                complete.append((k, box))
        records: list[np.ndarray] = []
        # groups are cut out and post-processed in worker threads (scipy, scikit-image and ITK release the GIL),
        # then given their ids here, in order
        process = functools.partial(self._post_process, labels, n_labels, last)
        for _, (crop, instances, group_records) in ordered_map(process, self._groups(complete), self.workers):
            group_records = self._apply(crop, instances, group_records)
            if write is None:
                records.append(group_records)
            else:
                write(group_records)
        del labels
        # copies, so that the buffers (open rows + the new slab) are freed now, not kept by a view
        slab = (self.origin, self.instances[:open_top].copy())
        if open_top:
            self.classes, self.instances = self.classes[open_top:].copy(), self.instances[open_top:].copy()
        self.origin += open_top
        return ([slab] if open_top else []), concatenate_records(records, self.axis_names)

    def _groups(self, complete: list[tuple[int, tuple[slice, ...]]]) -> list[tuple[list[tuple[int, tuple[slice, ...]]], slice | None]]:
        """Components grouped by where their bounding box starts along axis 1, as ``(group, columns)``.

        A component wider than ``max_width`` along axis 1 (no nucleus is) is cut, like one open
        longer than ``max_open_rows``: it is post-processed alone, in pieces of ``max_width``
        columns (``columns``), so that no crop spans the width of the image.
        """
        if self.classes.ndim < 2:
            return [(complete, None)] if complete else []
        groups: list[tuple[list[tuple[int, tuple[slice, ...]]], slice | None]] = []
        wide = []
        for item in sorted(complete, key=lambda c: c[1][1].start):
            if item[1][1].stop - item[1][1].start > self.max_width:
                wide.append(item)
            elif groups and item[1][1].start < groups[-1][0][0][1][1].start + self.group_width:
                groups[-1][0].append(item)
            else:
                groups.append(([item], None))
        for k, box in wide:
            for x0 in range(box[1].start, box[1].stop, self.max_width):
                columns = slice(x0, min(x0 + self.max_width, box[1].stop))
                groups.append(([(k, (box[0], columns, *box[2:]))], columns))
        return groups

    def _group_crop(
        self,
        labels: np.ndarray,
        n_labels: int,
        group: list[tuple[int, tuple[slice, ...]]],
        last: bool,
        columns: slice | None = None,
    ) -> _GroupCrop:
        """Cut one group of complete components out of the buffer, with ``pad`` background around it.

        Along axis 0 the margin may reach rows already handed out (above) or not yet received
        (below): the group is background there, so the crop is padded with zeros, as the
        in-memory image would be, except at the image's own top (row 0) and bottom (``last``).
        With ``columns`` (a piece of a cut component) only the component's pixels in those
        columns along axis 1 belong to the group.

        Thread-safe while other groups are applied (:meth:`_apply`): their pixels, which may lie in
        this crop, are not this group's and are discarded.

        Args:
            labels: connected components of the buffer (``1..n_labels``).
            n_labels: number of components.
            group: ``(label, bounding box)`` of the members.
            last: the buffer ends at the image's end.
            columns: restrict the members to these columns along axis 1.
        """
        crop = tuple(
            slice(max(min(b[axis].start for _, b in group) - self.pad, 0), min(max(b[axis].stop for _, b in group) + self.pad, size))
            for axis, size in enumerate(labels.shape)
        )
        top = min(self.pad - (min(b[0].start for _, b in group) - crop[0].start), self.origin)
        bottom = 0 if last else self.pad - (crop[0].stop - max(b[0].stop for _, b in group))
        selected = np.zeros(n_labels + 1, dtype=bool)  # lookup table: label -> member of the group
        selected[[k for k, _ in group]] = True
        member = selected[labels[crop]]
        if columns is not None:
            outside = np.ones(member.shape[1], dtype=bool)
            outside[columns.start - crop[1].start : columns.stop - crop[1].start] = False
            member[:, outside] = False
        classes = np.pad(np.where(member, self.classes[crop], 0).astype(np.uint8), [(top, bottom)] + [(0, 0)] * (labels.ndim - 1))
        return _GroupCrop(crop, member, classes, top)

    def _post_process(
        self, labels: np.ndarray, n_labels: int, last: bool, spec: tuple[list[tuple[int, tuple[slice, ...]]], slice | None]
    ) -> tuple[_GroupCrop, np.ndarray, np.ndarray]:
        """One group ``spec = (group, columns)`` of :meth:`_groups`: its crop (:meth:`_group_crop`), ``to_instances``
        on it and the records of its instances (ids from 1). Runs in worker threads."""
        group = self._group_crop(labels, n_labels, spec[0], last, spec[1])
        instances = np.asarray(self.to_instances(group.classes))[group.top : group.top + group.member.shape[0]]
        corner = [s.start for s in group.crop]
        corner[0] += self.origin
        return group, instances, instance_records(instances, self.axis_names, 0, corner)

    def _apply(self, group: _GroupCrop, instances: np.ndarray, records: np.ndarray) -> np.ndarray:
        """Write a group's instances into the buffer with the next free ids; returns its records with those ids."""
        self.classes[group.crop][group.member] = 0  # labelled: no longer a component of the buffer
        found = instances > 0
        offset = self.next_id - 1
        self.instances[group.crop][found] = instances[found].astype(np.uint32) + offset
        records["id"] += offset
        self.next_id += int(instances.max(initial=0))
        return records


class _GroupCrop(NamedTuple):
    """A group of complete components cut out of the labeller's buffer (:meth:`StreamingInstanceLabeller._group_crop`)."""

    crop: tuple[slice, ...]  # the crop of the buffer
    member: np.ndarray  # pixels of the crop that belong to the group
    classes: np.ndarray  # the group's classes (0 elsewhere), padded along axis 0
    top: int  # rows of padding above the crop


def default_workers() -> int:
    """Worker threads of post-processing and slide scans: torch's thread count (the cores this process uses), at most 4."""
    return min(torch.get_num_threads(), 4)


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int, ahead: int | None = None) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(item))`` in the order of ``items``, ``fn`` running in ``workers`` threads.

    At most ``ahead`` items (default ``2 * workers``) are taken from ``items`` beyond the one
    yielded, so memory is bounded; ``fn``'s errors are raised here. ``workers <= 1`` runs ``fn``
    in this thread. Unlike ``ThreadPoolExecutor.map``, which submits every item at once.
    """
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="monai-uda-postprocess")
    pending: deque = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) > (ahead if ahead is not None else 2 * workers):
                item, future = pending.popleft()
                yield item, future.result()
        while pending:
            item, future = pending.popleft()
            yield item, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class StreamingSegmenter(FolderSegmenter):
    """Base of the bounded-memory segmenters: network, blending and labelling of a window stream (scaled by
    :meth:`FolderSegmenter._scaler`).

    Subclasses (:class:`~monai_uda.inference.wsi.SlideSegmenter`,
    :class:`~monai_uda.inference.volume.VolumeSegmenter`) read windows and write slabs; the
    arguments are :class:`FolderSegmenter`'s plus ``group_width`` (see
    :class:`StreamingInstanceLabeller`) and ``prefetch_slabs``: class-map slabs the network
    thread may run ahead of the labelling (each one window-stride high across the image; 0 runs
    network and labelling in turn in one thread; default 2 on a GPU, 0 on CPU) and
    ``postprocess_workers``: threads post-processing groups of nuclei at once (the labeller's
    ``workers``; default torch's thread count, at most 4, each holding one group's temporaries).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        input_dir: str,
        output_dir: str,
        group_width: int = 2048,
        prefetch_slabs: int | None = None,
        postprocess_workers: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(network, input_dir, output_dir, **kwargs)
        self.group_width = group_width
        if postprocess_workers is not None and postprocess_workers < 1:
            raise UDAInputError(f"postprocess_workers must be >= 1 (1: no worker threads), got {postprocess_workers}")
        self.postprocess_workers = postprocess_workers or default_workers()
        if prefetch_slabs is not None and prefetch_slabs < 0:
            raise UDAInputError(f"prefetch_slabs must be >= 0 (0: no worker thread), got {prefetch_slabs}")
        # on CPU the network and the labelling share the cores: overlapping them gained no time and cost memory (README)
        self.prefetch_slabs = prefetch_slabs if prefetch_slabs is not None else (0 if self.device.type == "cpu" else 2)
        self.network_seconds = 0.0

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=self.amp):
            out = self.network(batch.to(self.device)).float().cpu()
        self.network_seconds += time.perf_counter() - start
        return out

    def _classes(self, raw: np.ndarray) -> np.ndarray:
        """Blended raw output ``(C, h, W)`` -> class map: foreground > threshold (binary) or argmax (ternary).

        Pixels no window covered (NaN, skipped as blank) are background.
        """
        raw = torch.from_numpy(raw)  # a fresh array from the blender: cleaned in place, saving a slab-sized copy
        uncovered = torch.isnan(raw[0])
        probs = to_probabilities(raw.nan_to_num_()[None], self.output_activation, inplace=True)[0]
        if self.postprocess == "ternary":
            if probs.shape[0] != 3:
                raise UDAInputError(f"ternary post-processing needs 3 output channels, the network gave {probs.shape[0]}")
            classes = torch.argmax(probs, dim=0)
        else:
            foreground = 1.0 - probs[0] if self.output_activation == "softmax" else probs[0]
            classes = foreground > self.threshold
        classes[uncovered] = 0
        return classes.numpy().astype(np.uint8)

    def _to_instances(self, classes: np.ndarray) -> np.ndarray:
        if self.postprocess == "ternary":
            return ternary_to_instances(classes, min_size=self.min_size)
        return binary_to_instances(classes > 0, min_size=self.min_size)

    def _class_slabs(
        self,
        read: Callable[[tuple[int, ...]], np.ndarray],
        image_size: tuple[int, ...],
        windows: list[tuple[int, ...]],
        scale: Callable[[np.ndarray], torch.Tensor],
    ) -> Iterator[np.ndarray]:
        """Windows (``read(start) -> (C, *roi)`` raw) -> network -> blender -> class-map slabs, top to bottom."""
        roi = tuple(self.inferer.roi_size)
        blender: StreamingBlender | None = None
        batch_size = int(self.inferer.sw_batch_size)
        with tqdm(total=len(windows), desc="windows", unit="window", leave=False, mininterval=5.0) as progress:
            for b in range(0, len(windows), batch_size):
                starts = windows[b : b + batch_size]
                outputs = self._forward(scale(np.stack([read(start) for start in starts])))
                if blender is None:
                    blender = StreamingBlender(image_size, roi, outputs.shape[1], mode=self.inferer.mode, sigma_scale=self.inferer.sigma_scale)
                for start, output in zip(starts, outputs):
                    yield from map(self._classes_of, blender.add(start, output))
                progress.update(len(starts))
        if blender is None:  # every window skipped: all background
            blender = StreamingBlender(image_size, roi, 3 if self.postprocess == "ternary" else 1, mode=self.inferer.mode)
        yield from map(self._classes_of, blender.finish())

    def _classes_of(self, slab: Slab) -> np.ndarray:
        return self._classes(slab[1])  # the float slab is not kept while the next windows run

    def _instance_slabs(
        self,
        read: Callable[[tuple[int, ...]], np.ndarray],
        image_size: tuple[int, ...],
        windows: list[tuple[int, ...]],
        scale: Callable[[np.ndarray], torch.Tensor],
        labeller: StreamingInstanceLabeller,
        table: NucleiTable,
    ) -> Iterator[Slab]:
        """The streaming core: :meth:`_class_slabs` -> labeller -> instance slabs; nuclei records go to ``table``.

        With ``prefetch_slabs > 0`` the class slabs are made in a worker thread
        (:func:`in_background`, up to ``prefetch_slabs`` ahead) while this thread labels and writes
        the previous ones, so the post-processing overlaps the network, which releases the GIL in
        its kernels; with 0 they are made here, in turn with the labelling.
        """
        pending: np.ndarray | None = None  # pushed once the next slab shows whether it is the last
        slabs = self._class_slabs(read, image_size, windows, scale)
        for classes in in_background(slabs, self.prefetch_slabs) if self.prefetch_slabs > 0 else slabs:
            if pending is not None:
                yield from self._push(labeller, table, pending, last=False)
            pending = classes
        yield from self._push(labeller, table, pending, last=True)

    @staticmethod
    def _push(labeller: StreamingInstanceLabeller, table: NucleiTable, classes: np.ndarray, last: bool) -> Iterator[Slab]:
        slabs = labeller.push(classes, last=last, write=table.writerows)[0]
        trim_freed_memory()  # the labelling's temporaries, before the next network batch (the peak of the run)
        yield from slabs


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def trim_freed_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere).

    The labelling of a slab frees slab-sized temporaries; glibc keeps freed blocks in its heaps
    (one per thread) for reuse, where the network's activations, allocated in another thread or in
    larger blocks, may not reuse them, so without a trim the peak RSS can count both (measured with
    the worker thread, 1536 x 32768 strip: 2.35 GiB without, 2.14-2.18 GiB with). It is called once
    per labelled slab, not per network batch: the pages it gives back must be faulted in again,
    which before every batch cost the 16k slide 23 s of network time.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def in_background(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Iterate ``items`` in a worker thread, at most ``depth`` items ahead of the caller.

    The worker gets this thread's torch thread count. Its errors are raised here (MONAI's
    ``ThreadBuffer`` would end the iteration silently, passing a truncated slide off as whole);
    closing this iterator stops the worker after its current item.
    """
    queue: Queue = Queue(max(depth, 1))
    stop = threading.Event()
    end = object()
    threads = torch.get_num_threads()

    def put(item: Any) -> bool:
        while not stop.is_set():
            with contextlib.suppress(Full):
                queue.put(item, timeout=0.1)
                return True
        return False

    def produce() -> None:
        torch.set_num_threads(threads)
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as error:  # handed to the caller
            put((end, error))
        finally:
            if hasattr(items, "close"):
                items.close()

    worker = threading.Thread(target=produce, name="monai-uda-windows", daemon=True)
    worker.start()
    try:
        while True:
            item, error = queue.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join()
