"""Helpers shared by the dataset converters (:mod:`monai_uda.data.prepare`, :mod:`monai_uda.data.coco`).

Messages go to stderr through :func:`say` (so progress bars stay intact), copied files are
placed atomically by :func:`place_file`, a datalist already in the output folder keeps its other splits
(:func:`kept_splits`), and instance maps are checked to fit uint16
(:func:`as_uint16`) or painted from per-instance pixel sets with the smaller instance on top
(:func:`paint_instances`).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from monai_uda.errors import UDAInputError
from monai_uda.files import commit, output_target, temporary_sibling

__all__ = [
    "UINT16_MAX",
    "as_uint16",
    "kept_splits",
    "output_folder",
    "paint_instances",
    "place_file",
    "preview",
    "say",
    "shape_text",
    "source_folder",
]

UINT16_MAX = int(np.iinfo(np.uint16).max)


def say(message: str) -> None:
    """Print a line on stderr without breaking an active progress bar."""
    tqdm.write(message, file=sys.stderr)


def shape_text(shape: Sequence[int]) -> str:
    """``(4, 5)`` as ``"4x5"``."""
    return "x".join(str(int(s)) for s in shape)


def preview(names: Sequence[str], limit: int = 5) -> str:
    """``'a', 'b', ... (+N more)`` for error messages about many files."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def as_uint16(label: np.ndarray, path: str | Path) -> np.ndarray:
    """Instance map as uint16, refusing ids that do not fit."""
    if label.size and int(label.max()) > UINT16_MAX:
        raise UDAInputError(f"instance ids up to {int(label.max())} do not fit uint16 (max {UINT16_MAX})", path)
    return label.astype(np.uint16, copy=False)


def paint_instances(shape: Sequence[int], regions: Sequence[tuple[np.ndarray, ...]], path: str | Path) -> np.ndarray:
    """uint16 instance map where ``regions[i]`` (an index tuple such as ``(rows, cols)``) gets id ``i + 1``.

    **Overlaps**: the smaller region (fewer indexed pixels) wins a shared pixel; on equal size the
    earlier region wins. A region left without pixels has its id absent from the map.

    Raises:
        UDAInputError: more regions than uint16 holds (naming ``path``).
    """
    if len(regions) > UINT16_MAX:
        raise UDAInputError(f"{len(regions)} instances do not fit a uint16 instance map", path)
    label = np.zeros(tuple(shape), dtype=np.uint16)
    winners_last = sorted(range(len(regions)), key=lambda i: (regions[i][0].size, i), reverse=True)
    for i in winners_last:  # largest (and, among equals, latest) first: later writes win
        label[regions[i]] = i + 1
    return label


def place_file(src: Path, dst: Path, link: bool = False) -> None:
    """Copy (or hard-link, falling back to a copy) ``src`` to ``dst`` atomically (:mod:`monai_uda.files`)."""
    target = output_target(dst)
    tmp = temporary_sibling(target)
    try:
        if link:
            try:
                tmp.unlink()
                os.link(src, tmp)
            except OSError:  # other file system, or hard links not permitted: copy
                shutil.copyfile(src, tmp)
        else:
            shutil.copyfile(src, tmp)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UDAInputError(f"cannot write output ({exc.strerror or exc})", dst) from exc
    commit(tmp, target)


def output_folder(path: str | Path) -> Path:
    """Absolute output folder, so item paths stay valid whatever the working directory."""
    return Path(os.path.abspath(path))


def source_folder(path: str | Path, what: str) -> Path:
    """``path`` as a ``Path``, raising when it is not an existing folder (``what`` names it)."""
    path = Path(path)
    if not path.is_dir():
        raise UDAInputError(f"{what} folder does not exist", path)
    return path


def kept_splits(out: Path, splits: Iterable[str], planned: Iterable[Path]) -> dict[str, list[dict[str, Any]]]:
    """The splits of ``out/datalist.json`` a conversion writing ``splits`` keeps, checked before it writes a file.

    ``monai-uda prepare`` into a folder that already has a datalist (e.g. ``--split target`` after
    ``--split source``) merges: the splits it writes replace those of the same name, every other split
    is kept as it is. A file it would write (``planned``) that an entry of a kept split names would change
    that entry's data: refused before anything is written.

    Returns:
        ``{split: items}`` of the kept splits, paths as in the file (relative to ``out``).

    Raises:
        UDAInputError: a planned file is named by a kept split, or the existing datalist is unreadable.
    """
    from monai_uda.data.datalist import DATALIST_NAME, PATH_KEYS, read_json

    file = out / DATALIST_NAME
    if not file.is_file():
        return {}
    existing = read_json(file, "datalist")
    if not isinstance(existing, dict):
        raise UDAInputError("existing datalist is not a JSON object; move it away to prepare into this folder", file)
    kept = {key: items for key, items in existing.items() if key not in set(splits)}
    named = {
        Path(os.path.abspath(out / str(item[key]))): (split, item[key])
        for split, items in kept.items()
        if isinstance(items, list)
        for item in items
        if isinstance(item, dict)
        for key in PATH_KEYS
        if key in item
    }
    for path in planned:
        if Path(os.path.abspath(path)) in named:
            split, name = named[Path(os.path.abspath(path))]
            raise UDAInputError(
                f"would replace {name}, which split {split!r} of the existing datalist still names; "
                "prepare into another folder or rename the file",
                file,
            )
    return kept
