"""COCO instance annotations to the project's folder + datalist format (``monai-uda prepare coco``).

DARCNN's source domain in the paper is COCO: :func:`prepare_coco` turns any COCO-format
instances file (COCO itself, or a nuclei dataset exported by an annotation tool) into
``OUT/images/``, ``OUT/labels/<stem>.tif`` (uint16 instance ids, class-agnostic) and
``OUT/datalist.json``. Masks are decoded without pycocotools:

* polygons (:func:`polygon_mask`, several per annotation are united);
* uncompressed RLE, ``{"counts": [int, ...], "size": [h, w]}`` (:func:`rle_mask`);
* compressed RLE, ``{"counts": "<string>", "size": [h, w]}`` (:func:`rle_counts_from_string`,
  the encoding of pycocotools' ``rleToString``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from skimage.draw import polygon
from tqdm import tqdm

from monai_uda.data.datalist import DATALIST_KEYS, read_json, write_datalist
from monai_uda.data.io import read_image, stem_of, write_array
from monai_uda.data.prepare_utils import (
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

__all__ = ["decode_segmentation", "polygon_mask", "prepare_coco", "rle_counts_from_string", "rle_mask"]


def rle_counts_from_string(text: str) -> list[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools ``rleFrString``).

    Each count is written in 5-bit groups, least significant first, as characters ``'0' + c``
    (bit 5 of ``c``: more groups follow; bit 4 of the last group: negative). From the fourth
    count on, the value is the difference to the count two places before.

    Raises:
        ValueError: a character outside ``'0'..'o'`` or a count cut short.
    """
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position == len(text):
                raise ValueError("compressed RLE string ends inside a count")
            group = ord(text[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"invalid character {text[position]!r} in compressed RLE string")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift  # sign extension
        counts.append(value + counts[-2] if len(counts) > 2 else value)
    return counts


def rle_mask(counts: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Boolean ``(h, w)`` mask from COCO run lengths: alternating 0/1 runs, starting with 0, column-major.

    Raises:
        ValueError: negative counts or counts that do not add up to ``h * w``.
    """
    height, width = (int(s) for s in size)
    runs = np.asarray(counts, dtype=np.int64)
    if runs.ndim != 1 or (runs < 0).any():
        raise ValueError("RLE counts must be non-negative integers")
    if int(runs.sum()) != height * width:
        raise ValueError(f"RLE counts add up to {int(runs.sum())} pixels, size {height}x{width} has {height * width}")
    flat = np.repeat(np.arange(runs.size) % 2 == 1, runs)
    return flat.reshape((height, width), order="F")


def polygon_mask(polygons: Sequence[Sequence[float]], shape: Sequence[int]) -> np.ndarray:
    """Boolean mask of the union of COCO polygons ``[x1, y1, x2, y2, ...]`` clipped to ``shape``.

    COCO coordinates are continuous with pixel ``(r, c)`` covering ``[c, c + 1) x [r, r + 1)``;
    a pixel is inside when its centre is (:func:`skimage.draw.polygon` on the coordinates shifted
    by half a pixel). Polygons with fewer than 3 points have no area.

    Raises:
        ValueError: a polygon that is not a flat list of an even number of finite numbers.
    """
    mask = np.zeros(tuple(shape), dtype=bool)
    for index, points in enumerate(polygons):
        try:
            coords = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"polygon {index} is not a list of numbers") from exc
        if coords.ndim != 1 or coords.size % 2 or not np.isfinite(coords).all():
            raise ValueError(f"polygon {index} must be a flat list of x, y pairs of finite numbers")
        if coords.size >= 6:
            rows, cols = polygon(coords[1::2] - 0.5, coords[0::2] - 0.5, shape=mask.shape)
            mask[rows, cols] = True
    return mask


def decode_segmentation(segmentation: Any, shape: Sequence[int]) -> np.ndarray:
    """Boolean mask of one annotation's ``segmentation`` (polygons, uncompressed or compressed RLE).

    Raises:
        ValueError: an unknown or malformed segmentation, or an RLE ``size`` other than ``shape``.
    """
    if isinstance(segmentation, list):
        return polygon_mask(segmentation, shape)
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise ValueError("segmentation must be a list of polygons or an RLE dict with 'counts' and 'size'")
    size = segmentation["size"]
    if not isinstance(size, list) or [int(s) for s in size if isinstance(s, int)] != list(shape):
        raise ValueError(f"RLE size {size} does not match the {shape_text(shape)} image (expected [height, width])")
    counts = segmentation["counts"]
    if isinstance(counts, str):
        counts = rle_counts_from_string(counts)
    elif not isinstance(counts, list) or not all(isinstance(c, int) for c in counts):
        raise ValueError("RLE counts must be a list of integers or a compressed RLE string")
    return rle_mask(counts, shape)


# --------------------------------------------------------------------------- the COCO file


def _load(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """``(images, annotations, categories)`` of a COCO instances file, structure checked."""
    if path.is_dir():
        raise UDAInputError(
            "is a folder; give the COCO instances JSON file (e.g. annotations/instances_train2017.json)", path
        )
    if not path.is_file():
        raise UDAInputError("COCO annotation file does not exist", path)
    data = read_json(path, "annotations")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UDAInputError("not a COCO instances file: no 'images' list", path)
    parts = [data["images"], data.get("annotations", []), data.get("categories", [])]
    for name, part in zip(("images", "annotations", "categories"), parts):
        if not isinstance(part, list) or not all(isinstance(entry, dict) for entry in part):
            raise UDAInputError(f"'{name}' must be a list of objects", path)
    seen: set[int | str] = set()
    for index, record in enumerate(data["images"]):
        missing = [key for key in ("id", "file_name") if key not in record]
        if missing:
            raise UDAInputError(f"images[{index}] has no {missing[0]!r}", path)
        if not isinstance(record["id"], (int, str)) or record["id"] in seen:
            raise UDAInputError(f"images[{index}]: id {record['id']!r} is not a unique integer or string", path)
        seen.add(record["id"])
    return parts[0], parts[1], parts[2]


def _category_ids(value: Any, categories: list[dict[str, Any]], path: Path) -> set[int] | None:
    """The ``category_ids`` option (``"1,2"``, ``(1, 2)`` from the command line, or ``1``) as a set."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value
    parts = parts if isinstance(parts, (list, tuple, set)) else [parts]
    if not parts or not all(
        (isinstance(p, int) and not isinstance(p, bool)) or (isinstance(p, str) and p.lstrip("-").isdigit())
        for p in parts
    ):
        raise UDAInputError(f"category_ids must be integers such as 1,2; got {value!r}")
    wanted = {int(p) for p in parts}
    known = {c.get("id"): c.get("name", "") for c in categories}
    unknown = sorted(wanted - set(known))
    if categories and unknown:
        listed = ", ".join(f"{k} {v!r}" for k, v in list(known.items())[:10])
        raise UDAInputError(f"unknown category id(s) {unknown} (categories: {listed})", path)
    return wanted


def _images_folder(images: str | Path | None, annotation_file: Path) -> Path:
    """``--images``, else ``images/`` next to the JSON file when it exists, else the JSON's folder."""
    if images is not None:
        return source_folder(images, "images")
    sibling = annotation_file.parent / "images"
    return sibling if sibling.is_dir() else annotation_file.parent


def prepare_coco(
    src: str | Path,
    out: str | Path,
    images: str | Path | None = None,
    split: str = "source",
    category_ids: str | int | Sequence[int] | None = None,
    include_crowd: bool = False,
    link: bool = False,
) -> Path:
    """Convert a COCO instances JSON and its images to class-agnostic instance maps and a datalist.

    Every image listed in ``images`` becomes one item (images without annotations get an empty
    label map); every kept annotation becomes one instance, whatever its category. In each
    image, kept annotations with pixels get ids ``1..N`` in file order. **Overlaps**: the smaller
    mask (fewer pixels inside the image) wins a shared pixel; on equal size the earlier annotation
    wins. Annotations without pixels, or completely covered by smaller ones, are reported as
    warnings. Images are copied unchanged (after a check read) to ``images/<file name>``; labels
    are written as ``labels/<stem>.tif``.

    Args:
        src: the COCO instances JSON (``images``, ``annotations``, ``categories``).
        out: output folder.
        images: folder that ``file_name`` is relative to. Default: ``images/`` next to the JSON
            file if that folder exists, else the JSON file's folder.
        split: datalist key to fill, one of ``source``, ``target``, ``validation``, ``test``.
        category_ids: keep only these categories (``"1,2"``); default all.
        include_crowd: keep ``iscrowd`` annotations as one instance each (skipped by default:
            a crowd region covers several objects).
        link: hard-link images instead of copying them.

    Returns:
        Path of ``out/datalist.json``.

    Raises:
        UDAInputError: unreadable or malformed JSON, a malformed annotation (naming its id), an
            annotation of an unknown image, a missing or unreadable image file (naming it), an
            image of another size than its record, two images with one stem, unknown split or
            category ids, or more instances than uint16 holds.
    """
    if split not in DATALIST_KEYS:
        raise UDAInputError(f"unknown split {split!r} (choices: {', '.join(DATALIST_KEYS)})")
    src, out = Path(src), output_folder(out)
    records, annotations, categories = _load(src)
    wanted = _category_ids(category_ids, categories, src)
    folder = _images_folder(images, src)
    if (out / "images").resolve() == folder.resolve():
        raise UDAInputError("output images/ folder is the input images folder; choose another output folder", out)
    planned = _planned_outputs(records, folder, src, out)
    by_image, n_crowd, n_other_category = _group_annotations(records, annotations, wanted, include_crowd, src)
    kept = kept_splits(out, [split], planned)
    items, n_instances, n_problems = _write_items(records, folder, by_image, out, src, link)
    skipped = f", {n_crowd} crowd annotation(s) skipped" + (
        f", {n_other_category} of other categories" if wanted is not None else ""
    )
    say(f"coco: {len(items)} images -> {split!r}, {n_instances} instances{skipped}, {n_problems} annotation problem(s)")
    return write_datalist(out, {**kept, split: items})


def _planned_outputs(records: list[dict[str, Any]], folder: Path, src: Path, out: Path) -> list[Path]:
    """The image and label files the conversion will write.

    Refuses two images with one file stem (outputs are named by stem) and listed images that are missing.
    """
    stems: dict[str, Any] = {}
    for record in records:
        stem = stem_of(Path(str(record["file_name"])).name)
        if stem in stems:
            raise UDAInputError(f"images {stems[stem]!r} and {record['file_name']!r} have one file stem {stem!r}", src)
        stems[stem] = record["file_name"]
    missing = [record for record in records if not (folder / str(record["file_name"])).is_file()]
    if missing:
        raise UDAInputError(
            f"image file not found (COCO image id {missing[0]['id']}; {len(missing)} of {len(records)} listed images "
            f"are not in {folder}; set the images folder with --images DIR)",
            folder / str(missing[0]["file_name"]),
        )
    names = [Path(str(record["file_name"])) for record in records]
    return [path for name in names for path in (out / "images" / name.name, out / "labels" / f"{stem_of(name)}.tif")]


def _write_items(
    records: list[dict[str, Any]],
    folder: Path,
    by_image: dict[int | str, list[tuple[Any, dict[str, Any]]]],
    out: Path,
    src: Path,
    link: bool,
) -> tuple[list[dict[str, str]], int, int]:
    """Copy every image and write its instance map; the datalist items and the instance and problem counts."""
    items, n_instances, n_problems, unannotated = [], 0, 0, []
    for record in tqdm(records, desc="coco", unit="image"):
        path = folder / str(record["file_name"])
        label, n_regions, instances, problems = _instance_map(record, path, by_image[record["id"]], src)
        n_instances, n_problems = n_instances + instances, n_problems + problems
        if not n_regions:
            unannotated.append(str(record["file_name"]))
        image_out = out / "images" / Path(str(record["file_name"])).name
        place_file(path, image_out, link=link)
        label_out = write_array(out / "labels" / f"{stem_of(image_out)}.tif", label)
        items.append({"image": str(image_out), "label": str(label_out)})
    if unannotated:
        say(f"coco: {len(unannotated)} image(s) without instances keep an empty label map: {preview(unannotated)}")
    return items, n_instances, n_problems


def _group_annotations(
    records: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    wanted: set[int] | None,
    include_crowd: bool,
    src: Path,
) -> tuple[dict[int | str, list[tuple[Any, dict[str, Any]]]], int, int]:
    """The kept ``(name, annotation)`` pairs of every image id, and the counts of crowd and other-category ones."""
    by_image: dict[int | str, list[tuple[Any, dict[str, Any]]]] = {record["id"]: [] for record in records}
    n_crowd = n_other_category = 0
    for index, annotation in enumerate(annotations):
        name, image_id = annotation.get("id", f"#{index}"), annotation.get("image_id")
        if not isinstance(image_id, (int, str)) or image_id not in by_image:
            raise UDAInputError(f"annotation {name}: image_id {image_id!r} is not in 'images'", src)
        if annotation.get("iscrowd") and not include_crowd:
            n_crowd += 1
        elif wanted is not None and annotation.get("category_id") not in wanted:
            n_other_category += 1
        else:
            by_image[image_id].append((name, annotation))
    return by_image, n_crowd, n_other_category


def _instance_map(
    record: dict[str, Any], path: Path, annotations: list[tuple[Any, dict[str, Any]]], src: Path
) -> tuple[np.ndarray, int, int, int]:
    """One image's uint16 instance map, its numbers of regions with pixels and of instances, and its warnings."""
    _, meta = read_image(path, spatial_dims=2)
    shape = tuple(meta["spatial_shape"])
    expected = (record.get("height", shape[0]), record.get("width", shape[1]))
    if expected != shape:
        raise UDAInputError(
            f"image is {shape_text(shape)}, its COCO record (id {record['id']}) says {expected[0]}x{expected[1]}", path
        )
    regions, n_problems = [], 0
    for name, annotation in annotations:
        try:
            mask = decode_segmentation(annotation.get("segmentation"), shape)
        except ValueError as exc:
            raise UDAInputError(f"annotation {name}: {exc}", src) from exc
        if mask.any():
            regions.append((name, np.nonzero(mask)))
        else:
            say(f"warning: {src}: annotation {name}: zero area inside the {shape_text(shape)} image")
            n_problems += 1
    label = paint_instances(shape, [pixels for _, pixels in regions], src)
    pixel_counts = np.bincount(label.ravel(), minlength=len(regions) + 1)
    for i in np.flatnonzero(pixel_counts[1:] == 0):
        say(f"warning: {src}: annotation {regions[i][0]}: completely covered by smaller overlapping annotations")
        n_problems += 1
    return label, len(regions), int(np.count_nonzero(pixel_counts[1:])), n_problems
