"""Mask -> image synthesis with a trained AD-GAN generator: a paired training set from masks.

:class:`FolderSynthesizer` is what ``bundles/ad_gan/configs/inference_synthesis.yaml``
instantiates. It reads label maps (instance ids or binary masks, 2D or 3D, any size) from a
folder, or draws synthetic masks (:mod:`monai_uda.data.synthetic`), turns them into the AD-GAN
mask domain (:func:`~monai_uda.data.synthetic.mask_to_domain_image`: semantic ``{-1, 1}`` or
AD-GAN-INS ``-1`` background / ``0`` edge / ``1`` interior), translates them with MONAI's
:class:`~monai.inferers.SlidingWindowInferer` through
:class:`~monai_uda.networks.adain.DomainTranslator` to the image domain (or to an interpolated
domain label ``t`` in ``(0, 1)``) and writes each image beside the instance map it came from,
with a ``datalist.json`` whose ``"source"`` split lists the pairs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from skimage.measure import label as connected_components
from skimage.segmentation import relabel_sequential
from tqdm import tqdm

from monai_uda import flag
from monai_uda.data.datalist import write_datalist
from monai_uda.data.io import list_images, read_label_with_meta, stem_of, write_array
from monai_uda.data.synthetic import SyntheticMaskDataset, mask_to_domain_image
from monai_uda.errors import UDAInputError
from monai_uda.inference.folder import check_outputs
from monai_uda.inference.network import window_size
from monai_uda.inference.writers import volume_geometry
from monai_uda.networks.adain import AdaINGenerator, DomainTranslator

__all__ = ["FolderSynthesizer", "label_to_mask_domain"]


def label_to_mask_domain(
    label: np.ndarray, ternary: bool = False, edge_fraction: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """A label map -> ``(instances, mask-domain image)`` as AD-GAN was trained on.

    A map with a single foreground value (a binary mask, e.g. 0/255) is split into connected
    components; otherwise the ids are kept (relabelled ``1..n``). The mask-domain image is
    :func:`~monai_uda.data.synthetic.mask_to_domain_image` of the instances, the same function
    that draws the training masks: ``{-1, 1}``, or for ``ternary`` -1 background / 0 edge /
    1 interior with the edge of :func:`~monai_uda.data.synthetic.edge_class_map`.

    Args:
        label: integer label map (2D or 3D), 0 = background.
        ternary: AD-GAN-INS masks.
        edge_fraction: edge width of the ternary masks.

    Returns:
        ``uint16``/``uint32`` instance map and the float32 mask-domain image of the same shape.
    """
    label = np.asarray(label)
    if np.unique(label[label > 0]).size <= 1:
        instances = connected_components(label > 0)
    else:
        instances = relabel_sequential(label)[0]
    instances = instances.astype(np.uint16 if instances.max() < 2**16 else np.uint32)
    return instances, mask_to_domain_image(instances, ternary, edge_fraction)


def _domain_label(value: Any) -> float:
    """``domain_label`` as a float in ``[0, 1]`` (``"image"`` = 1, ``"mask"`` = 0 are accepted)."""
    named = {"image": 1.0, "mask": 0.0}
    try:
        label = named[value] if isinstance(value, str) and value in named else float(value)
    except (TypeError, ValueError):
        label = float("nan")
    if not 0.0 <= label <= 1.0:  # also NaN
        raise UDAInputError(f"domain_label must be a number in [0, 1] (0 mask, 1 image), got {value!r}")
    return label


class FolderSynthesizer:
    """Translate masks to images with an AD-GAN generator; write a paired, datalist-ready folder.

    For every mask ``<stem>`` it writes ``<stem>_image.png`` (2D ``uint8``, grey or RGB as the
    generator's output channels; 3D ``<stem>_image.nii.gz`` float32 in ``[0, 1]``, channels last
    when there are several), ``<stem>_label.tif`` (2D) / ``<stem>_label.nii.gz`` (3D, with a NIfTI
    input's affine or the input's spacing), the instance map that was translated, and
    ``datalist.json`` with ``{"source": [{"image": ..., "label": ...}, ...]}`` (relative paths),
    so the folder is a labelled source domain for any bundle. Files are written atomically and
    an input mask is never overwritten. ``domain_label`` 0 reconstructs the mask (one channel).

    Args:
        generator: a trained :class:`~monai_uda.networks.adain.AdaINGenerator`.
        output_dir: folder for the results (created).
        mask_dir: folder of label maps (:func:`~monai_uda.data.io.list_images` suffixes); ``None``
            draws ``num_masks`` synthetic masks instead.
        num_masks: number of synthetic masks (only without ``mask_dir``), named ``synthetic_0000`` ...
        domain_label: target domain label ``t`` in ``[0, 1]``: 1 image (default), a value in
            ``(0, 1)`` gives AD-GAN's domain-label interpolation.
        spatial_dims: 2 or 3; masks of the other kind are refused.
        ternary: AD-GAN-INS generator (ternary mask domain).
        edge_fraction: edge width of the ternary masks (as in training).
        mask_shape: spatial shape of the synthetic masks; default ``roi_size``.
        preset, axis_range, count_range, eccentricity_range: synthetic-mask parameters, as in
            :class:`~monai_uda.data.synthetic.SyntheticMaskDataset`.
        seed: seed of the synthetic masks (mask ``i`` is the same for the same seed).
        roi_size: sliding-window size, one value per spatial dim (divisible by 4).
        sw_batch_size: windows per forward pass.
        overlap: window overlap fraction.
        mode: window blending, ``"gaussian"`` or ``"constant"``.
        device: torch device for the generator and the windows.
        amp: run the generator under ``torch.autocast``.
        padding_mode: how windows beyond the border are padded; constant padding is mask background (-1).
    """

    def __init__(
        self,
        generator: AdaINGenerator,
        output_dir: str,
        mask_dir: str | None = None,
        num_masks: int = 8,
        domain_label: float | str = 1.0,
        spatial_dims: int = 2,
        ternary: bool = False,
        edge_fraction: float = 0.3,
        mask_shape: Sequence[int] | None = None,
        preset: str | None = None,
        axis_range: Sequence[float] | None = None,
        count_range: Sequence[int] | None = None,
        eccentricity_range: Sequence[float] | None = None,
        seed: int = 0,
        roi_size: Sequence[int] = (256, 256),
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        mode: str = "gaussian",
        device: str = "cpu",
        amp: bool = False,
        padding_mode: str = "constant",
    ) -> None:
        roi = window_size(roi_size, spatial_dims)
        self.domain_label = _domain_label(domain_label)
        self.mask_dir = None if mask_dir is None else Path(mask_dir)
        if self.mask_dir is None and int(num_masks) < 1:
            raise UDAInputError(f"num_masks must be at least 1 without mask_dir, got {num_masks}")
        self.output_dir = Path(output_dir)
        self.spatial_dims = spatial_dims
        self.ternary = ternary
        self.edge_fraction = edge_fraction
        self.synthetic: SyntheticMaskDataset | None = None
        if self.mask_dir is None:
            shape = tuple(int(s) for s in (mask_shape if mask_shape is not None else roi))
            if len(shape) != spatial_dims:
                raise UDAInputError(
                    f"mask_shape {shape} does not have {spatial_dims} values (spatial_dims={spatial_dims})"
                )
            self.synthetic = SyntheticMaskDataset(
                shape, int(num_masks), preset, axis_range, count_range, eccentricity_range, ternary, edge_fraction,
                seed=seed,
            )  # fmt: skip
        self.device = torch.device(device)
        self.network = (
            DomainTranslator(generator, to_domain=self.domain_label, from_domain="mask").to(self.device).eval()
        )
        self.inferer = SlidingWindowInferer(
            roi_size=roi, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, padding_mode=padding_mode, cval=-1.0
        )
        self.amp = flag(amp)
        self.image_ext = ".png" if spatial_dims == 2 else ".nii.gz"
        self.label_ext = ".tif" if spatial_dims == 2 else ".nii.gz"

    def _output_paths(self, stem: str) -> dict[str, Path]:
        return {
            "image": self.output_dir / f"{stem}_image{self.image_ext}",
            "label": self.output_dir / f"{stem}_label{self.label_ext}",
        }

    def _read_mask(self, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
        """A label map of ``path`` checked against ``spatial_dims``, with the 3D geometry to write back."""
        label, file_meta = read_label_with_meta(path)
        if label.ndim != self.spatial_dims:
            hint = "; merge train_3d.yaml for volumes" if label.ndim == 3 else ""
            raise UDAInputError(
                f"expected a {self.spatial_dims}D mask, got {label.ndim}D (shape {label.shape}){hint}", path
            )  # fmt: skip
        meta = volume_geometry(file_meta.get("affine"), file_meta.get("spacing")) if self.spatial_dims == 3 else {}
        return label, meta

    def _masks(self, inputs: list[Path]) -> Iterator[tuple[str, np.ndarray, np.ndarray, dict[str, Any]]]:
        """``(stem, instances, mask-domain image, write meta)`` per mask file or synthetic mask."""
        if self.synthetic is None:
            for path in inputs:
                label, meta = self._read_mask(path)
                yield (stem_of(path), *label_to_mask_domain(label, self.ternary, self.edge_fraction), meta)
        else:
            for index in range(len(self.synthetic)):
                item = self.synthetic[index]
                instances = item["label"][0].numpy().astype(np.uint16)
                yield f"synthetic_{index:04d}", instances, item["image"][0].numpy(), {}

    def translate(self, mask: np.ndarray) -> np.ndarray:
        """Sliding-window translation of a mask-domain image ``(*spatial)``: ``(C, *spatial)`` in ``[-1, 1]``."""
        inputs = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None].to(self.device)
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=self.amp):
            output = self.inferer(inputs, self.network)
        return output.float()[0].clamp(-1.0, 1.0).cpu().numpy()

    def _write_image(self, path: Path, image: np.ndarray, meta: dict[str, Any]) -> None:
        unit = (image + 1.0) / 2.0  # [-1, 1] -> [0, 1]
        if self.spatial_dims == 2:
            pixels = np.round(unit * 255.0).astype(np.uint8)
            write_array(path, pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1))
        else:
            write_array(path, (unit[0] if unit.shape[0] == 1 else np.moveaxis(unit, 0, -1)).astype(np.float32), meta)

    def run(self) -> list[dict[str, Any]]:
        """Synthesise an image for every mask and write the paired folder with its ``datalist.json``.

        Returns:
            One record per mask: ``stem``, written ``image`` and ``label`` paths, the input
            ``mask`` path (``None`` for synthetic masks), ``n_instances``, ``channels`` and ``seconds``.

        Raises:
            UDAInputError: empty or missing ``mask_dir``, a mask of the wrong dimensionality or
                type, an output clashing with an input, or an unwritable output folder.
        """
        inputs: list[Path] = []
        if self.synthetic is None:
            inputs = list_images(self.mask_dir)
            if not inputs:
                raise UDAInputError("no masks found", self.mask_dir)
            stems = [stem_of(p) for p in inputs]
        else:
            stems = [f"synthetic_{i:04d}" for i in range(len(self.synthetic))]
        outputs = [p for stem in stems for p in self._output_paths(stem).values()]
        check_outputs(self.output_dir, [*outputs, self.output_dir / "datalist.json"], inputs, kind="mask")
        start = time.perf_counter()
        records: list[dict[str, Any]] = []
        with tqdm(self._masks(inputs), total=len(stems), desc="synthesising", unit="mask") as progress:
            for index, (stem, instances, mask, meta) in enumerate(progress):
                tic = time.perf_counter()
                image = self.translate(mask)
                paths = self._output_paths(stem)
                self._write_image(paths["image"], image, meta)
                write_array(paths["label"], instances, meta)
                records.append({
                    "stem": stem, "image": str(paths["image"]), "label": str(paths["label"]),
                    "mask": str(inputs[index]) if inputs else None, "n_instances": int(instances.max()),
                    "channels": int(image.shape[0]), "seconds": time.perf_counter() - tic,
                })  # fmt: skip
        datalist = write_datalist(
            self.output_dir, {"source": [{"image": r["image"], "label": r["label"]} for r in records]}
        )
        print(
            f"synthesised {len(records)} images (domain label {self.domain_label:g}) in "
            f"{time.perf_counter() - start:.1f} s -> {datalist}"
        )
        return records
