"""Errors raised for bad user input: the CLI prints them as one line, never a traceback."""

from __future__ import annotations

from pathlib import Path


class UDAInputError(ValueError):
    """A problem with a user's file, folder, datalist, config or checkpoint.

    The message always names the offending file (when there is one) and the reason, e.g.
    ``"data/img1.png: expected 1 or 3 channels, got 5"``.
    """

    def __init__(self, reason: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(reason if path is None else f"{path}: {reason}")
