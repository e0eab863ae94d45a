"""Load a network's weights from a model or checkpoint file, with one-line errors.

A neutral module: training (:mod:`monai_uda.engines.checkpoint`), inference and export all load
weights through it, so inference does not depend on the training engines.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from monai_uda.errors import UDAInputError

__all__ = ["NETWORK_CONFIG_KEY", "load_checkpoint", "load_network_weights", "unsafe_checkpoint_error"]

#: the entry of ``model.pt`` recording the config keys that shape its networks (``widths``, ``backbone``, ...):
#: written by training, read by inference (:func:`monai_uda.inference.recorded`)
NETWORK_CONFIG_KEY = "network_config"


def unsafe_checkpoint_error(exc: pickle.UnpicklingError, path: str | Path) -> UDAInputError:
    """The error for a file that ``torch.load(weights_only=True)`` refused (pickled objects besides tensors)."""
    found = re.search(r"GLOBAL (\S+)", str(exc))
    what = f" ({found.group(1)})" if found else ""
    return UDAInputError(
        f"refused to load: the checkpoint holds Python objects{what} besides tensors, which could run code "
        "(torch.load with weights_only=True); use a checkpoint written by monai-uda",
        path,
    )


#: how a ``torch.save`` file starts: a zip archive (the default format), or the legacy pickle's magic number
_TORCH_FILE_HEADS = (b"PK\x03\x04", b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one-line errors for other files, unsafe and damaged ones.

    A file that does not start like a ``torch.save`` file (an image, a text file) is "not a
    checkpoint"; ``torch.load`` alone would call it unsafe pickle or fail with a bare ``KeyError``.
    """
    if not Path(path).is_file():
        raise UDAInputError("checkpoint file does not exist", path)
    with open(path, "rb") as f:
        head = f.read(len(_TORCH_FILE_HEADS[1]))
    if not head.startswith(_TORCH_FILE_HEADS):
        raise UDAInputError("not a checkpoint (not a file written by torch.save)", path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise unsafe_checkpoint_error(exc, path) from exc
    except Exception as exc:
        detail = (str(exc).splitlines() or [""])[0].split(". ")[0]
        raise UDAInputError(
            f"cannot read checkpoint: truncated, corrupt or not a PyTorch file ({type(exc).__name__}: {detail})", path
        ) from exc


def load_network_weights(
    network: torch.nn.Module, ckpt_path: str | Path, key: str | None = None, map_location: Any = "cpu"
) -> torch.nn.Module:
    """Load a network's weights from a model or checkpoint file, with one-line errors.

    Args:
        network: the network to fill.
        ckpt_path: a plain ``state_dict`` file or a dict holding it under ``key``.
        key: name of the network inside the file (e.g. ``"segmenter"``).
        map_location: passed to ``torch.load``.

    Every weight of ``network`` must be in the file, with its shape; the file may hold more only when the
    network says ``skips_training_only_keys`` (:class:`~monai_uda.networks.mask_rcnn.DetectorInference`:
    a training ``model.pt`` also holds discriminators or the other domain's branch).

    Raises:
        UDAInputError: missing/unreadable file, unsafe content, or weights of another network.
    """
    path = Path(ckpt_path)
    state = load_checkpoint(path, map_location)
    if key is not None and isinstance(state, dict) and key in state:
        state = state[key]
    elif key is not None and isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise UDAInputError(f"checkpoint has no network '{key}' (it has: {', '.join(sorted(state))})", path)
    if not isinstance(state, dict):
        raise UDAInputError("checkpoint does not hold a state_dict", path)
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    # an inference-only module (a detector cut out of a training network) takes a training model.pt whole
    unexpected = [] if getattr(network, "skips_training_only_keys", False) else [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        detail = (
            f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'" if unexpected
            else f"'{wrong[0]}' has shape {tuple(state[wrong[0]].shape)}, network expects {tuple(own[wrong[0]].shape)}"
        )
        raise UDAInputError(
            f"checkpoint does not fit the network ({detail}; "
            f"from another bundle or configuration?{_trained_with(path)})",
            path,
        )
    network.load_state_dict(state)
    return network


def _trained_with(path: Path) -> str:
    """Where a checkpoint's training folder records how it was trained: the settings inference must repeat."""
    record = path.parent / "run_config.json"
    try:
        command = json.loads(record.read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return ""
    if not isinstance(command, list) or not command:
        return ""
    return f" it was trained by: {' '.join(str(word) for word in command[1:])} (see {record})"
