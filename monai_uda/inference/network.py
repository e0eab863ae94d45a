"""The network stage of inference: weights, device, sliding window, activation and class maps.

:class:`SegmentationNetwork` is what every segmentation runner holds (folder, whole-slide,
volume): it loads the checkpoint (:mod:`monai_uda.networks.weights`), runs MONAI's
:class:`~monai.inferers.SlidingWindowInferer` on whole images or the network alone on window
batches (streaming runners blend them themselves), maps outputs to probabilities and turns them
into class maps and instances (:mod:`monai_uda.inference.postprocess`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

from monai_uda import flag
from monai_uda.errors import UDAInputError
from monai_uda.inference.postprocess import DIAMETER_KEY, binary_to_instances, ternary_to_instances
from monai_uda.networks.weights import NETWORK_CONFIG_KEY, load_checkpoint, load_network_weights

__all__ = [
    "ACTIVATIONS",
    "POSTPROCESSES",
    "SegmentationNetwork",
    "parse_diameter",
    "prepare_network",
    "recorded",
    "recorded_diameter",
    "to_probabilities",
    "window_size",
]

ACTIVATIONS = ("sigmoid", "softmax", "tanh", "none")
POSTPROCESSES = ("binary", "ternary")


def to_probabilities(output: torch.Tensor, activation: str, inplace: bool = False) -> torch.Tensor:
    """Map raw network output ``(B, C, *spatial)`` to probabilities in ``[0, 1]``.

    ``"sigmoid"`` and ``"softmax"`` (over channels) for logits, ``"tanh"`` for AD-GAN generators
    whose output lies in ``[-1, 1]`` (mapped by ``(x + 1) / 2``), ``"none"`` for outputs that are
    already probabilities. ``inplace`` overwrites ``output`` where the activation allows (sigmoid,
    tanh: the same values, no second slab-sized tensor).
    """
    if activation == "sigmoid":
        return output.sigmoid_() if inplace else torch.sigmoid(output)
    if activation == "softmax":
        return torch.softmax(output, dim=1)
    if activation == "tanh":
        return (output.add_(1.0) if inplace else output + 1.0).div_(2.0).clamp_(0.0, 1.0)
    if activation == "none":
        return output
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def window_size(roi_size: Sequence[int] | int, spatial_dims: int) -> tuple[int, ...]:
    """The sliding-window size as one int per spatial dim, checked against ``spatial_dims`` (2 or 3).

    Raises:
        UDAInputError: ``spatial_dims`` is not 2 or 3, or ``roi_size`` has another length.
    """
    if spatial_dims not in (2, 3):
        raise UDAInputError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    roi = tuple(int(r) for r in (roi_size if isinstance(roi_size, Sequence) else [roi_size] * spatial_dims))
    if len(roi) != spatial_dims:
        raise UDAInputError(f"roi_size {roi} does not have {spatial_dims} values (spatial_dims={spatial_dims})")
    return roi


def prepare_network(
    network: torch.nn.Module, device: torch.device, ckpt_path: str | None, ckpt_key: str | None
) -> torch.nn.Module:
    """``network`` on ``device`` in ``eval()`` mode, with the weights of ``ckpt_path`` (under ``ckpt_key``)
    when given."""
    network = network.to(device).eval()
    if ckpt_path is not None:
        load_network_weights(network, ckpt_path, ckpt_key, device)
    return network


def parse_diameter(value: Any, key: str = "diameter") -> float | str | None:
    """A nucleus diameter option: ``"auto"``, ``None`` (also ``"none"``/``"null"``) or a positive number of pixels.

    Raises:
        UDAInputError: anything else, naming ``key``.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto" and key == "diameter":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not number > 0 or number == float("inf"):
        auto = "'auto', " if key == "diameter" else ""
        raise UDAInputError(f"{key} must be {auto}null or a positive number of pixels, got {value!r}")
    return number


