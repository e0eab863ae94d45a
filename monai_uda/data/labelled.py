"""Which target items a semi-supervised (SSDA) run learns from: the labelled subset of a domain.

CellSegSSDA (Haq & Huang, MIDL 2020, eq 6) adds a supervised Dice term on the target images that
carry labels. Two places choose that subset, with one rule:

* training (:class:`~monai_uda.data.dataset.UnpairedDataset`, the bundles' ``target_label_fraction``)
  uses the datalist's labelled target items, or a share of them;
* ``monai-uda prepare ... --labelled_fraction F | --labelled N`` writes a datalist whose target
  items keep their ``"label"`` only on such a subset (:func:`mark_labelled_subset`); the label
  files stay on disk.

A subset is drawn by ranking the labelled items by a SHA-256 hash of ``(seed, image)``: the same
in every run and process, independent of the list's order, and nested (a larger share keeps the
items of a smaller one).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_uda.errors import UDAInputError

__all__ = ["check_count", "choose_labelled", "labelled_count", "mark_labelled_subset"]


def labelled_count(n: int, fraction: Any, option: str = "target_label_fraction") -> int:
    """``round(fraction * n)`` items, at least one when ``fraction > 0``.

    Raises:
        UDAInputError: ``fraction`` is not a number in ``[0, 1]`` (the message names ``option``).
    """
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(fraction, bool) or not 0.0 <= value <= 1.0:
        raise UDAInputError(f"{option} must be within [0, 1], got {fraction!r}")
    return 0 if value == 0 or n == 0 else max(1, int(round(value * n)))


def check_count(count: Any, option: str = "--labelled") -> int:
    """``count`` as a number of items to label.

    Raises:
        UDAInputError: ``count`` is not a whole number >= 0 (the message names ``option``).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise UDAInputError(f"{option} must be a whole number >= 0, got {count!r}")
    return count


def choose_labelled(
    items: Sequence[Mapping[str, Any]],
    fraction: Any = None,
    count: int | None = None,
    seed: int = 0,
    option: str = "target_label_fraction",
) -> list[bool]:
    """One flag per item: ``True`` when its label is used.

    Args:
        items: datalist items (``{"image": ...}``, with ``"label"`` when labelled).
        fraction: share of *all* items to use as labelled, ``round(fraction * len(items))`` (at
            least one when positive), drawn from the labelled ones; ``None`` with ``count``
            ``None``: every labelled item.
        count: number of items to use as labelled, instead of ``fraction``.
        seed: seed of the draw.
        option: the setting's name in error messages (``target_label_fraction``, ``--labelled``).

    Raises:
        UDAInputError: both ``fraction`` and ``count``, a bad value, or more items asked for than
            the items with a ``"label"``.
    """
    has_label = ["label" in item for item in items]
    if fraction is None and count is None:
        return has_label
    if fraction is not None and count is not None:
        raise UDAInputError(f"give either a fraction or a count of labelled items, not both ({option})")
    if count is None:
        wanted = labelled_count(len(items), fraction, option)
    else:
        wanted = check_count(count, option)
    candidates = [index for index, labelled in enumerate(has_label) if labelled]
    if wanted > len(candidates):
        given = fraction if count is None else count
        raise UDAInputError(
            f"{option} {given} asks for {wanted} labelled items, but only {len(candidates)} of the "
            f"{len(items)} target items have a 'label'"
        )

    def rank(index: int) -> tuple[str, int]:
        digest = hashlib.sha256(f"{seed}:{items[index].get('image')}".encode()).hexdigest()
        return digest, index

    chosen = set(sorted(candidates, key=rank)[:wanted])
    return [index in chosen for index in range(len(items))]


def mark_labelled_subset(
    datalist_file: str | Path, fraction: Any = None, count: int | None = None, seed: int = 0, split: str = "target"
) -> Path:
    """Keep ``"label"`` on a seeded subset of ``split``'s labelled items of a datalist; drop it on the rest.

    The datalist file is rewritten (atomically, its paths as they are); no image or label file is
    touched: the labels dropped from the datalist stay on disk.

    Args:
        datalist_file: the datalist JSON a converter has just written.
        fraction, count: see :func:`choose_labelled` (``--labelled_fraction`` / ``--labelled``).
        seed: seed of the draw (``--seed``).
        split: the list to thin out.

    Returns:
        ``datalist_file``.

    Raises:
        UDAInputError: naming the file: ``split`` is empty or has no labelled item, or the share
            asks for more items than carry labels.
    """
    from monai_uda.data.datalist import read_json
    from monai_uda.data.prepare_utils import say
    from monai_uda.files import write_json

    file = Path(datalist_file)
    data = read_json(file, "datalist")
    items = data.get(split) or []
    option = "--labelled" if count is not None else "--labelled_fraction"
    if not any(isinstance(item, dict) and "label" in item for item in items):
        raise UDAInputError(f"{option}: no {split!r} item has a 'label' to keep ({len(items)} {split} items)", file)
    try:
        keep = choose_labelled(items, fraction, count, seed, option)
    except UDAInputError as exc:
        raise UDAInputError(exc.reason, file) from exc
    data[split] = [item if kept else {k: v for k, v in item.items() if k != "label"} for item, kept in zip(items, keep)]
    write_json(file, data, what="datalist")
    say(f"labelled: {sum(keep)} of {len(items)} {split!r} items keep their label (seed {seed})")
    return file
