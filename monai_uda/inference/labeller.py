"""Instance-label class-map slabs arriving along the first spatial axis, each nucleus once.

:class:`StreamingInstanceLabeller` takes class-map slabs (0 background, >0 foreground) and labels
every foreground connected component as soon as it is complete (it does not reach the newest
slab): nuclei cut by a window, tile or slab border are labelled whole, once, with ids unique
across the image. Complete components are post-processed in groups of bounded width by the same
functions as in-memory inference (e.g.
:func:`~monai_uda.inference.postprocess.binary_to_instances`), in worker threads
(:func:`~monai_uda.inference.threads.ordered_map`) and given their ids in order, so the output
does not depend on the number of threads.

Memory is the newest slab plus the rows of components still open, so it does not grow with the
length of axis 0. MONAI"s ``PatchInferer`` labels nothing across patches: cross-tile instance
labelling is ours.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from monai_uda.errors import UDAInputError
from monai_uda.inference.records import concatenate_records, instance_records
from monai_uda.inference.threads import ordered_map
from monai_uda.inference.windows import Slab

__all__ = ["StreamingInstanceLabeller"]


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
        # nonzero = foreground
        labels, n_labels = ndimage.label(self.classes, structure=np.ones((3,) * self.classes.ndim))
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

    def _groups(
        self, complete: list[tuple[int, tuple[slice, ...]]]
    ) -> list[tuple[list[tuple[int, tuple[slice, ...]]], slice | None]]:
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
            slice(
                max(min(b[axis].start for _, b in group) - self.pad, 0),
                min(max(b[axis].stop for _, b in group) + self.pad, size),
            )
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
        classes = np.pad(
            np.where(member, self.classes[crop], 0).astype(np.uint8), [(top, bottom)] + [(0, 0)] * (labels.ndim - 1)
        )
        return _GroupCrop(crop, member, classes, top)

    def _post_process(
        self,
        labels: np.ndarray,
        n_labels: int,
        last: bool,
        spec: tuple[list[tuple[int, tuple[slice, ...]]], slice | None],
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
    """A group of complete components cut out of the labeller's buffer
    (:meth:`StreamingInstanceLabeller._group_crop`)."""

    crop: tuple[slice, ...]  # the crop of the buffer
    member: np.ndarray  # pixels of the crop that belong to the group
    classes: np.ndarray  # the group's classes (0 elsewhere), padded along axis 0
    top: int  # rows of padding above the crop
