"""Converters from public dataset layouts to the project's folder + datalist format.

Every converter writes ``OUT/images/<stem>.<ext>``, ``OUT/labels/<stem>.tif`` (uint16 instance
ids, 0 = background) and ``OUT/datalist.json`` (see :mod:`monai_uda.data.datalist`), shows a
progress bar, prints warnings and a summary on stderr, and returns the datalist path.

* :func:`prepare_dsb`: 2018 Data Science Bowl (Kaggle layout, one binary PNG per nucleus);
* :func:`prepare_monuseg`: MoNuSeg 2018 (train tiles as unlabelled target, test tiles with
  Aperio ImageScope XML polygons rasterised by :func:`rasterize_aperio_xml`);
* :func:`prepare_folder`: any ``images/`` folder with an optional ``labels/`` folder;
* :func:`~monai_uda.data.coco.prepare_coco` (in :mod:`monai_uda.data.coco`): a COCO instances
  JSON (polygons, uncompressed and compressed RLE) with its images;
* :func:`prepare`: the dispatcher behind ``monai-uda prepare <format> ...``.
"""

from __future__ import annotations

import inspect
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
from skimage.draw import polygon
from tqdm import tqdm

from monai_uda.data.coco import prepare_coco
from monai_uda.data.datalist import DATALIST_KEYS, write_datalist
from monai_uda.data.io import list_images, read_array, read_image, read_label, stem_of, write_array
from monai_uda.data.prepare_utils import (
    UINT16_MAX,
    as_uint16,
    kept_splits,
    output_folder,
    paint_instances,
    place_file,
    preview,
    say,
    shape_text,
    source_folder,
)
from monai_uda.errors import UDAInputError

__all__ = ["PREPARE_FORMATS", "prepare", "prepare_dsb", "prepare_folder", "prepare_monuseg", "rasterize_aperio_xml"]

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
            raise UDAInputError(f"mask/image size mismatch: image {shape_text(shape)}, label {shape_text(mask.shape)}", mask_file)
        free = (mask > 0) & (label == 0)
        if not free.any():
            empty.append(mask_file)
        label[free] = instance_id
    return label, empty


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
    planned = [out / sub / f"{sample.name}{ext}" for sample in samples for sub, ext in (("images", ".png"), ("images", ".tif"), ("labels", ".tif"))]
    kept = kept_splits(out, ["source", "validation"], planned)
    items, n_nuclei, n_empty = [], 0, 0
    for sample in tqdm(samples, desc="dsb", unit="image"):
        images = list_images(sample / "images") if (sample / "images").is_dir() else []
        if len(images) != 1:
            raise UDAInputError(f"expected one image in images/, found {len(images)}", sample)
        if not (sample / "masks").is_dir():
            raise UDAInputError("no masks/ folder (expected one binary PNG per nucleus)", sample)
        image = _dsb_image(images[0])
        label, empty = _dsb_instances(list_images(sample / "masks"), image.shape[:2])
        for mask_file in empty:
            say(f"warning: {mask_file}: mask has no pixels (empty, or covered by lower-numbered masks)")
        n_empty += len(empty)
        n_nuclei += len(np.unique(label)) - 1
        ext = ".png" if image.dtype == np.uint8 else ".tif"
        items.append(
            {
                "image": str(write_array(out / "images" / f"{sample.name}{ext}", image)),
                "label": str(write_array(out / "labels" / f"{sample.name}.tif", label)),
            }
        )
    n_val = _validation_count(len(items), validation_fraction)
    validation_ids = set(np.random.default_rng(seed).permutation(len(items))[:n_val].tolist())
    datalist = {
        **kept,
        "source": [item for i, item in enumerate(items) if i not in validation_ids],
        "validation": [item for i, item in enumerate(items) if i in validation_ids],
    }
    say(f"dsb: {len(items)} images ({len(items) - n_val} source, {n_val} validation), {n_nuclei} nuclei, {n_empty} empty mask(s)")
    return write_datalist(out, datalist)


# --------------------------------------------------------------------------- MoNuSeg 2018


