"""Unpaired source/target dataset of the adaptation methods.

Every method trains on pairs of one labelled source patch and one (mostly unlabelled) target
patch. Unlike MONAI's ``ZipDataset`` the two domains may differ in size: each epoch draws a
fresh pairing, and every random transform of an item is seeded from ``(seed, epoch, index)``,
so an epoch's data never depend on the global random state or on which items were drawn
before. That makes a run that resumes from a checkpoint see exactly the data of an
uninterrupted run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose, MapTransform

from monai_uda.data.labelled import choose_labelled
from monai_uda.errors import UDAInputError, unwrap_input_errors

__all__ = ["UnpairedDataset", "StoppingCacheDataset", "select_labelled_targets", "item_seed"]


def item_seed(*parts: int) -> int:
    """A 32-bit seed derived from integers (e.g. seed, epoch, index, domain) by ``numpy.random.SeedSequence``."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint32)[0])


def select_labelled_targets(target: Sequence[Mapping[str, Any]], fraction: Any, seed: int = 0) -> list[bool]:
    """Pick the target items whose labels a semi-supervised (SSDA) run uses (eq 6 of CellSegSSDA).

    Args:
        target: target items (``{"image": ...}``, with ``"label"`` when labelled).
        fraction: ``None``: every item that has a ``"label"`` (a partly labelled target split);
            a share in ``[0, 1]``: ``round(fraction * n)`` of the ``n`` items (at least one when
            positive), a reproducible subset of the labelled ones
            (:func:`~monai_uda.data.labelled.choose_labelled`).
        seed: selection seed.

    Returns:
        One flag per item, ``True`` when the item is labelled.

    Raises:
        UDAInputError: a bad fraction, more items asked for than are labelled, or ``None`` and no
            item has a ``"label"``.
    """
    flags = choose_labelled(target, fraction, seed=seed)
    if fraction is None and target and not any(flags):
        raise UDAInputError(
            f"semi-supervised training needs labelled target items, but none of the {len(target)} has a 'label'"
        )
    return flags


