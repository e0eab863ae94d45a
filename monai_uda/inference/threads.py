"""Thread helpers of the streaming runners: an ordered bounded map and a background iterator.

Post-processing (scipy, scikit-image, ITK) and the network release the GIL in their kernels, so
threads overlap them; both helpers keep the order of their items, so outputs do not depend on
the number of threads, and take a bounded number of items ahead, so memory stays bounded.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from queue import Full, Queue
from typing import Any

import torch

__all__ = ["default_workers", "in_background", "ordered_map"]


def default_workers() -> int:
    """Worker threads of post-processing and slide scans: torch's thread count (the cores this process uses),
    at most 4."""
    return min(torch.get_num_threads(), 4)


def ordered_map(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int, ahead: int | None = None
) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(item))`` in the order of ``items``, ``fn`` running in ``workers`` threads.

    At most ``ahead`` items (default ``2 * workers``) are taken from ``items`` beyond the one
    yielded, so memory is bounded; ``fn``'s errors are raised here. ``workers <= 1`` runs ``fn``
    in this thread. Unlike ``ThreadPoolExecutor.map``, which submits every item at once.
    """
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="monai-uda-postprocess")
    pending: deque = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) > (ahead if ahead is not None else 2 * workers):
                item, future = pending.popleft()
                yield item, future.result()
        while pending:
            item, future = pending.popleft()
            yield item, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def in_background(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Iterate ``items`` in a worker thread, at most ``depth`` items ahead of the caller.

    The worker gets this thread's torch thread count. Its errors are raised here (MONAI's
    ``ThreadBuffer`` would end the iteration silently, passing a truncated slide off as whole);
    closing this iterator stops the worker after its current item.
    """
    queue: Queue = Queue(max(depth, 1))
    stop = threading.Event()
    end = object()
    threads = torch.get_num_threads()

    def put(item: Any) -> bool:
        while not stop.is_set():
            with contextlib.suppress(Full):
                queue.put(item, timeout=0.1)
                return True
        return False

    def produce() -> None:
        torch.set_num_threads(threads)
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as error:  # handed to the caller
            put((end, error))
        finally:
            if hasattr(items, "close"):
                items.close()

    worker = threading.Thread(target=produce, name="monai-uda-windows", daemon=True)
    worker.start()
    try:
        while True:
            item, error = queue.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join()
