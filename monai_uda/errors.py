"""Errors raised for bad user input, and how they reach the user: one ``error:`` line and an exit code.

The CLI (:func:`monai_uda.cli.main`) and ``python -m monai.bundle run`` (through the hook of
:mod:`monai_uda.options`) report a problem of the user's making with :func:`report_user_error`:
one line naming the file and the problem, exit code 2 (3 for a diverged training), no traceback.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

__all__ = ["UDAInputError", "report_user_error", "user_error"]


class UDAInputError(ValueError):
    """A problem with a user's file, folder, datalist, config or checkpoint.

    The message always names the offending file (when there is one) and the reason, e.g.
    ``"data/img1.png: expected 1 or 3 channels, got 5"``.
    """

    def __init__(self, reason: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(reason if path is None else f"{path}: {reason}")


#: errors of the machine rather than the program: reported in one line like bad input
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def user_error(exc: BaseException) -> BaseException | None:
    """The :class:`UDAInputError`, ``TrainingDivergedError`` or disk-full ``OSError`` behind ``exc``, if any.

    MONAI's config parser wraps errors (``RuntimeError: Failed to instantiate component``), so the
    whole ``__cause__``/``__context__`` chain is searched.
    """
    from monai_uda.engines.trainer import TrainingDivergedError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (UDAInputError, TrainingDivergedError)):
            return current
        if isinstance(current, OSError) and current.errno in _DISK_ERRNOS:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _one_line(error: BaseException) -> str:
    """The ``error:`` line's text: the message, or for a disk error the file (when known) and reason."""
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}cannot write ({error.strerror or error})"
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:  # re-raised from a DataLoader worker
        last = text.rstrip().splitlines()[-1]
        text = last.split(": ", 1)[1] if last.startswith(f"{type(error).__module__}.{type(error).__name__}: ") else last
    return " ".join(text.split())


def _close_progress_bars() -> None:
    """End the line of any progress bar an error interrupted, so the ``error:`` line stands alone."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def report_user_error(cause: BaseException) -> int:
    """Print ``error: <message>`` as the last line of stderr; the exit code: 3 for a diverged training, else 2."""
    from monai_uda.engines.trainer import TrainingDivergedError

    _close_progress_bars()
    sys.stdout.flush()
    print(f"error: {_one_line(cause)}", file=sys.stderr, flush=True)
    return 3 if isinstance(cause, TrainingDivergedError) else 2