class StoppingCacheDataset(CacheDataset):
    """MONAI's ``CacheDataset`` whose cache-filling threads have all stopped when an item fails.

    MONAI fills the cache in a ``multiprocessing.pool.ThreadPool``; when an item fails, its
    ``terminate()`` cannot stop threads, so the error reaches the caller while a thread still
    decodes or transforms the next item. A process that reports the error and exits then kills
    that thread inside a torch call, which aborts the process (``terminate called without an
    active exception``, exit 134) instead of ending with the error's exit code. Here one worker
    fills the cache in the calling thread, and several run in an executor that, on error, cancels
    the items not started and waits for the running ones before the error propagates.
    """

    def _fill_cache(self, indices: Sequence[int] | None = None) -> list:
        if self.cache_num <= 0:
            return []
        indices = list(range(self.cache_num)) if indices is None else list(indices)
        workers = self.num_workers or os.cpu_count() or 1
        if workers == 1 or len(indices) == 1:
            return [self._load_cache_item(index) for index in indices]
        pool = ThreadPoolExecutor(workers, thread_name_prefix="monai-uda-cache")
        try:
            return list(pool.map(self._load_cache_item, indices))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class UnpairedDataset(torch.utils.data.Dataset):
    """Pairs of a source item and a target item, re-paired every epoch.

    Item ``i`` of epoch ``e`` is ``source[p_e(i)]`` and ``target[q_e(i)]`` where ``p_e``/``q_e``
    go through shuffled copies of each list (each source and target item used as evenly as the
    length allows). Each item dict holds ``source_image`` ``(C, *patch)`` float32,
    ``source_label`` ``(1, *patch)`` int32 instance ids and ``target_image``; with
    ``target_label_fraction > 0`` also ``target_label`` (zeros when the item is unlabelled) and
    ``target_labelled`` (0-d bool tensor).

    Call :meth:`set_epoch` at the start of every epoch (the trainer does, on
    ``Events.EPOCH_STARTED``, which Ignite fires before it creates the epoch's data iterator,
    so non-persistent ``DataLoader`` workers see the new epoch; do not use
    ``persistent_workers=True``). Item seeding works per process, so do not share one dataset
    between threads.

    Args:
        source: labelled source items ``{"image": ..., "label": ...}``.
        target: target items ``{"image": ...}`` (with ``"label"`` for the labelled ones).
        source_transform: chain producing ``"image"`` and ``"label"`` (e.g.
            :func:`~monai_uda.transforms.train_transforms`).
        target_transform: chain producing ``"image"`` (and ``"label"`` for SSDA; build it with
            ``allow_missing_label=True`` since unlabelled items have none).
        length: items per epoch, default ``max(len(source), len(target))``.
        seed: seed of the pairings and of all random transforms.
        target_label_fraction: target items whose labels are used (SSDA): ``0`` none, ``None``
            all labelled items of ``target``, a share: see :func:`select_labelled_targets`.
        cache: decode each file once and keep the deterministic part of each chain (loading,
            channel policy, scaling) in memory (MONAI ``CacheDataset``); only the random part
            runs per item.
        cache_workers: threads used to fill the cache.

    Raises:
        UDAInputError: empty domain, source item without ``"label"``, bad length or fraction, and
            (when caching, at construction; else when drawn) unreadable or inconsistent files.
    """

    def __init__(
        self,
        source: Sequence[Mapping[str, Any]],
        target: Sequence[Mapping[str, Any]],
        source_transform: Compose,
        target_transform: Compose,
        length: int | None = None,
        seed: int = 0,
        target_label_fraction: float | None = 0.0,
        cache: bool = True,
        cache_workers: int = 1,
    ) -> None:
        if not source:
            raise UDAInputError("domain 'source' has zero images")
        if not target:
            raise UDAInputError("domain 'target' has zero images")
        for index, item in enumerate(source):
            if "label" not in item:
                raise UDAInputError(f"source item {index} has no 'label'", item.get("image"))
        self.length = max(len(source), len(target)) if length is None else int(length)
        if self.length < 1:
            raise UDAInputError(f"length must be at least 1, got {length}")
        self.seed = int(seed)
        self.target_labelled = select_labelled_targets(target, target_label_fraction, seed)
        self.semi_supervised = target_label_fraction is None or any(self.target_labelled)
        target_items = [dict(item) for item in target]
        for item, labelled in zip(target_items, self.target_labelled):
            if not labelled:
                item.pop("label", None)
        if not all(self.target_labelled):
            self._check_label_optional(target_transform)
        self.source = self._dataset([dict(item) for item in source], source_transform, cache, cache_workers)
        self.target = self._dataset(target_items, target_transform, cache, cache_workers)
        self.epoch = 0
        self.set_epoch(0)

    @staticmethod
    def _check_label_optional(transform: Compose) -> None:
        """Unlabelled target items carry no ``"label"``: a chain that needs one would fail on them."""
        steps = transform.flatten().transforms if isinstance(transform, Compose) else [transform]
        for step in steps:
            if isinstance(step, MapTransform) and "label" in step.keys and not step.allow_missing_keys:
                raise UDAInputError(
                    f"target_transform needs a 'label' ({type(step).__name__}) but some target items are unlabelled; "
                    "build it with train_transforms(..., allow_missing_label=True) or label_key=None"
                )

    @staticmethod
    def _dataset(items: list[dict[str, Any]], transform: Compose, cache: bool, workers: int) -> Dataset:
        if not isinstance(transform, Compose):
            transform = Compose(transform)
        if cache:
            with unwrap_input_errors():
                return StoppingCacheDataset(items, transform, cache_rate=1.0, num_workers=workers, progress=False)
        return Dataset(items, transform)

    @staticmethod
    def _order(rng: np.random.Generator, size: int, length: int) -> np.ndarray:
        """``length`` indices from concatenated permutations of ``range(size)``."""
        rounds = -(-length // size)
        return np.concatenate([rng.permutation(size) for _ in range(rounds)])[:length]

    def set_epoch(self, epoch: int) -> None:
        """Draw the pairing of ``epoch`` (a function of ``(seed, epoch)`` only)."""
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        self.source_index = self._order(rng, len(self.source), self.length)
        self.target_index = self._order(rng, len(self.target), self.length)

    def __len__(self) -> int:
        return self.length

    def _draw(self, dataset: Dataset, index: int, item: int, domain: int) -> dict[str, Any]:
        """Item ``index`` of ``dataset`` with its random transforms seeded from (seed, epoch, item, domain)."""
        dataset.transform.set_random_state(seed=item_seed(self.seed, self.epoch, item, domain))
        with unwrap_input_errors():
            return dataset[index]

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        if not -self.length <= item < self.length:
            raise IndexError(f"index {item} out of range for {self.length} items")
        item %= self.length
        src = self._draw(self.source, int(self.source_index[item]), item, 0)
        t_index = int(self.target_index[item])
        tgt = self._draw(self.target, t_index, item, 1)
        out = {"source_image": src["image"], "source_label": src["label"], "target_image": tgt["image"]}
        if self.semi_supervised:
            labelled = self.target_labelled[t_index]
            shape = (1, *tgt["image"].shape[1:])
            out["target_label"] = tgt["label"] if labelled else torch.zeros(shape, dtype=torch.int32)
            out["target_labelled"] = torch.tensor(labelled)
        return out
