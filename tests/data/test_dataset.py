"""UnpairedDataset: pairing, per-item seeding (bit-identical resume), SSDA label selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from monai_uda.data.dataset import UnpairedDataset, item_seed, select_labelled_targets
from monai_uda.data.io import write_array
from monai_uda.errors import UDAInputError
from monai_uda.transforms import train_transforms

PATCH = (16, 16)


def _items(tmp_path, prefix, count, labelled):
    rng = np.random.default_rng(len(prefix) + count)
    items = []
    for k in range(count):
        image = rng.integers(0, 4000, (24, 28)).astype(np.uint16)
        item = {"image": str(write_array(tmp_path / f"{prefix}{k}.tif", image))}
        if labelled:
            label = (image > 2000).astype(np.uint16) * (k + 1)  # ids tell the items apart
            item["label"] = str(write_array(tmp_path / f"{prefix}{k}_label.tif", label))
        items.append(item)
    return items


def _dataset(tmp_path, n_source=3, n_target=5, **kwargs):
    source = _items(tmp_path, "s", n_source, True)
    target = _items(tmp_path, "t", n_target, kwargs.pop("target_labels", False))
    src_t = train_transforms(2, PATCH, channels=1)
    target_label = "label" if kwargs.get("target_label_fraction") else None
    tgt_t = train_transforms(2, PATCH, channels=3, label_key=target_label, allow_missing_label=True)
    return UnpairedDataset(source, target, src_t, tgt_t, **kwargs)


def test_items_shapes_and_default_length(tmp_path):
    ds = _dataset(tmp_path)
    assert len(ds) == 5
    item = ds[0]
    assert set(item) == {"source_image", "source_label", "target_image"}
    assert item["source_image"].shape == (1, *PATCH) and item["source_image"].dtype == torch.float32
    assert item["source_label"].shape == (1, *PATCH) and item["source_label"].dtype == torch.int32
    assert item["target_image"].shape == (3, *PATCH)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["source_image"].shape == (2, 1, *PATCH)


def test_pairing_covers_both_domains_and_changes_per_epoch(tmp_path):
    ds = _dataset(tmp_path, length=6)
    assert sorted(ds.target_index.tolist()[:5]) == [0, 1, 2, 3, 4]  # one full pass over the target
    assert sorted(ds.source_index.tolist()) == [0, 0, 1, 1, 2, 2]  # source used evenly
    first = (ds.source_index.copy(), ds.target_index.copy())
    ds.set_epoch(1)
    assert not (np.array_equal(first[0], ds.source_index) and np.array_equal(first[1], ds.target_index))
    ds.set_epoch(0)
    assert np.array_equal(first[0], ds.source_index) and np.array_equal(first[1], ds.target_index)


def test_items_are_deterministic_and_independent_of_global_rng_and_order(tmp_path):
    ds = _dataset(tmp_path)
    ds.set_epoch(3)
    a = ds[2]
    np.random.seed(123)
    torch.manual_seed(123)
    for i in (4, 0, 1):  # other items drawn in between must not matter
        ds[i]
    b = ds[2]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # a fresh dataset (a resumed run) gives the same item bit for bit
    fresh = _dataset(tmp_path, cache=False)
    fresh.set_epoch(3)
    c = fresh[2]
    for key in a:
        assert torch.equal(a[key], c[key]), key
    ds.set_epoch(4)
    ds.source_index[2], ds.target_index[2] = fresh.source_index[2], fresh.target_index[2]  # same files, new epoch
    d = ds[2]
    assert not torch.equal(a["source_image"], d["source_image"])  # new random crop/flip
    assert item_seed(0, 3, 2, 0) != item_seed(0, 4, 2, 0) != item_seed(0, 3, 2, 1)


def test_cache_loads_each_file_once(tmp_path, monkeypatch):
    import monai_uda.transforms.loading as loading

    calls = []
    original = loading.read_image
    monkeypatch.setattr(loading, "read_image", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    ds = _dataset(tmp_path, length=12)
    assert len(calls) == 3 + 5
    for i in range(len(ds)):
        ds[i]
    assert len(calls) == 8


def test_select_labelled_targets_is_stable_and_nested():
    target = [{"image": f"img{k}.png", "label": f"lab{k}.png"} for k in range(10)]
    flags = select_labelled_targets(target, 0.3, seed=1)
    assert sum(flags) == 3 and flags == select_labelled_targets(target, 0.3, seed=1)
    # the order of the list does not change which images are chosen
    reordered = select_labelled_targets(target[::-1], 0.3, seed=1)[::-1]
    assert reordered == flags
    larger = select_labelled_targets(target, 0.6, seed=1)
    assert sum(larger) == 6 and all(big for small, big in zip(flags, larger) if small)
    assert sum(select_labelled_targets(target, 0.01)) == 1  # at least one
    assert select_labelled_targets(target, 0.0) == [False] * 10
    assert select_labelled_targets(target, 0.3, seed=2) != flags
    with pytest.raises(UDAInputError, match="within"):
        select_labelled_targets(target, 1.5)
    with pytest.raises(UDAInputError, match="0.5 asks for 1 labelled items, but only 0 of the 1 target items"):
        select_labelled_targets([{"image": "img0.png"}], 0.5)


def test_select_labelled_targets_on_a_partly_labelled_list():
    target = [{"image": f"img{k}.png", **({"label": f"lab{k}.png"} if k in (1, 4, 6) else {})} for k in range(8)]
    has_label = [k in (1, 4, 6) for k in range(8)]
    assert select_labelled_targets(target, None) == has_label  # null: the datalist's labels as they are
    for fraction, count in ((0.1, 1), (0.25, 2), (0.375, 3)):  # round(fraction * 8) of the 8, all labelled ones
        flags = select_labelled_targets(target, fraction, seed=3)
        assert sum(flags) == count and all(has for flag, has in zip(flags, has_label) if flag)
    with pytest.raises(UDAInputError, match="0.5 asks for 4 labelled items, but only 3 of the 8 target items"):
        select_labelled_targets(target, 0.5)
    with pytest.raises(UDAInputError, match="needs labelled target items, but none of the 2 has a 'label'"):
        select_labelled_targets([{"image": "a.png"}, {"image": "b.png"}], None)
    with pytest.raises(UDAInputError, match="target_label_fraction must be within \\[0, 1\\], got 'half'"):
        select_labelled_targets(target, "half")


def test_semi_supervised_items(tmp_path):
    ds = _dataset(tmp_path, target_labels=True, target_label_fraction=0.4, length=10)
    assert sum(ds.target_labelled) == 2
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        labelled = bool(item["target_labelled"])
        seen.add(labelled)
        assert item["target_label"].shape == (1, *PATCH) and item["target_label"].dtype == torch.int32
        t_index = int(ds.target_index[i])
        assert labelled == ds.target_labelled[t_index]
        ids = set(torch.unique(item["target_label"]).tolist())
        assert ids <= ({0, t_index + 1} if labelled else {0})
    assert seen == {True, False}


def test_partly_labelled_target_split(tmp_path):
    """3 of 8 target items labelled, fraction null: exactly those items are labelled in the batches."""
    target = _items(tmp_path, "t", 8, True)
    for k in (0, 2, 3, 5, 7):
        del target[k]["label"]
    src_t = train_transforms(2, PATCH, channels=1)
    tgt_t = train_transforms(2, PATCH, channels=1, allow_missing_label=True)
    ds = UnpairedDataset(_items(tmp_path, "s", 2, True), target, src_t, tgt_t, target_label_fraction=None)
    assert ds.target_labelled == [k in (1, 4, 6) for k in range(8)]
    flags = []
    for batch in DataLoader(ds, batch_size=4):
        assert batch["target_labelled"].shape == (4,) and batch["target_label"].shape == (4, 1, *PATCH)
        flags += batch["target_labelled"].tolist()
        for labelled, label in zip(batch["target_labelled"], batch["target_label"]):
            assert labelled or not label.any()  # unlabelled items carry an all-zero label
    assert flags == [ds.target_labelled[int(t)] for t in ds.target_index]  # one pass: 3 labelled of 8
    assert sum(flags) == 3


def test_bad_input(tmp_path):
    target = _items(tmp_path, "t", 1, False)
    t = train_transforms(2, PATCH, 1)
    with pytest.raises(UDAInputError, match="'source' has zero images"):
        UnpairedDataset([], target, t, t)
    with pytest.raises(UDAInputError, match="source item 0 has no 'label'"):
        UnpairedDataset(target, target, t, t)
    with pytest.raises(UDAInputError, match="only 0 of the 1 target items have a 'label'"):
        UnpairedDataset(_items(tmp_path, "s", 1, True), target, t, t, target_label_fraction=0.5)
    labelled_target = _items(tmp_path, "u", 2, True)
    with pytest.raises(UDAInputError, match="allow_missing_label=True"):
        UnpairedDataset(labelled_target, labelled_target, t, t, target_label_fraction=0.5)
    missing = [{"image": str(tmp_path / "gone.tif"), "label": str(tmp_path / "gone.tif")}]
    unlabelled = train_transforms(2, PATCH, 1, label_key=None)
    with pytest.raises(UDAInputError, match=r"gone.tif: file does not exist"):
        UnpairedDataset(missing, target, t, unlabelled)  # cached: raised while filling the cache
    lazy = UnpairedDataset(missing, target, t, unlabelled, cache=False)
    with pytest.raises(UDAInputError, match=r"gone.tif: file does not exist"):
        lazy[0]
