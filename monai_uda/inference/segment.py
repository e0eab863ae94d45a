"""Segment every image of a folder (2D images or 3D volumes) with a trained network.

:class:`FolderSegmenter` is what the ``inference.yaml`` of every bundle instantiates: it loads
the checkpoint, runs MONAI's :class:`~monai.inferers.SlidingWindowInferer` (images of any size,
also smaller than the window), turns the output into probabilities, post-processes them into a
binary mask and an instance map (:mod:`monai_uda.inference.postprocess`) and writes them next to
the input's name with its spacing/affine.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from tqdm import tqdm

from monai_uda.data.io import list_images, stem_of, write_array
from monai_uda.engines.checkpoint import load_network_weights
from monai_uda.errors import UDAInputError
from monai_uda.inference.overlay import save_overlay
from monai_uda.inference.postprocess import binary_to_instances, ternary_to_instances
from monai_uda.transforms import inference_transforms, unwrap_input_errors
from monai_uda.transforms.intensity import ChannelPolicy

__all__ = ["FolderSegmenter", "check_outputs", "to_probabilities", "volume_geometry", "window_size"]

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


def volume_geometry(affine: np.ndarray | None, spacing: Sequence[float] | None) -> dict[str, Any]:
    """:func:`~monai_uda.data.io.write_array` meta for a 3D output: the input's NIfTI ``affine`` when
    there is one, else its ``spacing`` (a TIFF z-step ``z`` gives ``(z, 1, 1)``), else nothing."""
    if affine is not None:
        return {"affine": np.asarray(affine)}
    if spacing and len(spacing) == 1:
        spacing = (spacing[0], 1.0, 1.0)
    return {"spacing": tuple(spacing)} if spacing and len(spacing) == 3 else {}


def output_stems(inputs: Iterable[Path]) -> dict[Path, str]:
    """The name each input's outputs start with: its stem, or ``<stem>_<ext>`` when inputs share a stem.

    ``x.png`` and ``x.tif`` in one folder would otherwise both write ``x_mask.png``, the second
    replacing the first; they get ``x_png_*`` and ``x_tif_*`` (``x.nii.gz``: ``x_nii_gz_*``). A lone
    ``x.png`` keeps ``x_*``, the names evaluation pairs with ground truth ``x``.
    """
    inputs = [Path(p) for p in inputs]
    counts: dict[str, int] = {}
    for path in inputs:
        counts[stem_of(path)] = counts.get(stem_of(path), 0) + 1
    stems = {}
    for path in inputs:
        stem = stem_of(path)
        stems[path] = stem if counts[stem] == 1 else f"{stem}_{path.name[len(stem):].lstrip('.').replace('.', '_').lower()}"
    return stems


def check_outputs(output_dir: str | Path, outputs: Iterable[Path], inputs: Iterable[Path], kind: str = "image") -> None:
    """Refuse to run when an output would overwrite an input or another output, or ``output_dir`` is not writable.

    Shared by the folder inferers (:class:`FolderSegmenter`,
    :class:`~monai_uda.inference.synthesis.FolderSynthesizer`); creates ``output_dir``. Runs before anything
    is written, so a refused run leaves the folder as it was.

    Args:
        output_dir: the output folder.
        outputs: every path that will be written.
        inputs: every input file.
        kind: what the inputs are, for the message (``"image"``, ``"mask"``).

    Raises:
        UDAInputError: an output path is an input or is written twice, or the folder cannot be created or written.
    """
    output_dir = Path(output_dir)
    input_set = {Path(p).resolve() for p in inputs}
    seen: set[Path] = set()
    for out in outputs:
        resolved = Path(out).resolve()
        if resolved in input_set:
            raise UDAInputError(f"output {Path(out).name} would overwrite an input {kind}; choose another output_dir", out)
        if resolved in seen:
            raise UDAInputError(f"two inputs would write output {Path(out).name}; rename one of them", out)
        seen.add(resolved)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as exc:
        raise UDAInputError(f"output folder is not writable ({exc.strerror or exc})", output_dir) from exc


class FolderSegmenter:
    """Segment all images in ``input_dir`` and write masks, instance maps and overlays to ``output_dir``.

    For every input ``<stem>.<ext>`` it writes ``<stem>_mask`` (2D: PNG ``uint8`` 0/255; 3D:
    NIfTI), ``<stem>_instances`` (2D: TIFF ``uint16``/``uint32``; 3D: NIfTI, with the input's
    affine or spacing) and, for 2D with ``overlay``, ``<stem>_overlay.png``. Inputs sharing a stem
    (``x.png``, ``x.tif``) get distinct names (:func:`output_stems`). An input file is never
    overwritten, nor one output by another (checked before anything is written); outputs of earlier
    runs with the same names in ``output_dir`` are replaced (atomically, through symlinks, see
    :mod:`monai_uda.files`), any other file there is left alone.

    Args:
        network: the segmentation network (``spatial_dims`` and ``channels`` must match it).
        input_dir: folder of images (see :func:`monai_uda.data.io.list_images`).
        output_dir: folder for the results (created).
        spatial_dims: 2 for images, 3 for volumes; inputs of the other kind are refused.
        channels: input channels of the network; grey images are repeated to 3 channels and RGB
            images turned to luminance when needed, other mismatches are refused.
        invert: invert intensities (e.g. bright-field images for a fluorescence-trained model).
        value_range: intensity range the network was trained on (percentile scaling).
            Preprocessing is :func:`monai_uda.transforms.inference_transforms`, the one of training.
        roi_size: sliding-window size (one value per spatial dim).
        sw_batch_size: windows per forward pass.
        overlap: window overlap fraction.
        mode: window blending, ``"gaussian"`` or ``"constant"``.
        device: torch device for the network and the windows.
        ckpt_path: checkpoint to load, or ``None`` to use ``network`` as is.
        ckpt_key: key of the network inside the checkpoint (e.g. ``"segmenter"``), ``None`` for a
            plain state dict.
        output_activation: ``"sigmoid"``, ``"softmax"``, ``"tanh"`` or ``"none"``
            (see :func:`to_probabilities`).
        threshold: foreground probability threshold of the binary route.
        postprocess: ``"binary"`` (foreground = channel 0, or 1 - background for softmax) or
            ``"ternary"`` (channels ``[background, edge, interior]``).
        min_size: smallest nucleus kept, in pixels/voxels.
        mask_ext: suffix of the mask files; default ``.png`` (2D) / ``.nii.gz`` (3D).
        instance_ext: suffix of the instance files; default ``.tif`` (2D) / ``.nii.gz`` (3D).
        overlay: also write ``<stem>_overlay.png`` (2D only): instance boundaries over the image as
            the network saw it (after channel policy and ``invert``).
        amp: run the network under ``torch.autocast``.
        padding_mode: how windows beyond the image border are padded (``torch.nn.functional.pad`` mode).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        input_dir: str,
        output_dir: str,
        spatial_dims: int = 2,
        channels: int = 1,
        invert: bool = False,
        value_range: Sequence[float] = (0.0, 1.0),
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
        mask_ext: str | None = None,
        instance_ext: str | None = None,
        overlay: bool = True,
        amp: bool = False,
        padding_mode: str = "constant",
    ) -> None:
        roi = window_size(roi_size, spatial_dims)
        if output_activation not in ACTIVATIONS:
            raise UDAInputError(f"output_activation must be one of {ACTIVATIONS}, got {output_activation!r}")
        if postprocess not in POSTPROCESSES:
            raise UDAInputError(f"postprocess must be one of {POSTPROCESSES}, got {postprocess!r}")
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        if ckpt_path is not None:
            load_network_weights(self.network, ckpt_path, ckpt_key, self.device)
        self.input_dir = Path(input_dir)
        self.output_dir = Path(output_dir)
        self.spatial_dims = spatial_dims
        self.channels = int(channels)
        self.invert = bool(invert)
        self.value_range = tuple(float(v) for v in value_range)
        self.transforms = inference_transforms(spatial_dims, channels, invert, value_range)
        self.inferer = SlidingWindowInferer(
            roi_size=roi, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, padding_mode=padding_mode
        )
        self.output_activation = output_activation
        self.threshold = threshold
        self.postprocess = postprocess
        self.min_size = min_size
        self.mask_ext = mask_ext or (".png" if spatial_dims == 2 else ".nii.gz")
        self.instance_ext = instance_ext or (".tif" if spatial_dims == 2 else ".nii.gz")
        self.overlay = overlay and spatial_dims == 2
        self.amp = amp

    def _stem(self, image_path: Path) -> str:
        """The output name of an input (:func:`output_stems` of the run's inputs)."""
        return getattr(self, "_stems", {}).get(Path(image_path)) or stem_of(image_path)

    def _output_paths(self, image_path: Path) -> dict[str, Path]:
        stem = self._stem(image_path)
        paths = {
            "mask": self.output_dir / f"{stem}_mask{self.mask_ext}",
            "instances": self.output_dir / f"{stem}_instances{self.instance_ext}",
        }
        if self.overlay:
            paths["overlay"] = self.output_dir / f"{stem}_overlay.png"
        return paths

    def _check_outputs(self, inputs: list[Path]) -> None:
        """Refuse to run when an output would overwrite an input or the output folder is not writable."""
        check_outputs(self.output_dir, [out for p in inputs for out in self._output_paths(p).values()], inputs)

    def _preprocess(self, path: Path) -> MetaTensor:
        """Read ``path`` with the shared inference transforms: ``(C, *spatial)`` network input with its meta data."""
        with unwrap_input_errors():
            return self.transforms({"image": str(path)})["image"]

    def _scaler(self, a_min: float, a_max: float) -> Callable[[np.ndarray], torch.Tensor]:
        """Raw channel-first windows ``(B, C, *roi)`` -> network input, for inferers that read images piece by
        piece: the preprocessing of :meth:`_preprocess` (percentile scaling of ``a_min``/``a_max`` to
        ``value_range``, clipped; channel policy; ``invert``) with the image's percentiles given."""
        a_min, a_max = np.float32(a_min), np.float32(a_max)
        low, high = self.value_range
        policy = ChannelPolicy(self.channels)

        def scale(raw: np.ndarray) -> torch.Tensor:
            x = np.asarray(raw, dtype=np.float32)
            if a_max == a_min:
                x = x - a_min + low
            else:
                x = np.clip((x - a_min) / (a_max - a_min) * (high - low) + low, low, high)
            tensor = torch.from_numpy(np.ascontiguousarray(x))
            if tensor.shape[1] != self.channels:
                tensor = torch.stack([policy(item) for item in tensor])
            return (low + high) - tensor if self.invert else tensor

        return scale

    def _probabilities(self, inputs: torch.Tensor, path: Path) -> np.ndarray:
        """Sliding-window inference and activation: ``(C, *spatial)`` probabilities on the CPU."""
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=self.amp):
            output = self.inferer(inputs.to(self.device), self.network)
        probs = to_probabilities(output.float(), self.output_activation)[0].cpu().numpy()
        if self.postprocess == "ternary" and probs.shape[0] != 3:
            raise UDAInputError(f"ternary post-processing needs 3 output channels, the network gave {probs.shape[0]}", path)
        if self.postprocess == "binary" and probs.shape[0] != 1 and self.output_activation != "softmax":
            raise UDAInputError(
                f"binary post-processing with {self.output_activation!r} needs 1 output channel, the network gave {probs.shape[0]}",
                path,
            )
        return probs

    def _instances(self, probs: np.ndarray) -> np.ndarray:
        if self.postprocess == "ternary":
            return ternary_to_instances(probs, min_size=self.min_size)
        foreground = 1.0 - probs[0] if self.output_activation == "softmax" else probs[0]
        return binary_to_instances(foreground, threshold=self.threshold, min_size=self.min_size)

    def _write_meta(self, image: MetaTensor) -> dict[str, Any]:
        """Geometry of the 3D outputs (:func:`volume_geometry` of the input)."""
        affine = image.affine.numpy() if image.meta.get("format") in (".nii", ".nii.gz") else None
        return volume_geometry(affine, image.meta.get("spacing"))

    def segment_file(self, path: str | Path) -> dict[str, Any]:
        """Segment one image and write its outputs; returns the record described in :meth:`run`."""
        path = Path(path)
        start = time.perf_counter()
        image = self._preprocess(path)
        instances = self._instances(self._probabilities(image.as_tensor()[None], path))
        n_instances = int(instances.max())
        instances = instances.astype(np.uint16 if n_instances < 2**16 else np.uint32)
        paths = self._output_paths(path)
        write_meta = self._write_meta(image) if self.spatial_dims == 3 else {}
        mask = (instances > 0).astype(np.uint8) * (255 if self.spatial_dims == 2 else 1)
        write_array(paths["mask"], mask, write_meta)
        write_array(paths["instances"], instances, write_meta)
        if self.overlay:
            save_overlay(paths["overlay"], image.numpy(), instances)
        record: dict[str, Any] = {"stem": self._stem(path), "image": str(path)}
        record.update({key: str(p) for key, p in paths.items()})
        record.update(n_instances=n_instances, seconds=time.perf_counter() - start)
        return record

    def run(self) -> list[dict[str, Any]]:
        """Segment every image of ``input_dir``.

        Returns:
            One record per input: ``stem``, ``image``, the written ``mask``, ``instances`` (and
            ``overlay``) paths, ``n_instances`` and ``seconds``.

        Raises:
            UDAInputError: empty input folder, output clashing with an input, unwritable output
                folder, or an input that cannot be read or does not fit the network.
        """
        inputs = list_images(self.input_dir)
        if not inputs:
            raise UDAInputError("no images found", self.input_dir)
        self._stems = output_stems(inputs)
        self._check_outputs(inputs)
        start = time.perf_counter()
        with tqdm(inputs, desc="segmenting", unit="image") as progress:  # closed (line ended) also on errors
            records = [self.segment_file(p) for p in progress]
        total = sum(r["n_instances"] for r in records)
        print(f"segmented {len(records)} images, {total} nuclei in {time.perf_counter() - start:.1f} s -> {self.output_dir}")
        return records
