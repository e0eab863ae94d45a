"""Nuclei inpainting of CyC-PDAM (Liu et al., CVPR 2020, sec. 3.1, eqs 1-2).

CycleGAN keeps the source masks' nuclei but often hallucinates extra, *unlabelled* nuclei in
the synthesized target-style image S_raw. They are found and painted over:

* eq 1  ``M_aux = (otsu(S_raw) OR M) - M``: the foreground of an Otsu threshold (on the
  hematoxylin channel of a colour deconvolution for H&E-like images, on the intensity
  otherwise) that is not a labelled nucleus of the source mask M;
* eq 2  ``S = inpaint(S_raw, M_aux)``: fast-marching inpainting (Telea 2004, OpenCV's
  ``cv2.inpaint``) of those pixels. The paper names the method but no radius; the default 3 px
  is ours (see :func:`inpaint_nuclei`).

:func:`write_synthesized_dataset` runs (translation and) inpainting over a labelled source
split and writes the result as a datalist, the training source of the PDAM stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu

from monai_uda import flag
from monai_uda.data.datalist import check_unique_stems, write_datalist
from monai_uda.data.io import read_image, read_label, stem_of, write_array
from monai_uda.errors import UDAInputError

__all__ = ["STAINS", "nuclei_foreground", "auxiliary_mask", "inpaint_nuclei", "write_synthesized_dataset"]

STAINS = ("auto", "he", "intensity")


def _as_uint8(image: np.ndarray) -> tuple[np.ndarray, float]:
    """``(H, W, C)`` uint8 view of a channel-first float image plus the scale used (1 or 255)."""
    scale = 255.0 if float(image.max(initial=0.0)) <= 1.0 else 1.0
    hwc = np.moveaxis(np.asarray(image, dtype=np.float64) * scale, 0, -1)
    return np.clip(np.rint(hwc), 0, 255).astype(np.uint8), scale


def nuclei_foreground(image: np.ndarray, stain: str = "auto", bright_nuclei: bool = True) -> np.ndarray:
    """``otsu(S_raw)`` of eq 1: the Otsu foreground of a 2D channel-first image.

    Args:
        image: ``(C, H, W)`` with C = 1 or 3, in [0, 1] or [0, 255].
        stain: ``"he"`` (Otsu on the hematoxylin optical density of :func:`skimage.color.rgb2hed`),
            ``"intensity"`` (Otsu on the channel mean) or ``"auto"`` (``"he"`` for RGB, else intensity).
        bright_nuclei: for ``"intensity"``: nuclei brighter than background (fluorescence);
            ``False`` for dark nuclei on a bright background.

    Returns:
        ``(H, W)`` bool mask (all False for a constant image).
    """
    if stain not in STAINS:
        raise ValueError(f"unknown stain {stain!r}; choose one of {STAINS}")
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a (1 or 3, H, W) image, got shape {image.shape}")
    use_he = stain == "he" or (stain == "auto" and image.shape[0] == 3)
    if use_he:
        if image.shape[0] != 3:
            raise ValueError("the hematoxylin channel needs an RGB image")
        rgb, _ = _as_uint8(image)
        channel = rgb2hed(rgb)[..., 0]  # hematoxylin optical density: high inside nuclei
        bright = True
    else:
        channel = np.asarray(image, dtype=np.float64).mean(axis=0)
        bright = bright_nuclei
    if float(channel.max()) == float(channel.min()):
        return np.zeros(channel.shape, dtype=bool)
    threshold = threshold_otsu(channel)
    return channel > threshold if bright else channel <= threshold


def auxiliary_mask(image: np.ndarray, label: np.ndarray, stain: str = "auto", bright_nuclei: bool = True) -> np.ndarray:
    """Eq 1: ``M_aux = (otsu(S_raw) OR M) - M``, the unlabelled nucleus-like pixels.

    Args:
        image: ``(C, H, W)`` synthesized image S_raw.
        label: ``(H, W)`` instance (or binary) map M of the source nuclei.
        stain, bright_nuclei: see :func:`nuclei_foreground`.
    """
    if label.shape != image.shape[1:]:
        raise ValueError(f"label shape {label.shape} does not match image shape {image.shape[1:]}")
    labelled = label > 0
    return (nuclei_foreground(image, stain, bright_nuclei) | labelled) & ~labelled


def inpaint_nuclei(
    image: np.ndarray, label: np.ndarray, stain: str = "auto", bright_nuclei: bool = True, radius: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Eqs 1-2: Telea-inpaint the unlabelled nuclei of a synthesized image.

    Args:
        image: ``(C, H, W)`` (C = 1 or 3) or a ``(C, Z, H, W)`` volume (inpainted slice by slice),
            values in [0, 1] or [0, 255].
        label: ``(H, W)`` / ``(Z, H, W)`` instance map of the labelled nuclei.
        stain, bright_nuclei: see :func:`nuclei_foreground`.
        radius: inpainting neighbourhood radius in pixels. Ours, not the paper's (it gives none):
            3 px, the value of OpenCV's inpainting example, draws the fill from a ring that is thin
            against nuclei several pixels across, so it copies the background right beside each
            painted-over nucleus rather than blurring in neighbouring nuclei.

    Returns:
        ``(inpainted, M_aux)``: the image in the input's dtype and range, and the bool mask.
    """
    if image.ndim == 4:
        slices = [inpaint_nuclei(image[:, z], label[z], stain, bright_nuclei, radius) for z in range(image.shape[1])]
        return np.stack([s[0] for s in slices], axis=1), np.stack([s[1] for s in slices])
    aux = auxiliary_mask(image, label, stain, bright_nuclei)
    if not aux.any():
        return image.copy(), aux
    hwc, scale = _as_uint8(image)
    painted = cv2.inpaint(np.ascontiguousarray(hwc), aux.astype(np.uint8), radius, cv2.INPAINT_TELEA)
    painted = painted.reshape(hwc.shape)
    out = np.moveaxis(painted, -1, 0).astype(np.float64) / scale
    # only M_aux changes: the labelled nuclei and the background keep their exact values
    result = np.where(aux[None], out, image).astype(image.dtype, copy=False)
    return result, aux


