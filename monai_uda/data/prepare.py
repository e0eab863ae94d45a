"""Converters from public dataset layouts to the project's folder + datalist format.

Every converter writes ``OUT/images/<stem>.<ext>``, ``OUT/labels/<stem>.tif`` (uint16 instance
ids, 0 = background) and ``OUT/datalist.json`` (see :mod:`monai_uda.data.datalist`), shows a
progress bar, prints warnings and a summary on stderr, and returns the datalist path.

* :func:`prepare_dsb`: 2018 Data Science Bowl (Kaggle layout, one binary PNG per nucleus);
* :func:`~monai_uda.data.monuseg.prepare_monuseg` (in :mod:`monai_uda.data.monuseg`): MoNuSeg
  2018 (train tiles as unlabelled target, test tiles with Aperio ImageScope XML polygons);
* :func:`prepare_folder`: any ``images/`` folder with an optional ``labels/`` folder;
* :func:`~monai_uda.data.coco.prepare_coco` (in :mod:`monai_uda.data.coco`): a COCO instances
  JSON (polygons, uncompressed and compressed RLE) with its images;
* :func:`prepare`: the dispatcher behind ``monai-uda prepare <format> ...``; with
  ``--labelled_fraction F`` or ``--labelled N`` (and ``--seed``) it keeps ``"label"`` on a seeded
  subset of the written ``target`` items only (semi-supervised training, CellSegSSDA eq 6), see
  :func:`~monai_uda.data.labelled.mark_labelled_subset`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from monai_uda.data.coco import prepare_coco
from monai_uda.data.datalist import DATALIST_KEYS, write_datalist
from monai_uda.data.io import list_images, read_array, read_image, read_label, stem_of, write_array
from monai_uda.data.labelled import check_count, labelled_count, mark_labelled_subset
from monai_uda.data.monuseg import prepare_monuseg
from monai_uda.data.prepare_utils import (
    UINT16_MAX,
    as_uint16,
    kept_splits,
    output_folder,
    place_file,
    preview,
    say,
    shape_text,
    source_folder,
)
from monai_uda.errors import UDAInputError

__all__ = ["PREPARE_FORMATS", "LABELLED_SUBSET_HELP", "prepare", "prepare_dsb", "prepare_folder"]

# --------------------------------------------------------------------------- DSB 2018


def _dsb_image(path: Path) -> np.ndarray:
    """A DSB PNG as grey ``(H, W)`` when R = G = B, else RGB ``(H, W, 3)``; alpha dropped."""
    array, _ = read_array(path)
    if array.ndim == 3 and array.shape[-1] == 2:  # grey + alpha
        return array[..., 0]
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        grey = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        return rgb[..., 0] if grey else rgb
    if array.ndim == 2:
        return array
    raise UDAInputError(f"unsupported DSB image shape {array.shape}", path)


def _dsb_instances(mask_files: Sequence[Path], shape: tuple[int, ...]) -> tuple[np.ndarray, list[Path]]:
    """Instance map from one binary mask per nucleus; returns the map and the masks left empty.

    Mask ``k`` (1-based, sorted file order) becomes id ``k``. A pixel claimed by several masks
    keeps the lowest id (the first mask in sorted order wins), so the result is deterministic.
    """
    if len(mask_files) > UINT16_MAX:
        raise UDAInputError(f"{len(mask_files)} masks do not fit a uint16 instance map", mask_files[0].parent)
    label = np.zeros(shape, dtype=np.uint16)
    empty = []
    for instance_id, mask_file in enumerate(mask_files, start=1):
        mask = read_label(mask_file)
        if mask.shape != shape:
            raise UDAInputError(
                f"mask/image size mismatch: image {shape_text(shape)}, label {shape_text(mask.shape)}", mask_file
            )
        free = (mask > 0) & (label == 0)
        if not free.any():
            empty.append(mask_file)
        label[free] = instance_id
    return label, empty


def _dsb_sample(sample: Path, out: Path) -> tuple[dict[str, str], int, int]:
    """Convert one DSB sample folder; its datalist item, nuclei count and count of empty masks."""
    images = list_images(sample / "images") if (sample / "images").is_dir() else []
    if len(images) != 1:
        raise UDAInputError(f"expected one image in images/, found {len(images)}", sample)
    if not (sample / "masks").is_dir():
        raise UDAInputError("no masks/ folder (expected one binary PNG per nucleus)", sample)
    image = _dsb_image(images[0])
    label, empty = _dsb_instances(list_images(sample / "masks"), image.shape[:2])
    for mask_file in empty:
        say(f"warning: {mask_file}: mask has no pixels (empty, or covered by lower-numbered masks)")
    ext = ".png" if image.dtype == np.uint8 else ".tif"
    item = {
        "image": str(write_array(out / "images" / f"{sample.name}{ext}", image)),
        "label": str(write_array(out / "labels" / f"{sample.name}.tif", label)),
    }
    return item, len(np.unique(label)) - 1, len(empty)


def _validation_count(n: int, fraction: float) -> int:
    """round(n * fraction), at least 1 when ``fraction > 0`` and at most ``n - 1``."""
    if fraction == 0 or n < 2:
        return 0
    return min(n - 1, max(1, int(np.floor(n * fraction + 0.5))))


def prepare_dsb(src: str | Path, out: str | Path, validation_fraction: float = 0.1, seed: int = 0) -> Path:
    """Convert the DSB2018 Kaggle layout ``<id>/images/<id>.png`` + ``<id>/masks/*.png``.

    Images are written as ``images/<id>.png``: grey when R = G = B, else RGB, alpha dropped.
    Each ``masks/*.png`` is one nucleus; in sorted file order mask ``k`` gets id ``k``.
    **Overlaps**: a pixel in several masks keeps the lowest id (the earlier mask wins). Masks
    with no pixel left are reported as warnings (their id is then absent from the map).

    Args:
        src: folder of ``<id>`` sample folders (other files, e.g. CSVs, are ignored).
        out: output folder.
        validation_fraction: share of images moved to ``"validation"``, in ``[0, 1)``;
            ``round(n * fraction)`` images, at least one when the fraction is positive.
        seed: seed of the random validation split.

    Returns:
        Path of ``out/datalist.json`` with ``"source"`` and ``"validation"`` lists.

    Raises:
        UDAInputError: bad fraction, no samples, a sample without exactly one image or without
            a ``masks`` folder, unreadable files, or a mask of another size than its image.
    """
    src, out = source_folder(src, "DSB"), output_folder(out)
    if not 0 <= validation_fraction < 1:
        raise UDAInputError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    samples = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not samples:
        raise UDAInputError("no DSB sample folders (<id>/images/<id>.png, <id>/masks/*.png) found", src)
    planned = [
        out / sub / f"{sample.name}{ext}"
        for sample in samples
        for sub, ext in (("images", ".png"), ("images", ".tif"), ("labels", ".tif"))
    ]
    kept = kept_splits(out, ["source", "validation"], planned)
    items, n_nuclei, n_empty = [], 0, 0
    for sample in tqdm(samples, desc="dsb", unit="image"):
        item, nuclei, empty = _dsb_sample(sample, out)
        items.append(item)
        n_nuclei, n_empty = n_nuclei + nuclei, n_empty + empty
    n_val = _validation_count(len(items), validation_fraction)
    validation_ids = set(np.random.default_rng(seed).permutation(len(items))[:n_val].tolist())
    datalist = {
        **kept,
        "source": [item for i, item in enumerate(items) if i not in validation_ids],
        "validation": [item for i, item in enumerate(items) if i in validation_ids],
    }
    say(
        f"dsb: {len(items)} images ({len(items) - n_val} source, {n_val} validation), {n_nuclei} nuclei, "
        f"{n_empty} empty mask(s)"
    )
    return write_datalist(out, datalist)


# --------------------------------------------------------------------------- any folder


def _by_stem(folder: Path) -> dict[str, Path]:
    """``{stem: file}`` for the images in ``folder``; two files with one stem is an error."""
    files: dict[str, Path] = {}
    for path in list_images(folder):
        stem = stem_of(path)
        if stem in files:
            raise UDAInputError(f"two files with stem {stem!r}: {files[stem].name}, {path.name}", folder)
        files[stem] = path
    if not files:
        raise UDAInputError("no image files found", folder)
    return files


def _paired_labels(labels: Path, image_files: dict[str, Path], images: Path) -> dict[str, Path]:
    """``{stem: label file}``, one for every image and none without one (the unmatched stems are named)."""
    label_files = _by_stem(labels)
    no_label = sorted(set(image_files) - set(label_files))
    if no_label:
        raise UDAInputError(f"no label for image stem(s) {preview(no_label)}", labels)
    no_image = sorted(set(label_files) - set(image_files))
    if no_image:
        raise UDAInputError(f"no image for label stem(s) {preview(no_image)}", images)
    return label_files


def prepare_folder(
    images: str | Path, labels: str | Path | None, out: str | Path, split: str = "source", link: bool = False
) -> Path:
    """Pair ``images/<stem>.*`` with ``labels/<stem>.*`` and write a one-list datalist.

    Images are copied unchanged (``link=True``: hard-linked when the file system allows,
    otherwise copied; hard links keep every listed path inside ``out``). Labels are read,
    checked against the image's spatial shape and written as uint16 ``labels/<stem>.tif``.

    Args:
        images: folder of images.
        labels: folder of instance (or binary) label maps with the same stems, or ``None``
            for image-only items (e.g. an unlabelled target domain).
        out: output folder (its ``images/`` must not be the ``images`` folder itself).
        split: datalist key to fill, one of ``source``, ``target``, ``validation``, ``test``.
        link: hard-link images instead of copying them.

    Returns:
        Path of ``out/datalist.json``.

    Raises:
        UDAInputError: unknown split, empty folders, unmatched stems (named), unreadable
            files, ``"mask/image size mismatch: image HxW, label hxw"`` or ids beyond uint16.
    """
    if split not in DATALIST_KEYS:
        raise UDAInputError(f"unknown split {split!r} (choices: {', '.join(DATALIST_KEYS)})")
    images, out = source_folder(images, "images"), output_folder(out)
    image_files = _by_stem(images)
    label_files = {} if labels is None else _paired_labels(source_folder(labels, "labels"), image_files, images)
    if (out / "images").resolve() == images.resolve():
        raise UDAInputError("output images/ folder is the input images folder; choose another output folder", out)
    planned = [out / "images" / path.name for path in image_files.values()]
    planned += [out / "labels" / f"{stem}.tif" for stem in label_files]
    kept = kept_splits(out, [split], planned)
    items = []
    for stem in tqdm(sorted(image_files), desc="folder", unit="image"):
        _, meta = read_image(image_files[stem])
        image_out = out / "images" / image_files[stem].name
        place_file(image_files[stem], image_out, link=link)
        item = {"image": str(image_out)}
        if labels is not None:
            label = read_label(label_files[stem])
            if label.shape != tuple(meta["spatial_shape"]):
                raise UDAInputError(
                    f"mask/image size mismatch: image {shape_text(meta['spatial_shape'])}, "
                    f"label {shape_text(label.shape)}",
                    label_files[stem],
                )
            label = as_uint16(label, label_files[stem])
            item["label"] = str(write_array(out / "labels" / f"{stem}.tif", label))
        items.append(item)
    say(f"folder: {len(items)} {'labelled ' if labels is not None else ''}images -> {split!r}")
    return write_datalist(out, {**kept, split: items})


# --------------------------------------------------------------------------- dispatcher

PREPARE_FORMATS: dict[str, Callable[..., Path]] = {
    "dsb": prepare_dsb,
    "monuseg": prepare_monuseg,
    "folder": prepare_folder,
    "coco": prepare_coco,
}
"""Converters by format name, as used by ``monai-uda prepare <format>``."""

#: formats whose ``target`` list comes without a ``--split`` option
_TARGET_FORMATS = frozenset({"monuseg"})

LABELLED_SUBSET_HELP = [
    "any format that writes labelled 'target' items (folder / coco with --split target): semi-supervised targets",
    "  --labelled_fraction        none (F: keep 'label' on round(F * n) of the n target items, drop it on the rest)",
    "  --labelled                 none (N: keep 'label' on N target items; files are kept, the datalist changes)",
    "  --seed                     0 (which items)",
]
"""``monai-uda prepare --help`` lines of the options :func:`prepare` handles for every format."""


def _labelled_subset(fmt: str, converter: Callable[..., Path], options: dict[str, Any]) -> dict[str, Any] | None:
    """Take ``labelled_fraction``/``labelled``/``seed`` out of ``options``, checked, when a subset is asked for."""
    if "labelled_fraction" not in options and "labelled" not in options:
        return None
    params = inspect.signature(converter).parameters
    fraction, count = options.pop("labelled_fraction", None), options.pop("labelled", None)
    seed = options.get("seed", 0) if "seed" in params else options.pop("seed", 0)
    option = "--labelled_fraction" if count is None else "--labelled"
    if fraction is not None and count is not None:
        raise UDAInputError("give --labelled_fraction or --labelled, not both")
    if "split" in params:
        split = options.get("split", params["split"].default)
        if split != "target":
            raise UDAInputError(f"{option} marks labelled 'target' items; add --split target (this writes {split!r})")
    elif fmt not in _TARGET_FORMATS:
        raise UDAInputError(f"{option}: format {fmt!r} writes no 'target' list")
    if fraction is not None:
        labelled_count(1, fraction, option)  # a bad value fails before any file is written
    if count is not None:
        check_count(count, option)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UDAInputError(f"--seed must be a whole number, got {seed!r}")
    return {"fraction": fraction, "count": count, "seed": seed}


def prepare(fmt: str, src: str | Path | None = None, out: str | Path | None = None, **kwargs: Any) -> Path:
    """Run the converter for ``fmt`` (the ``monai-uda prepare`` command).

    Forms: ``prepare("dsb", SRC, OUT)``, ``prepare("monuseg", SRC, OUT, strict=True)``,
    ``prepare("folder", OUT, images=DIR, labels=DIR)`` (the CLI's
    ``prepare folder --images DIR --labels DIR OUT``), ``prepare("folder", IMAGES, OUT)`` or
    ``prepare("coco", "instances.json", OUT, images=DIR)``.
    Option names may use ``-`` for ``_``. Every format that writes labelled ``target`` items also
    takes ``labelled_fraction=F`` or ``labelled=N`` (with ``seed``): the datalist then keeps
    ``"label"`` on a seeded subset of those items only (:func:`~monai_uda.data.labelled.mark_labelled_subset`).

    Returns:
        Path of the written datalist.

    Raises:
        UDAInputError: unknown format (listing the choices), unknown options, missing folders, a
            labelled subset of a format or split without target items, or of more items than are labelled.
    """
    if fmt not in PREPARE_FORMATS:
        raise UDAInputError(f"unknown dataset format {fmt!r} (choices: {', '.join(PREPARE_FORMATS)})")
    converter = PREPARE_FORMATS[fmt]
    options = {str(k).replace("-", "_"): v for k, v in kwargs.items()}
    subset = _labelled_subset(fmt, converter, options)
    if fmt == "folder":
        if "images" not in options:
            options["images"] = src
        elif out is None:
            out = src
        elif src is not None:
            raise UDAInputError("give the images folder once: either --images DIR or as the first folder")
        if options["images"] is None:
            raise UDAInputError("missing images folder (--images DIR)")
        options.setdefault("labels", None)
    elif src is None:
        raise UDAInputError(f"missing source: monai-uda prepare {fmt} SRC OUT")
    else:
        options["src"] = src
    if out is None:
        raise UDAInputError(f"missing output folder: monai-uda prepare {fmt} ... OUT")
    accepted = [name for name in inspect.signature(converter).parameters if name != "out"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UDAInputError(f"unknown option {unknown[0]!r} for {fmt!r} (accepted: {', '.join(accepted)})")
    datalist = converter(out=out, **options)
    return datalist if subset is None else mark_labelled_subset(datalist, **subset)
