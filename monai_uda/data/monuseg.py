"""MoNuSeg 2018 converter: Aperio ImageScope XML polygons rasterised to uint16 instance maps.

``monai-uda prepare monuseg SRC OUT`` (see :mod:`monai_uda.data.prepare`): the train tiles
become the unlabelled target, the test tiles with their XML annotations the labelled test split.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage.draw import polygon
from tqdm import tqdm

from monai_uda.data.datalist import write_datalist
from monai_uda.data.io import list_images, read_image, stem_of, write_array
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

__all__ = ["prepare_monuseg", "rasterize_aperio_xml"]


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


def rasterize_aperio_xml(
    xml_path: str | Path, shape: Sequence[int], strict: bool = False
) -> tuple[np.ndarray, list[str]]:
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
    datalist: dict[str, list[dict[str, str]]] = {
        **kept_splits(out, ["target", "test"], planned),
        "target": [],
        "test": [],
    }
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
    say(
        f"monuseg: {len(train)} target images, {len(test)} test images, {n_nuclei} nuclei, "
        f"{n_problems} annotation problem(s)"
    )
    return write_datalist(out, datalist)
