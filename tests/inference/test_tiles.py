"""Streaming instance labelling: components open too long are cut, the others stay whole, carried rows stay bounded."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import disk

from monai_uda.inference.blending import StreamingBlender
from monai_uda.inference.labeller import StreamingInstanceLabeller
from monai_uda.inference.windows import window_starts


def _stream(classes: np.ndarray, slab: int, **kwargs) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Push ``classes`` in slabs of ``slab`` rows; returns the instance map, the records and the rows carried
    after each push."""
    labeller = StreamingInstanceLabeller(lambda c: ndimage.label(c > 0)[0], **kwargs)
    out, records, carried = np.zeros(classes.shape, dtype=np.uint32), [], []
    for y in range(0, classes.shape[0], slab):
        slabs, new = labeller.push(classes[y : y + slab], last=y + slab >= classes.shape[0])
        for start, ids in slabs:
            out[start : start + ids.shape[0]] = ids
        records.append(new)
        carried.append(labeller.rows)
    assert labeller.rows == 0 and labeller.origin == classes.shape[0]
    return out, np.concatenate(records), carried


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

    from monai_uda.inference.threads import in_background

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


def test_ordered_map_keeps_order_bounds_lookahead_and_raises_errors():
    import threading
    import time

    import pytest

    from monai_uda.inference.threads import ordered_map

    def slow_square(x: int) -> int:
        time.sleep(0.002 * (x % 3))  # later items often finish first
        return x * x

    assert list(ordered_map(slow_square, iter(range(20)), workers=3)) == [(x, x * x) for x in range(20)]
    assert list(ordered_map(slow_square, iter(range(5)), workers=1)) == [(x, x * x) for x in range(5)]
    taken, lock = [], threading.Lock()

    def items():
        for i in range(100):
            with lock:
                taken.append(i)
            yield i

    stream = ordered_map(slow_square, items(), workers=2, ahead=3)
    assert next(stream) == (0, 0)
    assert len(taken) <= 1 + 3 + 1  # the one yielded, `ahead` more, and the one that made the queue full
    stream.close()

    def fails_at_4(x: int) -> int:
        if x == 4:
            raise ValueError("bad crop")
        return x

    got = []
    with pytest.raises(ValueError, match="bad crop"):
        for item, _ in ordered_map(fails_at_4, iter(range(10)), workers=2):
            got.append(item)
    assert got == [0, 1, 2, 3]


def test_worker_threads_give_the_same_instances_ids_and_records():
    from monai_uda.inference.postprocess import binary_to_instances

    rng = np.random.default_rng(1)
    classes = np.zeros((160, 300), dtype=np.uint8)
    for y, x in rng.integers(8, (152, 292), size=(60, 2)):  # touching discs too: the watershed splits them
        classes[disk((y, x), int(rng.integers(4, 8)), shape=classes.shape)] = 1
    results = []
    for workers in (1, 3):
        labeller = StreamingInstanceLabeller(
            lambda c: binary_to_instances(c > 0), group_width=40, max_width=40, workers=workers
        )
        out, records = np.zeros(classes.shape, dtype=np.uint32), []
        for y in range(0, 160, 32):
            slabs, new = labeller.push(classes[y : y + 32], last=y + 32 >= 160)
            for start, ids in slabs:
                out[start : start + ids.shape[0]] = ids
            records.append(new)
        results.append((out, np.concatenate(records)))
    (one, one_records), (three, three_records) = results
    assert one.max() > 60 // 2 and np.array_equal(one, three)  # many groups of 40 columns, same ids in the same places
    assert one_records.tolist() == three_records.tolist() and sorted(one_records["id"].tolist()) == list(
        range(1, one.max() + 1)
    )


