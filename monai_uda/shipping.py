"""Put a trained model into a bundle's ``models/`` for sharing (model-zoo layout), hashed in ``large_files.yml``.

A training run's ``model.pt`` (or ``model_best.pt``, the checkpoint its selection kept) holds every network
of the method (discriminators, reconstruction decoders, ...); ``model.pt`` also the records inference needs
(``network_config``, ``source_diameter``).
:func:`ship_weights` keeps only the networks (of a Mask R-CNN bundle's ``detector``: the parts) the bundle's
``inference.yaml`` loads and those records, optionally as float16 (halves the file; inference loads them
into its float32 networks), writes ``<bundle>/models/model.pt`` atomically and puts the file's md5 in
``<bundle>/large_files.yml``, the model zoo's download list (its ``url`` stays empty: nothing is downloaded,
the file is in the bundle).

    python -m monai_uda.shipping cellseg_uda runs/cellseg_uda/model.pt [--half true] [--bundle_dir DIR]
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from monai_uda import flag
from monai_uda.engines.checkpoint import save_atomic
from monai_uda.errors import UDAInputError
from monai_uda.files import atomic_write
from monai_uda.inference.network import recorded
from monai_uda.inference.postprocess import DIAMETER_KEY
from monai_uda.networks.weights import NETWORK_CONFIG_KEY, load_checkpoint

__all__ = ["INFERENCE_NETWORKS", "INFERENCE_PARTS", "md5sum", "ship_weights"]

#: per bundle, the networks of ``model.pt`` its ``inference.yaml`` loads
INFERENCE_NETWORKS: dict[str, tuple[str, ...]] = {
    "cellseg_uda": ("segmenter",),
    "ad_gan": ("generator",),
    "cyc_pdam": ("detector",),
    "darcnn": ("detector",),
}
#: per Mask R-CNN bundle, the parts of its ``detector`` that inference runs (the modules of
#: :func:`~monai_uda.networks.mask_rcnn.inference_detector`); the rest trains only (CyC-PDAM's semantic branch
#: and discriminators, DARCNN's source branch and L_sim projection) and is not shipped
INFERENCE_PARTS: dict[str, tuple[str, ...]] = {
    "cyc_pdam": ("detector.",),
    "darcnn": ("shared_encoder.", "private_encoders.target.", "rpn.", "heads.target."),
}
_SHIPPED = "models/model.pt"


def md5sum(path: str | Path) -> str:
    """The md5 hex digest of a file (``large_files.yml``'s ``hash_type: md5``)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inference_part(bundle: str, state: Mapping[str, torch.Tensor], half: bool) -> dict[str, torch.Tensor]:
    """The weights of ``state`` that ``bundle``'s inference loads, floating ones as float16 if ``half``."""
    parts = INFERENCE_PARTS.get(bundle)
    return {
        k: v.half() if half and v.is_floating_point() else v
        for k, v in state.items()
        if parts is None or k.startswith(parts)
    }


def _record_hash(bundle_dir: Path, hash_val: str) -> None:
    """Set the md5 of ``models/model.pt`` in ``large_files.yml``, keeping its leading comment lines."""
    path = bundle_dir / "large_files.yml"
    text = path.read_text() if path.is_file() else ""
    comments = [line for line in text.splitlines() if line.startswith("#")]
    data = (yaml.safe_load(text) if text else None) or {}
    entries = [e for e in data.get("large_files", []) if e.get("path") != _SHIPPED]
    entries.insert(0, {"path": _SHIPPED, "url": "", "hash_val": hash_val, "hash_type": "md5"})
    body = yaml.safe_dump({"large_files": entries}, sort_keys=False)
    with atomic_write(path, what="large_files.yml") as tmp:
        Path(tmp).write_text("\n".join([*comments, body]))


def ship_weights(bundle: str, ckpt_path: str | Path, half: Any = False, bundle_dir: str | Path | None = None) -> Path:
    """Write ``ckpt_path``'s inference networks and records to ``<bundle_dir>/models/model.pt``, hash it.

    Args:
        bundle: the bundle's name (which networks its inference loads: :data:`INFERENCE_NETWORKS`).
        ckpt_path: a ``model.pt`` written by the bundle's training (it must record ``network_config``, so that
            ``inference.yaml`` builds the networks the weights fit without further options), or the
            ``model_best.pt`` of its checkpoint selection, which takes the records of the ``model.pt`` beside it.
        half: store floating tensors as float16.
        bundle_dir: the bundle folder (default: the installed or checked-out bundle of that name).

    Returns:
        The written file.

    Raises:
        UDAInputError: unknown bundle, not a checkpoint, a network missing, or no ``network_config`` record.
    """
    from monai_uda.bundle_runner import bundle_path

    if bundle not in INFERENCE_NETWORKS:
        raise UDAInputError(f"unknown bundle {bundle!r}; choose one of {', '.join(INFERENCE_NETWORKS)}")
    folder = Path(bundle_dir) if bundle_dir is not None else bundle_path(bundle)
    state = load_checkpoint(ckpt_path)
    if not isinstance(state, Mapping):
        raise UDAInputError("not a model file of a bundle training (expected network name -> weights)", ckpt_path)
    records = {k: recorded(ckpt_path, k) for k in (NETWORK_CONFIG_KEY, DIAMETER_KEY)}
    networks = INFERENCE_NETWORKS[bundle]
    missing = [k for k in networks if k not in state]
    missing += [NETWORK_CONFIG_KEY] if records[NETWORK_CONFIG_KEY] is None else []
    if missing:
        raise UDAInputError(f"has no {', '.join(missing)}: ship a model of a {bundle} training", ckpt_path)
    shipped: dict[str, Any] = {name: _inference_part(bundle, state[name], flag(half)) for name in networks}
    shipped.update({k: v for k, v in records.items() if v is not None})
    out = save_atomic(shipped, folder / _SHIPPED)
    _record_hash(folder, md5sum(out))
    return out


if __name__ == "__main__":
    import sys

    from monai_uda.errors import fire_command

    sys.exit(fire_command(ship_weights, "monai_uda.shipping"))
