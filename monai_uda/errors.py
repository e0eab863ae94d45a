"""Errors raised for bad user input, and how they reach the user: one ``error:`` line and an exit code.

The CLI (:func:`monai_uda.cli.main`) and ``python -m monai.bundle run`` (through the hook of
:mod:`monai_uda.options`) report a problem of the user's making with :func:`report_user_error`:
one line naming the file and the problem, exit code 2 (3 for a diverged training), no traceback.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "TrainingDivergedError", "UDAInputError", "fire_command", "report_user_error", "unwrap_input_errors", "user_error",
]


class UDAInputError(ValueError):
    """A problem with a user's file, folder, datalist, config or checkpoint.

    The message always names the offending file (when there is one) and the reason, e.g.
    ``"data/img1.png: expected 1 or 3 channels, got 5"``.
    """

    def __init__(self, reason: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(reason if path is None else f"{path}: {reason}")


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is left untouched."""


@contextmanager
def unwrap_input_errors() -> Iterator[None]:
    """Re-raise the :class:`UDAInputError` wrapped in a MONAI ``RuntimeError`` (other errors pass unchanged).

    MONAI's ``apply_transform`` re-raises every exception of a transform as
    ``RuntimeError("applying transform ...")``, with the original as ``__cause__``; without this,
    a bad file deep inside a ``Compose`` would reach the user as a long chained traceback instead
    of the one ``error:`` line.

    Example::

        with unwrap_input_errors():
            item = transforms({"image": "missing.png"})  # raises "missing.png: file does not exist"
    """
    try:
        yield
    except RuntimeError as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, UDAInputError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


#: errors of the machine rather than the program: reported in one line like bad input
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def user_error(exc: BaseException) -> BaseException | None:
    """The :class:`UDAInputError`, ``TrainingDivergedError`` or disk-full ``OSError`` behind ``exc``, if any.

    MONAI's config parser wraps errors (``RuntimeError: Failed to instantiate component``), so the
    whole ``__cause__``/``__context__`` chain is searched.
    """
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
    _close_progress_bars()
    sys.stdout.flush()
    print(f"error: {_one_line(cause)}", file=sys.stderr, flush=True)
    return 3 if isinstance(cause, TrainingDivergedError) else 2


def fire_command(function: Any, name: str, argv: Sequence[str] | None = None) -> int:
    """Run ``function`` with python-fire on ``argv`` (default ``sys.argv[1:]``): a bad input is one ``error:`` line.

    Returns:
        The exit code: 0, or that of :func:`report_user_error` (2 for a bad input).
    """
    import fire

    try:
        fire.Fire(function, command=list(sys.argv[1:] if argv is None else argv), name=name)
    except Exception as exc:  # MONAI's config parser wraps errors: look down the chain
        cause = user_error(exc)
        if cause is None:
            raise
        return report_user_error(cause)
    return 0