@functools.lru_cache(maxsize=8)
def _records(path: str, modified_ns: int) -> dict[str, Any]:
    """The records of the checkpoint ``path`` as it was at ``modified_ns``: its entries that are not weights."""
    state = load_checkpoint(path)
    if not isinstance(state, Mapping):
        return {}
    return {k: v for k, v in state.items() if k == NETWORK_CONFIG_KEY or not isinstance(v, Mapping)}


def recorded(ckpt_path: str | Path | None, key: str, default: Any = None) -> Any:
    """A value training recorded in ``model.pt``: ``source_diameter``, or a network setting of ``network_config``.

    A bundle's inference config takes its network settings from here (``widths:
    "$monai_uda.inference.recorded(@ckpt_path, 'widths', [64, ...])"``), so a checkpoint builds the network
    it was trained as, whatever preset trained it; ``default`` (the paper's setting) serves a file without
    the record (no file, or trained before records were written), and a ``--widths`` override still wins.
    Read as the weights are (:func:`~monai_uda.networks.weights.load_checkpoint`: one error line for a file
    that is not a checkpoint). A file without the record takes that of the ``model.pt`` of its run folder, the
    same training run: ``model_best.pt`` the one beside it, ``scored/model_iteration=N.pt`` (label-free
    selection) the one a folder up.
    """
    if ckpt_path is None or not Path(ckpt_path).is_file():
        return default
    path = Path(ckpt_path).resolve()
    records = _records(str(path), path.stat().st_mtime_ns)
    value = records.get(key, records.get(NETWORK_CONFIG_KEY, {}).get(key))
    if value is None:
        final = (path.parent.parent if path.parent.name == "scored" else path.parent) / "model.pt"
        return recorded(final, key, default) if final != path else default
    return value


def recorded_diameter(ckpt_path: str | Path | None) -> float | None:
    """The source's typical nucleus diameter recorded in a ``model.pt`` (``None``: no file, or trained before it was).

    See :func:`recorded` (``model_best.pt`` and ``scored/`` files take that of their run's ``model.pt``).
    """
    value = recorded(ckpt_path, DIAMETER_KEY)
    return None if value is None else float(value)