def _region_vertices(region: ET.Element) -> tuple[np.ndarray | None, str]:
    """``(rows, cols)`` vertex array of one Aperio region, or ``None`` and the reason it is malformed."""
    vertices = region.findall("./Vertices/Vertex")
    if len(vertices) < 3:
        return None, f"{len(vertices)} {'vertex' if len(vertices) == 1 else 'vertices'}"
    rows_cols = []
    for index, vertex in enumerate(vertices):
        x, y = vertex.get("X"), vertex.get("Y")
        try:
            rows_cols.append((float(y), float(x)))  # X is the column, Y the row
        except (TypeError, ValueError):
            return None, f"vertex {index}: non-numeric coordinates X={x!r} Y={y!r}"
    coords = np.asarray(rows_cols)
    non_finite = np.flatnonzero(~np.isfinite(coords).all(axis=1))
    if non_finite.size:
        vertex = vertices[non_finite[0]]
        return None, f"vertex {non_finite[0]}: non-finite coordinates X={vertex.get('X')!r} Y={vertex.get('Y')!r}"
    return coords, ""


def rasterize_aperio_xml(xml_path: str | Path, shape: Sequence[int], strict: bool = False) -> tuple[np.ndarray, list[str]]:
    """Rasterise an Aperio ImageScope XML (one ``<Region>`` polygon per nucleus) to instance ids.

    Polygons are filled with :func:`skimage.draw.polygon` (vertex ``X`` = column, ``Y`` = row),
    clipped to ``shape``. Well-formed regions get ids ``1..N`` in document order.
    **Overlaps**: the smaller region (fewer pixels inside the image) wins a shared pixel; on
    equal size the earlier region in the file wins.

    Malformed regions are never dropped silently: regions with fewer than 3 vertices,
    non-numeric coordinates or zero area after clipping get no id, and regions completely
    covered by smaller ones lose theirs; each is listed as ``"<file>: region <Id>: <reason>"``.

    Args:
        xml_path: the annotation file.
        shape: ``(H, W)`` of the image.
        strict: raise on the first problem instead of listing it.

    Returns:
        ``(label, problems)``: a uint16 ``(H, W)`` instance map and the problem lines.

    Raises:
        UDAInputError: unreadable or malformed XML, a ``shape`` that is not 2D, more regions
            than uint16 holds, or (``strict``) the first problem.
    """
    xml_path = Path(xml_path)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise UDAInputError(f"annotations need a 2D image shape, got {shape}", xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise UDAInputError(f"malformed XML ({exc})", xml_path) from exc
    except OSError as exc:
        raise UDAInputError(f"cannot read annotations ({exc.strerror or exc})", xml_path) from exc
    problems: list[str] = []

    def report(region_id: str, reason: str) -> None:
        if strict:
            raise UDAInputError(f"region {region_id}: {reason}", xml_path)
        problems.append(f"{xml_path}: region {region_id}: {reason}")

    regions: list[tuple[str, np.ndarray, np.ndarray]] = []
    for index, region in enumerate(root.iter("Region"), start=1):
        region_id = region.get("Id") or f"#{index}"
        coords, reason = _region_vertices(region)
        if coords is None:
            report(region_id, reason)
            continue
        rows, cols = polygon(coords[:, 0], coords[:, 1], shape=shape)
        if rows.size == 0:
            report(region_id, f"zero area after clipping to the {shape_text(shape)} image")
            continue
        regions.append((region_id, rows, cols))
    label = paint_instances(shape, [(rows, cols) for _, rows, cols in regions], xml_path)
    pixel_counts = np.bincount(label.ravel(), minlength=len(regions) + 1)
    for i in np.flatnonzero(pixel_counts[1:] == 0):
        report(regions[i][0], "completely covered by smaller overlapping regions")
    return label, problems


def prepare_monuseg(src: str | Path, out: str | Path, strict: bool = False) -> Path:
    """Convert MoNuSeg 2018: ``train/images/*.tif`` as target, ``test/`` with XML as test.

    ``train/images/*.tif`` become ``"target"`` items without labels (the merged
    ``train/binary_masks`` are not instance maps and are not used). ``test/images/<stem>.tif``
    with ``test/annotations/<stem>.xml`` become ``"test"`` items whose labels are rasterised
    by :func:`rasterize_aperio_xml`. Images are copied unchanged after a check read.

    Args:
        src: MoNuSeg folder holding ``train/`` and/or ``test/``.
        out: output folder.
        strict: raise on the first malformed annotation region instead of warning.

    Returns:
        Path of ``out/datalist.json`` with ``"target"`` and ``"test"`` lists.

    Raises:
        UDAInputError: neither part present, a test image without XML, unreadable images,
            malformed XML, a stem in both parts, or (``strict``) a malformed region.
    """
    src, out = source_folder(src, "MoNuSeg"), output_folder(out)
    tif = (".tif", ".tiff")
    train_dir, test_dir = src / "train" / "images", src / "test" / "images"
    train = list_images(train_dir, tif) if train_dir.is_dir() else []
    test = list_images(test_dir, tif) if test_dir.is_dir() else []
    if not train and not test:
        raise UDAInputError("no MoNuSeg images (expected train/images/*.tif and/or test/images/*.tif)", src)
    shared = sorted({stem_of(p) for p in train} & {stem_of(p) for p in test})
    if shared:
        raise UDAInputError(f"image stem(s) in both train and test: {preview(shared)}", src)
    planned = [out / "images" / p.name for p in train + test] + [out / "labels" / f"{stem_of(p)}.tif" for p in test]
    datalist: dict[str, list[dict[str, str]]] = {**kept_splits(out, ["target", "test"], planned), "target": [], "test": []}
    n_nuclei, n_problems = 0, 0
    train_set = set(train)
    for path in tqdm(train + test, desc="monuseg", unit="image"):
        _, meta = read_image(path, spatial_dims=2)
        image_out = out / "images" / path.name
        place_file(path, image_out)
        if path in train_set:
            datalist["target"].append({"image": str(image_out)})
            continue
        xml_path = src / "test" / "annotations" / f"{stem_of(path)}.xml"
        if not xml_path.is_file():
            raise UDAInputError(f"no annotation file {xml_path.name} for this test image", path)
        label, problems = rasterize_aperio_xml(xml_path, meta["spatial_shape"], strict=strict)
        for problem in problems:
            say(f"warning: {problem}")
        n_problems += len(problems)
        n_nuclei += len(np.unique(label)) - 1
        label_out = write_array(out / "labels" / f"{stem_of(path)}.tif", label)
        datalist["test"].append({"image": str(image_out), "label": str(label_out)})
    say(f"monuseg: {len(train)} target images, {len(test)} test images, {n_nuclei} nuclei, {n_problems} annotation problem(s)")
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


def prepare_folder(images: str | Path, labels: str | Path | None, out: str | Path, split: str = "source", link: bool = False) -> Path:
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
    label_files: dict[str, Path] = {}
    if labels is not None:
        labels = source_folder(labels, "labels")
        label_files = _by_stem(labels)
        no_label = sorted(set(image_files) - set(label_files))
        if no_label:
            raise UDAInputError(f"no label for image stem(s) {preview(no_label)}", labels)
        no_image = sorted(set(label_files) - set(image_files))
        if no_image:
            raise UDAInputError(f"no image for label stem(s) {preview(no_image)}", images)
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
                    f"mask/image size mismatch: image {shape_text(meta['spatial_shape'])}, label {shape_text(label.shape)}",
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


def prepare(fmt: str, src: str | Path | None = None, out: str | Path | None = None, **kwargs: Any) -> Path:
    """Run the converter for ``fmt`` (the ``monai-uda prepare`` command).

    Forms: ``prepare("dsb", SRC, OUT)``, ``prepare("monuseg", SRC, OUT, strict=True)``,
    ``prepare("folder", OUT, images=DIR, labels=DIR)`` (the CLI's
    ``prepare folder --images DIR --labels DIR OUT``), ``prepare("folder", IMAGES, OUT)`` or
    ``prepare("coco", "instances.json", OUT, images=DIR)``.
    Option names may use ``-`` for ``_``.

    Returns:
        Path of the written datalist.

    Raises:
        UDAInputError: unknown format (listing the choices), unknown options, missing folders.
    """
    if fmt not in PREPARE_FORMATS:
        raise UDAInputError(f"unknown dataset format {fmt!r} (choices: {', '.join(PREPARE_FORMATS)})")
    converter = PREPARE_FORMATS[fmt]
    options = {str(k).replace("-", "_"): v for k, v in kwargs.items()}
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
    return converter(out=out, **options)
