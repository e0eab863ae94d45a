"""One training per output folder, and ``--resume true`` continues the run that wrote it.

Every bundle's ``train.yaml`` declares ``run_folder`` (:func:`claim_run_folder`) and appends it to its
handler lists. Claiming the folder, before any stage trains:

1. **Lock.** ``<output_dir>/run.lock`` names the training using the folder (pid, host, start time,
   command). A second training into the same folder stops with one line naming that process. A lock
   whose process is gone (same host, pid not alive), or which names this very process (left by an
   earlier run in it that failed), is stale and taken over. A lock from another host cannot be checked:
   delete it by hand when that run is over. Under ``torchrun`` rank 0 holds it and tells the other ranks.
   Released when the last attached trainer completes and at interpreter exit (also after an error).
2. **No silent overwrite.** A new run (``--resume false``) into a folder holding checkpoints
   (``checkpoint_*.pt``, ``model.pt`` or ``model_best.pt``, also in its stage sub-folders) is refused, unless
   ``--overwrite true``, which deletes them first (so a later ``--resume true`` cannot pick up the old
   run), except ``<output_dir>/model.pt``: the old final model stays usable until the new run's replaces it.
3. **Record.** A new run writes ``run_config.json``: the bundle, the command, and the plain values of the
   config (what the files and the overrides set, without ``$`` expressions and ``@`` references).
4. **Resume continues the recorded run.** With ``--resume true`` a key that defines the run (every plain
   key, except those in :data:`MAY_CHANGE_ON_RESUME`: budgets, device, workers, logging, paths) whose
   value differs from the record is refused in one line naming the key, both values and the override
   that matches the record; so is another bundle. Keys only one side has are not compared.
"""

from __future__ import annotations

import atexit
import inspect
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from monai_uda.errors import UDAInputError
from monai_uda.files import write_json

__all__ = ["RunFolder", "claim_run_folder", "run_checkpoints", "MAY_CHANGE_ON_RESUME", "LOCK_NAME", "RECORD_NAME"]

LOCK_NAME = "run.lock"
RECORD_NAME = "run_config.json"

#: plain keys a resumed run may set differently from the run that wrote the folder (``*_iterations`` too)
MAY_CHANGE_ON_RESUME = frozenset(
    {"resume", "overwrite", "max_iterations", "device", "num_workers", "log_interval", "output_dir", "run_dir",
     "dataset_dir", "bundle_root", "iteration_delay", "inject_nan_at", "inject_loss", "inject_value"}
)
_CHECKPOINT_PATTERNS = ("checkpoint_*.pt", "model.pt", "model_best.pt")


def run_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoints and final models in ``output_dir`` and its direct sub-folders (the stages of two-stage bundles)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found: list[Path] = []
    for sub in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        for pattern in _CHECKPOINT_PATTERNS:
            found.extend(sorted(sub.glob(pattern)))
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _plain(value: Any) -> bool:
    """True for values a user sets directly: no ``$``/``@``/``%`` strings, no ``_target_`` components."""
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return "_target_" not in value and all(_plain(v) for v in value.values())
    return value is None or isinstance(value, (bool, int, float))


def _running_config() -> dict[str, Any]:
    """The plain top-level values of the bundle config being run (files merged, overrides applied).

    Found on the call stack: ``monai.bundle``'s ``ConfigParser`` is the one evaluating the expression that
    creates this object. Empty when called outside a bundle config.
    """
    from monai.bundle import ConfigParser

    frame = inspect.currentframe()
    while frame is not None:
        parser = frame.f_locals.get("self")
        if isinstance(parser, ConfigParser):
            raw = parser.get()
            return (
                {k: v for k, v in raw.items() if not k.startswith("_") and k != "imports" and _plain(v)}
                if isinstance(raw, dict)
                else {}
            )
        frame = frame.f_back
    return {}


def _normal(value: Any) -> Any:
    """A value as JSON gives it back (tuples as lists), words ``true``/``false`` as booleans."""
    from monai_uda import word_to_bool

    value = json.loads(json.dumps(value, default=str))
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return word_to_bool(value) if isinstance(value, str) else value


class RunFolder:
    """The claimed output folder of a training: holds its lock, releases it when the last stage completes.

    Made by :func:`claim_run_folder`. ``attach`` it to the trainer of the last stage; earlier stages of a
    two-stage bundle list :attr:`hold` instead, so the claim happens before they run and the lock is kept
    between the stages.
    """

    def __init__(self, output_dir: str | Path, token: str | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.lock = self.output_dir / LOCK_NAME
        self.token = token
        if token is not None:
            atexit.register(self.release)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self.release)

    @property
    def hold(self) -> _Hold:
        """The handler for a stage that is not the last: attaching it does nothing (the lock stays held)."""
        return _Hold()

    def release(self, *_: Any) -> None:
        """Remove the lock if it is still this run's."""
        if self.token is None:
            return
        try:
            if json.loads(self.lock.read_text(encoding="utf-8")).get("token") == self.token:
                self.lock.unlink()
        except (OSError, ValueError):
            pass
        self.token = None


