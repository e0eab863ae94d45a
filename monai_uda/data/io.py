"""Reading and writing images, instance maps and volumes.

One place decides the array conventions of the whole library:

* images are returned channel-first float32: 2D ``(C, H, W)``, 3D ``(C, Z, Y, X)`` for TIFF
  stacks / ``.npy`` and ``(C, X, Y, Z)`` for NIfTI (nibabel's voxel order, kept so the
  affine still applies when a result is written back);
* labels are returned as integer arrays without a channel axis (0 = background);
* metadata is a dict with ``"spatial_dims"``, ``"spacing"`` and, for NIfTI, ``"affine"``.

Every problem is raised as :class:`~monai_uda.errors.UDAInputError` naming the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from monai_uda.errors import UDAInputError
from monai_uda.files import atomic_write

__all__ = [
    "IMAGE_SUFFIXES",
    "read_label_with_meta",
    "stem_of",
    "list_images",
    "read_array",
    "read_image",
    "read_label",
    "write_array",
]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".png", ".tif", ".tiff", ".npy", ".jpg", ".jpeg", ".bmp", ".nrrd", ".mha")


def _suffix(path: str | Path) -> str:
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def stem_of(path: str | Path) -> str:
    """File name without its (possibly compound, e.g. ``.nii.gz``) image suffix."""
    name = Path(path).name
    suffix = _suffix(path)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else Path(path).stem


def list_images(folder: str | Path, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Sorted image files directly inside ``folder`` (hidden files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UDAInputError("folder does not exist", folder)
    suffixes = tuple(s.lower() for s in suffixes)
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(suffixes)
    )


def read_array(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read any supported file as a raw array (no channel handling) plus metadata.

    Returns:
        ``(array, meta)``: ``meta`` holds ``"format"``, ``"spacing"`` (tuple or None) and,
        for NIfTI, ``"affine"`` (4x4 float array).
    """
    path = Path(path)
    if not path.is_file():
        raise UDAInputError("file does not exist", path)
    suffix = _suffix(path)
    meta: dict[str, Any] = {"format": suffix, "spacing": None, "filename": str(path)}
    try:
        if suffix in (".nii", ".nii.gz"):
            import nibabel as nib

            img = nib.load(str(path))
            array = np.asarray(img.dataobj)
            meta["affine"] = np.asarray(img.affine, dtype=np.float64)
            meta["spacing"] = tuple(float(z) for z in img.header.get_zooms()[:3])
        elif suffix in (".tif", ".tiff"):
            array, spacing = _read_tiff(path)
            meta["spacing"] = spacing
        elif suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix in (".nrrd", ".mha"):
            import itk

            img = itk.imread(str(path))
            array = itk.array_from_image(img)
            meta["spacing"] = tuple(float(s) for s in reversed(tuple(img.GetSpacing())))
        else:
            from PIL import Image

            with Image.open(path) as im:
                tiff_content = im.format == "TIFF"
                array = None if tiff_content else np.asarray(im)
                meta["channels_last"] = not tiff_content  # Pillow's colour images are (H, W, C), however small
            if tiff_content:  # a TIFF under another name: Pillow would drop samples beyond RGBA
                array, meta["spacing"] = _read_tiff(path)
    except UDAInputError:
        raise
    except Exception as exc:  # unreadable / truncated / wrong format: one clear line
        raise UDAInputError(f"cannot read image ({type(exc).__name__}: {exc})", path) from exc
    if array.size == 0:
        raise UDAInputError("image is empty", path)
    return array, meta


