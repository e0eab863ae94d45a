"""Checkpoint helpers: what a checkpoint holds, finding the newest one, the final model file.

Periodic checkpoints are written by :class:`AtomicCheckpointSaver` (MONAI's ``CheckpointSaver``, whose
Ignite ``DiskSaver`` MONAI creates with ``atomic=False``, switched to a temporary file then rename, so
a run killed while saving never leaves a half-written checkpoint) and read back by MONAI's
``CheckpointLoader`` (``torch.load(weights_only=True, map_location=...)``). They hold every network, every
optimiser, the trainer state (iteration/epoch) and the torch RNG state, see
:func:`checkpoint_objects`.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointLoader, CheckpointSaver

from monai_uda.engines.distributed import is_main_process
from monai_uda.errors import UDAInputError
from monai_uda.files import atomic_write
from monai_uda.networks.weights import NETWORK_CONFIG_KEY, load_network_weights, unsafe_checkpoint_error

__all__ = [
    "AtomicCheckpointSaver",
    "RNGState",
    "ResumeCheckpointLoader",
    "checkpoint_objects",
    "latest_checkpoint",
    "FinalModelSaver",
    "save_atomic",
    "load_network_weights",
]

_ITERATION = re.compile(r"(\d+)\.pt$")


class RNGState:
    """The torch (CPU and CUDA) RNG state as a checkpointable object."""

    def state_dict(self) -> dict[str, Any]:
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["cpu"].cpu())
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(state["cuda"].cpu()))


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` writing every checkpoint to a temporary file, then renaming it.

    MONAI builds its Ignite ``DiskSaver`` with ``atomic=False`` (to keep group/other read
    permission, which Ignite's atomic mode now restores itself), so a process killed during
    ``torch.save`` leaves a truncated ``checkpoint_iteration=N.pt`` behind. Takes the arguments of
    ``monai.handlers.CheckpointSaver``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True

    def attach(self, engine: Engine) -> None:
        """Attach, first adopting the periodic checkpoints already in ``save_dir`` (see :meth:`adopt_saved`)."""
        self.adopt_saved()
        super().attach(engine)

    def adopt_saved(self) -> list[Path]:
        """Count the periodic checkpoints on disk as saved by this saver, keeping only the newest ``n_saved``.

        Ignite's ``Checkpoint`` deletes only files it wrote itself, so after ``--resume true`` the
        checkpoints of the interrupted run would stay forever and accumulate, one set per resume. Here
        they join its list, ordered by iteration: the next saves delete them oldest first, and any beyond
        ``n_saved`` are deleted now. Returns the checkpoints kept.
        """
        checkpoint = self._interval_checkpoint
        if checkpoint is None:
            return []
        folder = Path(checkpoint.save_handler.dirname)
        score = "epoch" if self.epoch_level else "iteration"
        prefix = f"{checkpoint.filename_prefix}_" if checkpoint.filename_prefix else ""
        pattern = re.compile(rf"{re.escape(prefix)}checkpoint_{score}=(\d+)\.pt")
        found = sorted((int(m.group(1)), p.name) for p in folder.glob("*.pt") if (m := pattern.fullmatch(p.name)))
        keep = found if checkpoint.n_saved is None else found[max(len(found) - checkpoint.n_saved, 0):]
        for _, name in found[: len(found) - len(keep)]:
            (folder / name).unlink(missing_ok=True)
        checkpoint._saved = [Checkpoint.Item(priority, name) for priority, name in keep]
        return [folder / name for _, name in keep]


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` for ``--resume``, reporting a checkpoint that does not fit in one line.

    Resuming in an output folder whose checkpoint was written by another bundle or with other
    network sizes fails deep in ``load_state_dict`` (or in Ignite) with a multi-line message; here
    it is one :class:`~monai_uda.errors.UDAInputError` naming the checkpoint. Takes the arguments of
    ``monai.handlers.CheckpointLoader``.
    """

    def __call__(self, engine: Engine) -> None:
        try:
            super().__call__(engine)
        except pickle.UnpicklingError as exc:
            raise unsafe_checkpoint_error(exc, self.load_path) from exc
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            detail = " ".join(str(exc).split())
            detail = detail if len(detail) <= 240 else detail[:237] + "..."
            raise UDAInputError(
                f"cannot resume: the checkpoint does not fit this configuration ({detail}); "
                "was it written by another bundle or with other network sizes?",
                self.load_path,
            ) from exc


