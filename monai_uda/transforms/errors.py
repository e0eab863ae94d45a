"""Surfacing user-input errors raised inside MONAI transform chains.

MONAI's ``apply_transform`` re-raises every exception of a transform as
``RuntimeError("applying transform ...")``, with the original as ``__cause__``. A bad file
deep inside a ``Compose`` would therefore reach the user as a long chained traceback instead
of the one-line :class:`~monai_uda.errors.UDAInputError` the CLI prints.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from monai_uda.errors import UDAInputError

__all__ = ["unwrap_input_errors"]


@contextmanager
def unwrap_input_errors() -> Iterator[None]:
    """Re-raise the :class:`UDAInputError` wrapped in a MONAI ``RuntimeError`` (other errors pass unchanged).

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
