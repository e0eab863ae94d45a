"""Give memory the process has freed back to the operating system.

A neutral module shared by the training engines (:func:`monai_uda.engines.memory.release_cached`)
and the streaming inference (after each labelled slab).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable

__all__ = ["trim_freed_memory"]


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` on another platform or C library."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def trim_freed_memory() -> bool:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim(0)``, every heap arena).

    glibc keeps freed blocks in its heaps (one per thread) for reuse; allocations made in another
    thread or in larger blocks may not reuse them, so without a trim the peak resident memory can
    count both. Trimming has a cost (the pages given back are faulted in again when reused), so
    callers trim after large frees, not in tight loops.

    Returns:
        False where that is not possible (not Linux with glibc).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