def checkpoint_objects(trainer: Engine) -> dict[str, Any]:
    """Everything a resumable checkpoint must hold: trainer, RNG, networks and optimisers."""
    return {"trainer": trainer, "rng": RNGState(), **trainer.method.checkpoint_objects()}


def latest_checkpoint(output_dir: str | Path, required: bool = True) -> str | None:
    """Newest periodic checkpoint (highest iteration) in ``output_dir``, checked to be complete.

    Checkpoints are written atomically, so a damaged one comes from outside (an interrupted
    copy, a full disk during a manual move, ...); it is reported rather than skipped, so a run
    never silently resumes from further back than the user expects.

    Raises:
        UDAInputError: when ``required`` and there is none, or when the newest one is truncated
            or corrupt (its zip archive does not read back with matching CRCs).
    """
    folder = Path(output_dir)
    found = []
    if folder.is_dir():
        for p in folder.glob("*checkpoint*.pt"):
            m = _ITERATION.search(p.name)
            if m and not p.name.startswith("."):
                found.append((int(m.group(1)), p))
    if not found:
        if required:
            raise UDAInputError("--resume true but no checkpoint to resume from", folder)
        return None
    found.sort()
    newest = found[-1][1]
    try:
        with zipfile.ZipFile(newest) as archive:
            bad_entry = archive.testzip()
        damaged = None if bad_entry is None else f"bad CRC in {bad_entry}"
    except (zipfile.BadZipFile, OSError) as exc:
        damaged = str(exc)
    if damaged is not None:
        older = f"; delete it to resume from {found[-2][1].name}" if len(found) > 1 else ""
        raise UDAInputError(f"checkpoint is truncated or corrupt ({damaged}){older}", newest)
    return str(newest)


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename.

    A reader never sees a half-written file (:mod:`monai_uda.files`).
    """
    path = Path(path)
    with atomic_write(path, what="checkpoint") as tmp:
        torch.save(obj, tmp)
    return path


class FinalModelSaver:
    """At the end of training, write the method's networks to ``<output_dir>/model.pt``.

    The file maps each network name (``segmenter``, ``reconstructor``, ...) to its
    ``state_dict``: what ``inference.yaml`` loads with ``ckpt_key``. With ``source_data`` it also
    records the typical nucleus diameter of the source labels the networks were trained on (a
    float under ``"source_diameter"``, read with ``torch.load(weights_only=True)``): inference
    scales its instance split by the target's diameter relative to it. With ``network_config`` it
    records the config values that shape the networks (under ``"network_config"``): inference
    builds the same networks from them (:func:`monai_uda.inference.recorded`). Only rank 0 writes.

    Args:
        output_dir: folder of the file.
        filename: its name.
        source_data: the training dataset, whose ``source`` items hold ``"label"`` maps (e.g.
            :class:`~monai_uda.data.dataset.UnpairedDataset`); ``None``: nothing recorded.
        source_samples: source items drawn, evenly spaced, for the estimate.
        network_config: config key -> value (plain lists, numbers, strings, dicts of them) of the
            settings the inference config needs to build the networks; ``None``: nothing recorded.
    """

    def __init__(
        self,
        output_dir: str | Path,
        filename: str = "model.pt",
        source_data: Any = None,
        source_samples: int = 16,
        network_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(output_dir) / filename
        self.source_data = source_data
        self.source_samples = source_samples
        # as JSON gives them back (tuples as lists): what torch.load(weights_only=True) reads
        self.network_config = None if network_config is None else json.loads(json.dumps(dict(network_config)))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def source_diameter(self) -> float | None:
        """Typical diameter of the source labels (as the training transforms give them), ``None`` without data."""
        from monai_uda.inference.postprocess import typical_diameter  # inference is not needed to train otherwise

        source = getattr(self.source_data, "source", None)
        if source is None or not len(source):
            return None
        picks = sorted({round(i) for i in torch.linspace(0, len(source) - 1, self.source_samples).tolist()})
        return typical_diameter(torch.as_tensor(source[i]["label"])[0].numpy() > 0 for i in picks)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        method = engine.method
        state: dict[str, Any] = {name: module.state_dict() for name, module in method.networks().items()}
        diameter = self.source_diameter()
        if diameter is not None:
            state["source_diameter"] = diameter
        if self.network_config:
            state[NETWORK_CONFIG_KEY] = self.network_config
        save_atomic(state, self.path)
        engine.logger.info(f"saved final networks to {self.path}")
