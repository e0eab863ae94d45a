"""Datalists: the JSON file that lists a dataset's images and labels per domain.

The format is MONAI's decathlon style (see ``DESIGN.md``, "Data contract")::

    {"source": [{"image": "images/a.png", "label": "labels/a.tif"}],
     "target": [{"image": "images/b.png"}],
     "validation": [...],
     "test": [{"image": ..., "label": ...}]}

Relative paths are read from the datalist's folder, or from ``base_dir`` (the bundles'
``data_root`` key) when given; absolute paths and ``..`` are allowed, as in MONAI's
``load_decathlon_datalist``, so a datalist may name files anywhere. What stays refused: a listed
path that is not a regular file (a folder, a device or a pipe, which would fail or never end to
read), and, in :func:`export_split`, two items of one split with the same file stem (their copies
would overwrite each other). Items may carry further keys (ids, spacing, ...), which are kept as
they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai_uda.errors import UDAInputError
from monai_uda.files import write_json

__all__ = [
    "DATALIST_KEYS",
    "DATALIST_NAME",
    "PATH_KEYS",
    "Datalist",
    "check_unique_stems",
    "export_split",
    "load_datalist",
    "get_split",
    "read_json",
    "write_datalist",
]

DATALIST_KEYS = ("source", "target", "validation", "test")
"""Top-level keys a datalist may have, in the order they are written."""

DATALIST_NAME = "datalist.json"
"""File name looked up when a folder is given instead of a datalist file."""

PATH_KEYS = ("image", "label")
"""Item keys whose values are file paths (relative in the file, absolute once loaded)."""


class Datalist(dict):
    """A loaded datalist: ``{key: [item, ...]}`` that remembers the file it came from.

    Attributes:
        path: the datalist file, used to name it in error messages (``None`` when built in memory).
    """

    def __init__(self, data: Mapping[str, list[dict[str, Any]]], path: str | Path | None = None) -> None:
        super().__init__(data)
        self.path = None if path is None else Path(path)


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file; errors are one line naming it (``what`` says what it holds).

    Raises:
        UDAInputError: ``invalid JSON (line L, column C: reason)`` or ``cannot read <what> (...)``.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UDAInputError(f"invalid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", path) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UDAInputError(f"cannot read {what} ({exc})", path) from exc


def _datalist_file(path: str | Path) -> Path:
    """The datalist file for ``path`` (a file, or a folder holding ``datalist.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / DATALIST_NAME
        if not path.is_file():
            raise UDAInputError(f"folder has no {DATALIST_NAME}", path.parent)
    elif not path.is_file():
        raise UDAInputError("datalist file does not exist", path)
    return path


def _resolve_item_path(value: Any, where: str, base: Path, default_base: bool, file: Path) -> str:
    """Absolute path of one item's ``image``/``label`` entry, checked to be an existing regular file.

    The folders are resolved (so ``..`` means what the file system says) but not the file itself:
    a symlinked file keeps its own name, from which outputs are named.
    """
    if not isinstance(value, str) or not value:
        raise UDAInputError(f"{where} must be a non-empty path string, got {value!r}", file)
    given = base / value  # an absolute value replaces base
    path = Path(os.path.realpath(given.parent)) / given.name
    if not path.exists():
        if Path(value).is_absolute():
            hint = ""
        else:
            hint = (
                " (relative to the datalist's folder; data_root reads from another)"
                if default_base
                else f" in data_root {base}"
            )
        raise UDAInputError(f"{where} {value!r} does not exist{hint}", file)
    if not path.is_file():
        raise UDAInputError(f"{where} {value!r} is not a regular file (a folder, device or pipe)", file)
    return str(path)


def load_datalist(path: str | Path, base_dir: str | Path | None = None) -> Datalist:
    """Read and check a datalist; every ``image``/``label`` becomes an absolute path string.

    Args:
        path: a datalist JSON file, or a folder containing ``datalist.json``.
        base_dir: folder that relative item paths are read from (the bundles' ``data_root``);
            ``None``: the datalist's folder. Absolute item paths are used as they are.

    Returns:
        A :class:`Datalist` with all four keys of :data:`DATALIST_KEYS` (absent ones empty).

    Raises:
        UDAInputError: naming the datalist file, for a missing file, invalid JSON, an unknown
            top-level key, a list or item of the wrong type, an item without ``"image"``, a listed
            path that does not exist or is not a regular file, or a datalist whose lists are all
            empty; naming ``base_dir`` when it is not a folder.
    """
    file = _datalist_file(path)
    if base_dir is not None and not Path(base_dir).is_dir():
        raise UDAInputError("data_root is not a folder (relative datalist paths are read from it)", base_dir)
    base = Path(os.path.abspath(file.parent if base_dir is None else base_dir))
    raw = read_json(file, "datalist")
    if not isinstance(raw, dict):
        raise UDAInputError(f"expected a JSON object with keys {', '.join(DATALIST_KEYS)}", file)
    unknown = sorted(set(raw) - set(DATALIST_KEYS))
    if unknown:
        raise UDAInputError(f"unknown key {unknown[0]!r} (expected: {', '.join(DATALIST_KEYS)})", file)
    loaded: dict[str, list[dict[str, Any]]] = {}
    for key in DATALIST_KEYS:
        items = raw.get(key, [])
        if not isinstance(items, list):
            raise UDAInputError(f"{key!r} must be a list of items, got {type(items).__name__}", file)
        loaded[key] = []
        for index, item in enumerate(items):
            where = f"{key!r} item {index}"
            if not isinstance(item, dict):
                raise UDAInputError(f"{where} must be an object, got {type(item).__name__}", file)
            if "image" not in item:
                raise UDAInputError(f"{where} has no 'image'", file)
            entry = dict(item)
            for path_key in PATH_KEYS:
                if path_key in entry:
                    entry[path_key] = _resolve_item_path(
                        entry[path_key], f"{where} {path_key}", base, base_dir is None, file
                    )
            loaded[key].append(entry)
    if not any(loaded.values()):
        raise UDAInputError("empty datalist", file)
    return Datalist(loaded, file)


def get_split(
    datalist: Mapping[str, list[dict[str, Any]]], key: str, require_labels: bool | str = False
) -> list[dict[str, Any]]:
    """One list of a datalist, checked to be non-empty (and labelled when asked).

    Args:
        datalist: as returned by :func:`load_datalist`.
        key: one of :data:`DATALIST_KEYS`.
        require_labels: ``True``: check that every item has a ``"label"``; ``"any"``: that at least
            one has (a partly labelled target domain, as semi-supervised training uses);
            ``False``: no check.

    Raises:
        UDAInputError: unknown key, ``"domain '<key>' has zero images"``, an unlabelled item, or
            (``"any"``) no labelled item, naming the datalist file when known.
    """
    file = getattr(datalist, "path", None)
    if key not in DATALIST_KEYS:
        raise UDAInputError(f"unknown datalist key {key!r} (expected: {', '.join(DATALIST_KEYS)})", file)
    items = datalist.get(key) or []
    if not items:
        raise UDAInputError(f"domain {key!r} has zero images", file)
    if require_labels == "any":
        if not any("label" in item for item in items):
            raise UDAInputError(
                f"domain {key!r}: none of its {len(items)} items has a 'label'; semi-supervised training "
                "(mode ssda) needs at least one labelled item",
                file,
            )
    elif require_labels:
        for index, item in enumerate(items):
            if "label" not in item:
                raise UDAInputError(f"domain {key!r} item {index} ({item.get('image')}) has no 'label'", file)
    return list(items)


def _relative_to(value: Any, folder: Path, where: str, file: Path) -> str:
    """``value`` (absolute, or relative to ``folder``) relative to ``folder`` when inside it, else absolute (POSIX)."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise UDAInputError(f"{where} must be a non-empty path, got {value!r}", file)
    absolute = Path(os.path.abspath(folder / value))
    relative = Path(os.path.relpath(absolute, folder))
    return (absolute if relative.parts[0] == ".." else relative).as_posix()


def write_datalist(folder: str | Path, datalist: Mapping[str, list[dict[str, Any]]]) -> Path:
    """Write ``folder/datalist.json`` atomically, with paths relative to ``folder`` (absolute for files outside it).

    Args:
        folder: output folder (created if needed).
        datalist: ``{key: [item, ...]}``; paths may be absolute or relative to ``folder``.
            Keys are written in :data:`DATALIST_KEYS` order; other item keys are kept.

    Returns:
        The path of the written file.

    Raises:
        UDAInputError: unknown key, an item without ``"image"``, or an unwritable folder.
    """
    folder = Path(os.path.abspath(folder))
    file = folder / DATALIST_NAME
    unknown = sorted(set(datalist) - set(DATALIST_KEYS))
    if unknown:
        raise UDAInputError(f"unknown key {unknown[0]!r} (expected: {', '.join(DATALIST_KEYS)})", file)
    out: dict[str, list[dict[str, Any]]] = {}
    for key in (k for k in DATALIST_KEYS if k in datalist):
        out[key] = []
        for index, item in enumerate(datalist[key]):
            if "image" not in item:
                raise UDAInputError(f"{key!r} item {index} has no 'image'", file)
            entry = dict(item)
            for path_key in PATH_KEYS:
                if path_key in entry:
                    entry[path_key] = _relative_to(entry[path_key], folder, f"{key!r} item {index} {path_key}", file)
            out[key].append(entry)
    write_json(file, out, what="datalist")
    return file


def check_unique_stems(items: list[dict[str, Any]], key: str, file: Path | None = None) -> list[dict[str, Any]]:
    """``items``, checked to have distinct image stems: files written per item are named by stem.

    A datalist may name files in several folders (``a/x.png``, ``b/x.png``) or formats
    (``x.png``, ``x.tif``); copies or outputs named by stem would overwrite one another.

    Raises:
        UDAInputError: naming ``file`` and both items.
    """
    from monai_uda.data.io import stem_of

    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        stem = stem_of(item["image"])
        if stem in seen:
            raise UDAInputError(
                f"{key!r} items {seen[stem]} and {index} have the same file stem {stem!r} "
                f"({items[seen[stem]]['image']}, {item['image']}); files named by stem would overwrite each other",
                file,
            )
        seen[stem] = index
    return items


def export_split(datalist_path: str | Path, key: str, out_dir: str | Path) -> tuple[Path, Path]:
    """Copy a labelled split to ``out_dir/images`` and ``out_dir/labels`` with the same stems.

    This is the folder layout that inference (``--input_dir``) and ``monai-uda evaluate``
    (``--gt``) expect. Both folders are emptied first.

    Returns:
        ``(images_dir, labels_dir)``.

    Raises:
        UDAInputError: the split is empty or unlabelled, or two of its items share a stem.
    """
    import shutil

    from monai_uda.data.io import stem_of

    datalist = load_datalist(datalist_path)
    items = check_unique_stems(get_split(datalist, key, require_labels=True), key, datalist.path)
    out_dir = Path(out_dir)
    images, labels = out_dir / "images", out_dir / "labels"
    for folder in (images, labels):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for item in items:
        stem, label = stem_of(item["image"]), Path(item["label"])
        shutil.copy(item["image"], images / Path(item["image"]).name)
        shutil.copy(label, labels / f"{stem}{label.name[len(stem_of(label)) :]}")
    return images, labels