class _Hold:
    """A no-op handler: see :attr:`RunFolder.hold`."""

    def attach(self, engine: Engine) -> None:
        pass


def _lock_owner(lock: Path) -> dict[str, Any] | None:
    """The lock's content when it names a live process, else ``None`` (no lock, unreadable or stale)."""
    try:
        owner = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict):
        return None
    if owner.get("host") != socket.gethostname():
        return owner  # cannot be checked from here
    pid = int(owner.get("pid", -1))
    if pid == os.getpid() or pid <= 0 or not _pid_alive(pid):
        return None
    return owner


def _take_lock(folder: Path) -> str:
    """Write ``run.lock`` (exclusive create; a stale lock is replaced); returns this run's token."""
    lock = folder / LOCK_NAME
    token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
    content = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
        "token": token,
    }
    for _ in range(3):
        owner = _lock_owner(lock)
        if owner is not None:
            raise UDAInputError(
                f"output folder is in use by another training (pid {owner.get('pid')} on {owner.get('host')}, "
                f"started {owner.get('started')}: {owner.get('command')}); wait for it to end or choose another "
                f"--output_dir (delete {LOCK_NAME} if that run is gone)",
                folder,
            )
        lock.unlink(missing_ok=True)  # stale
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:  # another run took it in between: look again
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(content, fh)
        return token
    raise UDAInputError("output folder is being claimed by another training at the same time", folder)


def _check_resume(folder: Path, bundle: str, config: dict[str, Any]) -> bool:
    """Refuse a resume whose config differs from the recorded run's; returns whether a record exists."""
    record_path = folder / RECORD_NAME
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as exc:
        raise UDAInputError(
            f"cannot read the recorded run config ({exc}); delete it to resume without the check", record_path
        ) from exc
    if record.get("bundle") != bundle:
        raise UDAInputError(f"cannot resume: the folder holds a {record.get('bundle')} run, this is {bundle}", folder)
    recorded = record.get("config", {})
    for key in sorted(set(recorded) & set(config)):
        if key in MAY_CHANGE_ON_RESUME or key.endswith("_iterations"):
            continue
        was, now = _normal(recorded[key]), _normal(config[key])
        if was != now:
            raise UDAInputError(
                f"cannot resume: {key} is {json.dumps(now)} but the run that wrote this folder used {json.dumps(was)} "
                f"(see {RECORD_NAME}); resume with --{key} {json.dumps(was)}, or start a new run with --overwrite true "
                "or another --output_dir",
                folder,
            )
    return True


def _claim(folder: Path, bundle: str, resume: bool, overwrite: bool, config: dict[str, Any]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    token = _take_lock(folder)
    try:
        if resume:
            if not _check_resume(folder, bundle, config):
                write_json(folder / RECORD_NAME, _record(bundle, config), what="run config")
            return token
        old = run_checkpoints(folder)
        if old and not overwrite:
            shown = ", ".join(str(p.relative_to(folder)) for p in old[:3]) + (", ..." if len(old) > 3 else "")
            raise UDAInputError(
                f"output folder holds another run's checkpoints ({shown}); continue it with --resume true, "
                "replace it with --overwrite true, or choose another --output_dir",
                folder,
            )
        for path in old:
            if path != folder / "model.pt":  # the final model stays usable until the new run replaces it
                path.unlink()
        write_json(folder / RECORD_NAME, _record(bundle, config), what="run config")
    except BaseException:
        RunFolder(folder, token).release()
        raise
    return token


def _record(bundle: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"bundle": bundle, "command": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "config": config}


def claim_run_folder(
    output_dir: str | Path,
    bundle: str,
    resume: Any = False,
    overwrite: Any = False,
    config: dict[str, Any] | None = None,
) -> RunFolder:
    """Lock ``output_dir`` for this training, refuse to overwrite another run, record or check the config.

    See the module docstring for the rules. Under ``torchrun`` rank 0 claims and every rank gets its
    verdict (so all stop with the same line when it refuses).

    Args:
        output_dir: the training's output folder.
        bundle: the bundle's name (recorded; a resume of another bundle's folder is refused).
        resume: ``--resume`` (bool or a true/false word).
        overwrite: ``--overwrite``: start a new run over another run's checkpoints, deleting them.
        config: the plain config values to record/compare; default: those of the bundle config being run.

    Raises:
        UDAInputError: folder in use, another run's checkpoints without ``--overwrite true``, or a
            resume whose config differs from the recorded run's.
    """
    import torch.distributed as dist

    from monai_uda import flag
    from monai_uda.engines.distributed import is_main_process

    folder = Path(output_dir)
    config = _running_config() if config is None else config
    token, error = None, None
    if is_main_process():
        try:
            token = _claim(folder, bundle, flag(resume), flag(overwrite), config)
        except UDAInputError as exc:
            error = exc
    if dist.is_available() and dist.is_initialized():
        verdict = [None if error is None else (error.reason, error.path)]
        dist.broadcast_object_list(verdict, src=0)
        if verdict[0] is not None and error is None:
            error = UDAInputError(*verdict[0])
    if error is not None:
        raise error
    return RunFolder(folder, token)
