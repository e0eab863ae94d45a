"""Per-nucleus records of instance maps and the nuclei table (CSV) the streaming runners write.

Records are a structured array (:func:`record_dtype`) with the columns of
``skimage.measure.regionprops`` the table needs, computed for a whole crop at once
(:func:`instance_records`), so a slab with many nuclei needs no per-nucleus Python objects.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from monai_uda.files import atomic_write

__all__ = [
    "SLIDE_AXES",
    "NucleiTable",
    "concatenate_records",
    "instance_records",
    "nuclei_table",
    "record_dtype",
    "record_fields",
]


#: columns of the per-nucleus records (:func:`instance_records`) of a 2D slide
SLIDE_AXES = ("y", "x")


def record_fields(axis_names: Sequence[str]) -> list[str]:
    """Columns of the per-nucleus records and CSV: ``id``, ``centroid_<axis>``, ``area``, ``bbox_<axis>0``,
    ``bbox_<axis>1``."""
    return [
        "id",
        *(f"centroid_{a}" for a in axis_names),
        "area",
        *(f"bbox_{a}{end}" for end in (0, 1) for a in axis_names),
    ]


def record_dtype(axis_names: Sequence[str]) -> np.dtype:
    """Structured dtype of the records (:func:`record_fields`): centroids ``float64``, the rest ``int64``."""
    return np.dtype(
        [(name, np.float64 if name.startswith("centroid_") else np.int64) for name in record_fields(axis_names)]
    )


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
    bounds = np.array([[(s.start, s.stop) for s in boxes[k - 1]] for k in present.tolist()], dtype=np.int64)
    bounds = bounds.reshape(present.size, -1, 2)
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
        """Write the rows of a structured record array (column-wise conversion, no per-row Python objects but
        the rows)."""
        self._writer.writerows(zip(*(records[name].tolist() for name in self.fields)))


@contextlib.contextmanager
def nuclei_table(path: Path, axis_names: Sequence[str]) -> Iterator[NucleiTable]:
    """Write the nuclei CSV (columns of :func:`record_fields`) atomically: a temporary file in the same
    folder, renamed to ``path`` when the block ends without an error and removed otherwise."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
        yield NucleiTable(handle, axis_names)