class SegmentationNetwork:
    """A segmentation network ready for inference, and how its output becomes classes and instances.

    Args:
        network: the segmentation network.
        spatial_dims: 2 or 3.
        roi_size: sliding-window size (one value per spatial dim).
        sw_batch_size: windows per forward pass.
        overlap: window overlap fraction.
        mode: window blending, ``"gaussian"`` or ``"constant"``.
        device: torch device for the network and the windows.
        ckpt_path: checkpoint to load, or ``None`` to use ``network`` as is.
        ckpt_key: key of the network inside the checkpoint (e.g. ``"segmenter"``), ``None`` for a
            plain state dict.
        output_activation: ``"sigmoid"``, ``"softmax"``, ``"tanh"`` or ``"none"`` (see :func:`to_probabilities`).
        threshold: foreground probability threshold of the binary route.
        postprocess: ``"binary"`` (foreground = channel 0, or 1 - background for softmax) or
            ``"ternary"`` (channels ``[background, edge, interior]``).
        min_size: smallest nucleus kept, in pixels/voxels.
        diameter: typical nucleus diameter of the images in pixels, ``"auto"`` (estimated per image
            from the predicted foreground) or ``None``; with ``reference_diameter`` the binary
            route's split scales with their ratio
            (:func:`~monai_uda.inference.postprocess.binary_to_instances`).
        reference_diameter: the source's typical diameter, recorded in ``model.pt`` by training
            (:func:`recorded_diameter`); ``None`` (older checkpoints): the split is not scaled.
        amp: run the network under ``torch.autocast``.
        padding_mode: how windows beyond the image border are padded (``torch.nn.functional.pad`` mode).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        spatial_dims: int = 2,
        roi_size: Sequence[int] = (256, 256),
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        mode: str = "gaussian",
        device: str = "cpu",
        ckpt_path: str | None = None,
        ckpt_key: str | None = None,
        output_activation: str = "sigmoid",
        threshold: float = 0.5,
        postprocess: str = "binary",
        min_size: int = 10,
        diameter: float | str | None = "auto",
        reference_diameter: float | None = None,
        amp: bool = False,
        padding_mode: str = "constant",
    ) -> None:
        roi = window_size(roi_size, spatial_dims)
        if output_activation not in ACTIVATIONS:
            raise UDAInputError(f"output_activation must be one of {ACTIVATIONS}, got {output_activation!r}")
        if postprocess not in POSTPROCESSES:
            raise UDAInputError(f"postprocess must be one of {POSTPROCESSES}, got {postprocess!r}")
        self.device = torch.device(device)
        self.network = prepare_network(network, self.device, ckpt_path, ckpt_key)
        self.inferer = SlidingWindowInferer(
            roi_size=roi, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, padding_mode=padding_mode
        )
        self.output_activation = output_activation
        self.threshold = threshold
        self.postprocess = postprocess
        self.min_size = min_size
        self.split = {
            "diameter": parse_diameter(diameter),
            "reference_diameter": parse_diameter(reference_diameter, "reference_diameter"),
        }
        self.amp = flag(amp)
        self.network_seconds = 0.0  # time in the network's forward passes of the window batches

    @property
    def roi_size(self) -> tuple[int, ...]:
        return tuple(int(r) for r in self.inferer.roi_size)

    def probabilities(self, inputs: torch.Tensor, path: Path) -> np.ndarray:
        """Sliding-window inference of a whole image and activation: ``(C, *spatial)`` probabilities on the CPU."""
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=self.amp):
            output = self.inferer(inputs.to(self.device), self.network)
        probs = to_probabilities(output.float(), self.output_activation)[0].cpu().numpy()
        if self.postprocess == "ternary" and probs.shape[0] != 3:
            raise UDAInputError(
                f"ternary post-processing needs 3 output channels, the network gave {probs.shape[0]}", path
            )
        if self.postprocess == "binary" and probs.shape[0] != 1 and self.output_activation != "softmax":
            raise UDAInputError(
                f"binary post-processing with {self.output_activation!r} needs 1 output channel, "
                f"the network gave {probs.shape[0]}",
                path,
            )
        return probs

    def instances(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities ``(C, *spatial)`` -> instance ids (0 = background)."""
        if self.postprocess == "ternary":
            return ternary_to_instances(probs, min_size=self.min_size)
        foreground = 1.0 - probs[0] if self.output_activation == "softmax" else probs[0]
        return binary_to_instances(foreground, threshold=self.threshold, min_size=self.min_size, **self.split)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """The network on a batch of windows (no blending), as float32 on the CPU; timed in ``network_seconds``."""
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=self.amp):
            out = self.network(batch.to(self.device)).float().cpu()
        self.network_seconds += time.perf_counter() - start
        return out

    def classes(self, raw: np.ndarray) -> np.ndarray:
        """Blended raw output ``(C, h, ...)`` -> class map: foreground > threshold (binary) or argmax (ternary).

        Pixels no window covered (NaN, skipped as blank) are background.
        """
        raw = torch.from_numpy(raw)  # a fresh array from the blender: cleaned in place, saving a slab-sized copy
        uncovered = torch.isnan(raw[0])
        probs = to_probabilities(raw.nan_to_num_()[None], self.output_activation, inplace=True)[0]
        if self.postprocess == "ternary":
            if probs.shape[0] != 3:
                raise UDAInputError(
                    f"ternary post-processing needs 3 output channels, the network gave {probs.shape[0]}"
                )
            classes = torch.argmax(probs, dim=0)
        else:
            foreground = 1.0 - probs[0] if self.output_activation == "softmax" else probs[0]
            classes = foreground > self.threshold
        classes[uncovered] = 0
        return classes.numpy().astype(np.uint8)

    def to_instances(self, classes: np.ndarray) -> np.ndarray:
        """Class-map crop (``uint8``, 0 = background) -> instance ids, by the same post-processing as
        :meth:`instances` (``diameter: auto`` is estimated on the crop: a group of whole nuclei)."""
        if self.postprocess == "ternary":
            return ternary_to_instances(classes, min_size=self.min_size)
        return binary_to_instances(classes > 0, min_size=self.min_size, **self.split)