def _read_tiff(path: Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """TIFF via tifffile (imagecodecs for LZW etc.), falling back to Pillow."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            array = tif.asarray()
            spacing = None
            ij = tif.imagej_metadata or {}
            if "spacing" in ij:
                spacing = (float(ij["spacing"]),)
            return array, spacing
    except Exception:
        from PIL import Image

        with Image.open(path) as im:
            frames = []
            for i in range(getattr(im, "n_frames", 1)):
                im.seek(i)
                frames.append(np.asarray(im))
        return (frames[0] if len(frames) == 1 else np.stack(frames)), None


def _as_channel_first(array: np.ndarray, path: Path, meta: dict[str, Any], spatial_dims: int | None) -> np.ndarray:
    """Apply the channel policy: grey/RGB/RGBA 2D images and single- or multi-channel volumes."""
    fmt = meta["format"]
    if fmt in (".nii", ".nii.gz"):
        if array.ndim == 3:
            return array[None]
        if array.ndim == 4:
            return np.moveaxis(array, -1, 0)
        raise UDAInputError(f"expected a 3D volume, got shape {array.shape}", path)
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3:
        channels_last = array.shape[-1] in (1, 2, 3, 4) and (meta.get("channels_last") or min(array.shape[:2]) > 4)
        if channels_last and spatial_dims == 3:
            raise UDAInputError(
                f"expected a 3D volume, got a 2D image with {array.shape[-1]} channel(s) (shape {array.shape})", path
            )
        if channels_last:
            if array.shape[-1] == 4:  # RGBA: alpha carries no image content
                array = array[..., :3]
            elif array.shape[-1] == 2:  # grey + alpha
                array = array[..., :1]
            return np.moveaxis(array, -1, 0)
        if spatial_dims == 2:
            raise UDAInputError(
                f"expected a 2D image (grey, RGB or RGBA), got shape {array.shape}: "
                "a 3D volume or an unsupported channel count",
                path,
            )
        return array[None]  # (Z, Y, X) stack
    if array.ndim == 4 and array.shape[-1] in (1, 3):
        return np.moveaxis(array, -1, 0)
    raise UDAInputError(f"unsupported image shape {array.shape}", path)


def read_image(path: str | Path, spatial_dims: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image as channel-first float32 plus metadata (see the module docstring).

    Args:
        path: image file (PNG/JPEG/BMP, TIFF, NIfTI, NRRD/MHA, ``.npy``).
        spatial_dims: 2 or 3 to check the image against a config; ``None`` accepts both.

    Raises:
        UDAInputError: unreadable file, unsupported shape, NaN/inf pixels or wrong dimensionality.
    """
    path = Path(path)
    array, meta = read_array(path)
    image = _as_channel_first(np.asarray(array), path, meta, spatial_dims)
    dims = image.ndim - 1
    if spatial_dims is not None and dims != spatial_dims:
        raise UDAInputError(f"expected a {spatial_dims}D image, got {dims}D (shape {array.shape})", path)
    if image.dtype.kind not in "uifb":
        raise UDAInputError(f"unsupported pixel type {image.dtype}", path)
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise UDAInputError("image contains NaN or infinite pixels", path)
    meta["spatial_dims"] = dims
    meta["spatial_shape"] = tuple(image.shape[1:])
    meta.setdefault("original_channels", image.shape[0])
    return image, meta


def read_label(path: str | Path, spatial_dims: int | None = None) -> np.ndarray:
    """Read an instance (or binary) label map as an integer array without channel axis.

    RGB(A) masks whose channels are identical are reduced to one channel.

    Raises:
        UDAInputError: non-integer or negative labels, multi-channel masks, wrong dimensionality.
    """
    return read_label_with_meta(path, spatial_dims)[0]


def read_label_with_meta(path: str | Path, spatial_dims: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`read_label` and the file's ``meta`` of :func:`read_array` (spacing, NIfTI affine), from one read."""
    path = Path(path)
    array, meta = read_array(path)
    array = np.asarray(array)
    if (
        meta["format"] not in (".nii", ".nii.gz")
        and array.ndim == 3
        and array.shape[-1] in (3, 4)
        and min(array.shape[:2]) > 4
    ):
        rgb = array[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise UDAInputError("label map has several different channels; expected one instance-id channel", path)
        array = rgb[..., 0]
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise UDAInputError("label map has non-integer values", path)
        array = array.astype(np.int64)
    if array.dtype.kind not in "ui":
        raise UDAInputError(f"unsupported label type {array.dtype}", path)
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise UDAInputError(f"label map has negative ids (min {int(array.min())})", path)
    if spatial_dims is not None and array.ndim != spatial_dims:
        raise UDAInputError(f"expected a {spatial_dims}D label map, got {array.ndim}D (shape {array.shape})", path)
    return array, meta


def write_array(path: str | Path, array: np.ndarray, meta: dict[str, Any] | None = None) -> Path:
    """Write ``array`` atomically with :func:`monai_uda.files.atomic_write` (through symlinks; devices refused).

    The format follows the suffix: PNG (2D uint8/uint16), TIFF (any; compressed), NIfTI (3D with
    ``meta["affine"]`` when given, else from ``meta["spacing"]``), ``.npy``.

    Raises:
        UDAInputError: when the folder cannot be written or the disk is full.
    """
    path = Path(path)
    meta = meta or {}
    suffix = _suffix(path)
    if suffix not in (".png", ".tif", ".tiff", ".nii", ".nii.gz", ".npy"):
        raise UDAInputError(f"unsupported output format {suffix!r}", path)
    with atomic_write(path) as tmp:
        if suffix == ".png":
            from PIL import Image

            Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
        elif suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, np.ascontiguousarray(array), compression="zlib")
        elif suffix in (".nii", ".nii.gz"):
            import nibabel as nib

            affine = meta.get("affine")
            if affine is None:
                affine = np.diag(list(meta.get("spacing") or (1.0, 1.0, 1.0))[:3] + [1.0])
            nib.save(nib.Nifti1Image(np.asarray(array), np.asarray(affine)), str(tmp))
        else:
            with open(tmp, "wb") as fh:
                np.save(fh, array)
    return path