def test_instance_records_of_non_contiguous_ids_and_their_csv(tmp_path):
    from monai_uda.inference.records import instance_records, nuclei_table

    instances = np.zeros((6, 8), dtype=np.uint32)
    instances[1:3, 1:4] = 5  # 6 pixels, centroid (1.5, 2), box rows 1-2 cols 1-3
    instances[4, 6] = 2  # one pixel
    instances[5, 7] = 2  # and its diagonal neighbour: centroid (4.5, 6.5)
    records = instance_records(instances, ("y", "x"), offset=10, corner=(100, 200))
    assert records.tolist() == [  # by id: 2 then 5; ids shifted by the offset, coordinates by the corner
        (12, 104.5, 206.5, 2, 104, 206, 106, 208),
        (15, 101.5, 202.0, 6, 101, 201, 103, 204),
    ]
    assert instance_records(np.zeros((3, 3), dtype=np.uint32), ("y", "x")).size == 0
    third = np.zeros((3, 3), dtype=np.uint32)
    third[0, :] = 1  # with the pixel below: centroid (0.25, 0.75), in 3D
    third[1, 0] = 1
    (record,) = instance_records(third[None], ("z", "y", "x")).tolist()
    assert record[:5] == (1, 0.0, 0.25, 0.75, 4)
    path = tmp_path / "nuclei.csv"
    with nuclei_table(path, ("y", "x")) as table:
        table.writerows(records)
        table.writerows(records[:0])
    assert path.read_text().splitlines() == [
        "id,centroid_y,centroid_x,area,bbox_y0,bbox_x0,bbox_y1,bbox_x1",
        "12,104.5,206.5,2,104,206,106,208",
        "15,101.5,202.0,6,101,201,103,204",
    ]


def test_bad_thread_counts_are_refused():
    import pytest
    import torch

    from monai_uda.errors import UDAInputError
    from monai_uda.inference import SlideSegmenter

    with pytest.raises(UDAInputError, match="workers must be >= 1"):
        StreamingInstanceLabeller(lambda c: c, workers=0)
    net = torch.nn.Conv2d(3, 1, 1)
    with pytest.raises(UDAInputError, match="postprocess_workers must be >= 1"):
        SlideSegmenter(net, ".", "out", channels=3, roi_size=(64, 64), postprocess_workers=0)
    with pytest.raises(UDAInputError, match="prefetch_slabs must be >= 0"):
        SlideSegmenter(net, ".", "out", channels=3, roi_size=(64, 64), prefetch_slabs=-1)
    assert SlideSegmenter(net, ".", "out", channels=3, roi_size=(64, 64)).postprocess_workers == min(
        torch.get_num_threads(), 4
    )


def _dense_blend(image_size, roi, starts, outputs, weight):
    """Reference: the weighted sum and weight sum of the windows over the whole image, divided (NaN where none)."""
    acc = np.zeros((outputs[0].shape[0], *image_size), dtype=np.float32)
    total = np.zeros(image_size, dtype=np.float32)
    for start, output in zip(starts, outputs):
        box = tuple(slice(s, s + r) for s, r in zip(start, roi))
        acc[(slice(None), *box)] += output * weight
        total[box] += weight
    with np.errstate(invalid="ignore", divide="ignore"):
        return acc / total


def test_blender_slabs_match_the_dense_blend_with_skipped_windows_2d_and_3d():
    rng = np.random.default_rng(0)
    for image_size, roi in (((40, 23), (8, 6)), ((13, 9, 11), (4, 5, 6))):
        starts = window_starts(image_size, roi, 0.25)
        kept = [s for i, s in enumerate(starts) if i % 5 not in (1, 2)]  # skipped windows leave holes
        outputs = [rng.random((2, *roi), dtype=np.float32) for _ in kept]
        blender = StreamingBlender(image_size, roi, 2, mode="gaussian")
        slabs = [slab for start, output in zip(kept, outputs) for slab in blender.add(start, output)] + list(
            blender.finish()
        )
        streamed = np.concatenate([array for _, array in slabs], axis=1)
        assert [start for start, _ in slabs] == list(np.cumsum([0] + [a.shape[1] for _, a in slabs[:-1]]))
        expected = _dense_blend(image_size, roi, kept, outputs, blender.weight)
        assert streamed.shape == expected.shape and np.isnan(expected).any() and not np.isnan(expected).all()
        np.testing.assert_array_equal(np.isnan(streamed), np.isnan(expected))
        np.testing.assert_allclose(streamed[~np.isnan(expected)], expected[~np.isnan(expected)], rtol=1e-6)
