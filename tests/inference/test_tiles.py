"""Streaming instance labelling: components open too long are cut, the others stay whole, carried rows stay bounded."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import disk

from monai_uda.inference.tiles import StreamingInstanceLabeller


def _stream(classes: np.ndarray, slab: int, **kwargs) -> tuple[np.ndarray, list[dict], list[int]]:
    """Push ``classes`` in slabs of ``slab`` rows; returns the instance map, the records and the rows carried after each push."""
    labeller = StreamingInstanceLabeller(lambda c: ndimage.label(c > 0)[0], **kwargs)
    out, records, carried = np.zeros(classes.shape, dtype=np.uint32), [], []
    for y in range(0, classes.shape[0], slab):
        slabs, new = labeller.push(classes[y : y + slab], last=y + slab >= classes.shape[0])
        for start, ids in slabs:
            out[start : start + ids.shape[0]] = ids
        records += new
        carried.append(labeller.rows)
    assert labeller.rows == 0 and labeller.origin == classes.shape[0]
    return out, records, carried


def test_tall_component_is_cut_and_a_nucleus_at_the_cut_stays_whole():
    classes = np.zeros((96, 64), dtype=np.uint8)
    classes[:, 5:9] = 1  # a bar as tall as the image (a fold): open longer than max_open_rows
    nucleus = np.zeros(classes.shape, dtype=bool)
    nucleus[disk((32, 44), 5, shape=classes.shape)] = True  # rows 28-36: crosses the slab border at row 32
    classes[nucleus] = 1
    instances, records, carried = _stream(classes, slab=16, max_open_rows=24)
    assert max(carried) <= 24  # never more than max_open_rows rows carried to the next slab
    assert np.unique(instances[nucleus]).size == 1 and instances[nucleus][0] > 0  # one id, whole
    assert set(np.unique(instances[~nucleus & (classes > 0)])).isdisjoint(set(np.unique(instances[nucleus])))
    bar_ids = np.unique(instances[:, 5:9])
    assert 0 not in bar_ids and len(bar_ids) >= 3  # the bar is labelled, in pieces
    for bar_id in bar_ids:  # each piece spans at most max_open_rows + one slab rows
        rows = np.flatnonzero((instances == bar_id).any(axis=1))
        assert rows[-1] - rows[0] + 1 <= 24 + 16
    ids = sorted(r["id"] for r in records)
    assert ids == list(range(1, len(ids) + 1)) == sorted(np.unique(instances[instances > 0]).tolist())
    disc = next(r for r in records if r["id"] == instances[32, 44])
    assert (disc["area"], disc["centroid_y"], disc["centroid_x"]) == (int(nucleus.sum()), 32.0, 44.0)


def test_small_components_stream_as_in_memory_labelling():
    rng = np.random.default_rng(0)
    classes = np.zeros((200, 80), dtype=np.uint8)
    for y, x in rng.integers(6, (194, 74), size=(30, 2)):
        classes[disk((y, x), 4, shape=classes.shape)] = 1
    instances, _, carried = _stream(classes, slab=24, max_open_rows=32)
    expected, n = ndimage.label(classes > 0, structure=np.ones((3, 3)))
    assert instances.max() == n and max(carried) <= 32
    # the same partition (ids are given in completion order, not raster order)
    pairs = set(zip(instances[classes > 0].tolist(), expected[classes > 0].tolist()))
    assert len(pairs) == n


def test_in_background_keeps_order_raises_errors_and_stops_when_closed():
    import threading

    import pytest

    from monai_uda.inference.tiles import in_background

    assert list(in_background(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise RuntimeError("device lost")

    got = []
    with pytest.raises(RuntimeError, match="device lost"):
        for item in in_background(failing(), depth=1):
            got.append(item)
    assert got == [1]  # the items before the error, then the worker's error here

    produced, closed = [], threading.Event()

    def endless():
        try:
            for i in range(10**9):
                produced.append(i)
                yield i
        finally:
            closed.set()

    stream = in_background(endless(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # the caller stops early (an output write failed): the worker ends too
    assert closed.is_set() and len(produced) <= 3 + 2 + 2