def write_synthesized_dataset(
    items: Sequence[dict[str, Any]],
    output_dir: str | Path,
    translate: Callable[[np.ndarray], np.ndarray] | None = None,
    load_image: Callable[[str], np.ndarray] | None = None,
    inpaint: bool = True,
    stain: str = "auto",
    bright_nuclei: bool = True,
    radius: int = 3,
) -> Path:
    """Translate (optional) and inpaint a labelled source split; write it with a datalist.

    Writes ``output_dir/images/<stem>.png`` (8-bit, the synthesized image after eq 2; TIFF for
    volumes), ``output_dir/labels/<stem>.tif`` (the unchanged instance map) and
    ``output_dir/datalist.json`` with one ``"source"`` list (the PDAM stage's source domain).

    Args:
        items: ``[{"image": path, "label": path}, ...]`` (e.g. a datalist's ``"source"`` split).
        output_dir: output folder.
        translate: S_raw = ``translate(image)`` for a channel-first float image in [0, 1] (the
            CycleGAN source-to-target generator); ``None`` keeps the images.
        load_image: reads an item's image as channel-first float in [0, 1] with the
            preprocessing the generator was trained with (e.g. the bundle's
            :func:`~monai_uda.transforms.inference_transforms`); default: :func:`read_image`
            scaled from its 8-bit (or maximum) range.
        inpaint: apply eqs 1-2 (``False`` = the paper's "w/o NI" ablation).
        stain, bright_nuclei, radius: see :func:`inpaint_nuclei`.

    Returns:
        the written datalist file.

    Raises:
        UDAInputError: an item without label, two items with one stem, unreadable files, or
            image/label size mismatch.
    """
    output_dir, inpaint = Path(output_dir), flag(inpaint)
    written: list[dict[str, Any]] = []
    for index, item in enumerate(check_unique_stems(list(items), "source")):
        if "label" not in item:
            raise UDAInputError(f"source item {index} has no 'label'", item.get("image"))
        image = _source_image(item, load_image)
        label = read_label(item["label"])
        if label.shape != image.shape[1:]:
            raise UDAInputError(
                f"label shape {label.shape} does not match image shape {image.shape[1:]}", item["label"]
            )
        synthesized = np.clip(translate(image) if translate is not None else image, 0.0, 1.0)
        if inpaint:
            synthesized, _ = inpaint_nuclei(synthesized, label, stain, bright_nuclei, radius)
        written.append(_write_pair(output_dir, stem_of(item["image"]), synthesized, label))
    if not written:
        raise UDAInputError("no source images to synthesize", output_dir)
    return write_datalist(output_dir, {"source": written})


def _source_image(item: dict[str, Any], load_image: Callable[[str], np.ndarray] | None) -> np.ndarray:
    """The item's image, channel-first float in [0, 1]: ``load_image``'s, else read and scaled from its range."""
    if load_image is not None:
        return np.asarray(load_image(str(item["image"])), dtype=np.float32)
    image, _ = read_image(item["image"])
    peak = float(image.max(initial=0.0))
    return image / (255.0 if peak <= 255.0 else peak) if peak > 1.0 else image  # 8-bit or deeper -> [0, 1]


def _write_pair(output_dir: Path, stem: str, synthesized: np.ndarray, label: np.ndarray) -> dict[str, str]:
    """Write the 8-bit synthesized image (PNG in 2D, TIFF in 3D) and its instance map; their datalist item."""
    channels_last = np.moveaxis(np.rint(synthesized * 255.0).astype(np.uint8), 0, -1)
    if channels_last.shape[-1] == 1:
        channels_last = channels_last[..., 0]
    suffix = ".png" if label.ndim == 2 else ".tif"
    image_path = write_array(output_dir / "images" / f"{stem}{suffix}", channels_last)
    label_dtype = np.uint32 if label.max(initial=0) > 65535 else np.uint16
    label_path = write_array(output_dir / "labels" / f"{stem}.tif", label.astype(label_dtype))
    return {"image": str(image_path), "label": str(label_path)}
