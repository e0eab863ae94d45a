"""Data splits of the benchmark's settings built from one labelled data set.

:func:`split_by_intensity` makes a close-domain setting out of the data at hand: DSB2018
fluorescence images, all labelled, split by how bright their nuclei are into a dim source and a
bright target (``dsb2018_dim->dsb2018_bright`` of :mod:`~monai_uda.benchmark.recipes`), where
adapting to the target may cost more than it gains.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from monai_uda.errors import UDAInputError

__all__ = ["nuclei_intensity", "split_by_intensity"]


def nuclei_intensity(item: Mapping[str, Any]) -> float:
    """Mean grey value of an item's labelled nuclei (``label > 0``), on the 0-1 scale of the image's type.

    Colour images count the mean of their first three channels; integer images are divided by the
    largest value of their type (255 for 8-bit), so images of different bit depths compare.
    """
    from monai_uda.data.io import read_array

    image, label = read_array(item["image"])[0], read_array(item["label"])[0]
    scale = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0
    grey = image.astype(np.float64) / scale
    if grey.ndim == label.ndim + 1:  # channels last
        grey = grey[..., :3].mean(-1)
    nuclei = np.asarray(label) > 0
    return float(grey.reshape(nuclei.shape)[nuclei].mean()) if nuclei.any() else 0.0


def split_by_intensity(
    items: Sequence[Mapping[str, Any]],
    statistic: Callable[[Mapping[str, Any]], float] = nuclei_intensity,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[dict[str, list[Mapping[str, Any]]], float]:
    """Split labelled images into a dim source and a bright target by a per-image statistic.

    The rule: images sorted by ``statistic`` (ties by image path); the lower half (``n // 2``
    images) is the source, the upper half the target, of which a ``test_fraction`` drawn with
    ``seed`` is held out, labelled, for evaluation. Deterministic; each list keeps the input order.

    Returns:
        ``{"source": [...], "target": [...], "test": [...]}`` and the threshold (the largest source value).
    """
    values = [statistic(item) for item in items]
    order = sorted(range(len(items)), key=lambda i: (values[i], str(items[i]["image"])))
    half = len(items) // 2
    if half < 1 or len(items) - half < 2:
        raise UDAInputError(f"an intensity split needs at least 3 labelled images, got {len(items)}")
    bright = order[half:]
    n_test = min(len(bright) - 1, max(1, int(round(len(bright) * test_fraction))))
    test = {bright[i] for i in np.random.default_rng(seed).permutation(len(bright))[:n_test]}
    groups = {"source": set(order[:half]), "target": set(bright) - test, "test": test}
    split = {key: [items[i] for i in sorted(members)] for key, members in groups.items()}
    return split, values[order[half - 1]]
