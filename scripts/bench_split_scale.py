"""How much the size-aware split gains when the nuclei are larger (or smaller) than the source's.

    python scripts/bench_split_scale.py --data /work/shared/data/dsb2018_fluo --images 16 --scales 1,3,0.5 \
        [--monuseg /work/shared/data/monuseg/test]

Takes ``--images`` DSB2018 fluorescence label maps (evenly spaced in name order), rescales them
by each of ``--scales`` (nearest neighbour, so nuclei keep their ids), and uses the ground-truth
foreground (``label > 0``, touching nuclei merged) as a perfect semantic prediction: no training.
It is split by :func:`monai_uda.inference.postprocess.binary_to_instances` three ways:

* ``h=1``: today's fixed split (``diameter: null``);
* ``auto``: ``diameter: auto``, the reference being the typical diameter of the x1 images
  (:func:`~monai_uda.inference.postprocess.typical_diameter`, what training records);
* ``given``: ``diameter`` = scale x reference, as a user who knows the nuclei's size would give it.

It prints mean AJI and object F1 (:func:`monai_uda.metrics.instance.instance_metrics`) per scale
and way as a Markdown table. With ``--monuseg`` (the MoNuSeg test tiles and their XML
annotations) a row at the tiles' own scale checks the ``dsb2018_fluo->monuseg`` setting: H&E
nuclei split with the DSB2018 reference.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from skimage.transform import rescale

from monai_uda.data.io import list_images, read_image, read_label
from monai_uda.data.monuseg import rasterize_aperio_xml
from monai_uda.inference.postprocess import binary_to_instances, typical_diameter
from monai_uda.metrics.instance import instance_metrics

WAYS = ("h=1", "auto", "given")


def rescale_labels(label: np.ndarray, scale: float) -> np.ndarray:
    """An instance map resized by ``scale`` with nearest neighbour (ids kept, no new values)."""
    if scale == 1:
        return label
    return rescale(label, scale, order=0, preserve_range=True, anti_aliasing=False).astype(label.dtype)


def split_ways(
    foreground: np.ndarray, reference: float, scale: float, min_size: int
) -> dict[str, np.ndarray]:
    """The foreground split with the fixed ``h``, with ``diameter: auto`` and with the known diameter."""
    return {
        "h=1": binary_to_instances(foreground, min_size=min_size),
        "auto": binary_to_instances(foreground, min_size=min_size, diameter="auto", reference_diameter=reference),
        "given": binary_to_instances(
            foreground, min_size=min_size, diameter=scale * reference, reference_diameter=reference
        ),
    }


def score(labels: Sequence[np.ndarray], split: Callable[[np.ndarray], dict[str, np.ndarray]]) -> dict[str, tuple]:
    """Mean (AJI, object F1) of each way over ``labels``."""
    values: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    for gt in labels:
        for way, instances in split(gt > 0).items():
            metrics = instance_metrics(instances, gt)
            values[way].append((metrics["aji"], metrics["object_f1"]))
    return {way: tuple(np.mean(v, axis=0)) for way, v in values.items()}


def monuseg_labels(folder: Path, count: int) -> list[np.ndarray]:
    """Instance maps of the first ``count`` MoNuSeg test tiles, rasterised from their XML annotations."""
    labels = []
    for path in list_images(folder / "images")[:count]:
        image, _ = read_image(path)
        labels.append(rasterize_aperio_xml(folder / "annotations" / f"{path.stem}.xml", image.shape[-2:])[0])
    return labels


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/dsb2018_fluo"))
    parser.add_argument("--images", type=int, default=16, help="label maps used (evenly spaced in name order)")
    parser.add_argument("--scales", default="1,3,0.5", help="comma-separated rescaling factors")
    parser.add_argument("--min_size", type=int, default=10)
    parser.add_argument("--monuseg", type=Path, default=None, help="MoNuSeg test folder (images/, annotations/)")
    parser.add_argument("--monuseg_images", type=int, default=4)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = sorted((args.data / "labels").glob("*.tif"))
    paths = [paths[i] for i in np.linspace(0, len(paths) - 1, min(args.images, len(paths))).round().astype(int)]
    originals = [read_label(p) for p in paths]
    reference = typical_diameter(originals, args.min_size)
    print(f"{len(originals)} DSB2018 label maps; reference diameter (x1) {reference:.1f} px")
    print("| images | scale | typical diameter (px) | AJI h=1 | AJI auto | AJI given | F1 h=1 | F1 auto | F1 given |")
    print("|---|---|---|---|---|---|---|---|---|")
    scales = [float(s) for s in args.scales.split(",")]
    rows = [(f"DSB2018 x{s:g}", s, [rescale_labels(lab, s) for lab in originals]) for s in scales]
    if args.monuseg is not None:
        rows.append(("MoNuSeg test", None, monuseg_labels(args.monuseg, args.monuseg_images)))
    for name, scale, labels in rows:
        diameter = typical_diameter(labels, args.min_size)
        given = diameter / reference if scale is None else scale
        result = score(labels, lambda fg, g=given: split_ways(fg, reference, g, args.min_size))
        aji = " | ".join(f"{result[w][0]:.3f}" for w in WAYS)
        f1 = " | ".join(f"{result[w][1]:.3f}" for w in WAYS)
        print(f"| {name} | {given:.2f} | {diameter:.1f} | {aji} | {f1} |", flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
