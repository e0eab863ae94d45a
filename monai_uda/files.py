"""One way to write an output file: through symlinks, never over a device or FIFO, atomically, umask-respecting.

Every writer of the package (images, label maps, JSON, CSV, checkpoints, datalists) goes through
:func:`atomic_write`:

- a symlink is followed: the file it points to is replaced, the link stays (as editors do);
- a path naming a folder, a device, a FIFO or a socket is refused (``UDAInputError``), never replaced
  by a regular file;
- the content goes to a temporary file next to the target, renamed over it when complete, so a
  crash or Ctrl-C never leaves a half-written file under the real name;
- a new file gets the permissions ``open()`` would give it (``0o666`` minus the umask), a replaced
  file keeps its own (``tempfile.mkstemp`` would make every output owner-only, ``0o600``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from monai_uda.errors import UDAInputError

__all__ = ["output_target", "temporary_sibling", "commit", "atomic_write", "write_text", "write_json"]


def output_target(path: str | Path) -> Path:
    """The file a write to ``path`` must replace: symlinks resolved, special files refused.

    Raises:
        UDAInputError: ``path`` (or what its link points to) is a folder, a device, a FIFO or a socket.
    """
    path = Path(path)
    target = Path(os.path.realpath(path))
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise UDAInputError(f"cannot write output ({exc.strerror or exc})", path) from exc
    if stat.S_ISDIR(mode):
        raise UDAInputError("is a folder, expected a file name", path)
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        shown = path if target == path.absolute() else f"{path} (-> {target})"
        raise UDAInputError(f"is {kind}, not a regular file; refusing to replace it", shown)
    return target


def temporary_sibling(target: Path, what: str = "output") -> Path:
    """An empty new file next to ``target`` whose name ends with ``target``'s name (so its suffix picks the format).

    Created with ``os.open(..., 0o666)``: the process umask applies, as for any file ``open()`` creates;
    a ``target`` that exists lends its own permissions.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666
        tmp = target.parent / f".tmp-{secrets.token_hex(4)}-{target.name}"
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
        if mode != 0o666:
            os.chmod(tmp, mode)  # an existing file's own mode, umask or not
    except OSError as exc:
        raise UDAInputError(f"cannot write {what} ({exc.strerror or exc})", target.parent) from exc
    return tmp


def commit(tmp: Path, target: Path, what: str = "output") -> Path:
    """Rename the complete ``tmp`` over ``target`` (removing ``tmp`` when that fails)."""
    try:
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UDAInputError(f"cannot write {what} ({exc.strerror or exc})", target) from exc
    return target


@contextlib.contextmanager
def atomic_write(path: str | Path, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces the file ``path`` names (see the module doc).

    Any exception (also ``KeyboardInterrupt``) removes the temporary file; an ``OSError`` (disk full,
    read-only file system, ...) becomes one :class:`~monai_uda.errors.UDAInputError` naming the file.
    """
    target = output_target(path)
    tmp = temporary_sibling(target, what)
    try:
        yield tmp
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UDAInputError(f"cannot write {what} ({exc.strerror or exc})", path) from exc
        raise
    commit(tmp, target, what)


def write_text(path: str | Path, text: str, what: str = "output") -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_write`."""
    with atomic_write(path, what) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: Any, what: str = "output", **dump_kwargs: Any) -> Path:
    """Write ``data`` as indented JSON (plus a final newline) to ``path`` with :func:`atomic_write`."""
    return write_text(path, json.dumps(data, indent=2, **dump_kwargs) + "\n", what)
