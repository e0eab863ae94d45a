"""A classical reference for the benchmark tables: Otsu threshold + the shared watershed split.

    python scripts/otsu_baseline.py --images EVAL/images --labels EVAL/labels --out OUT [--invert]

Thresholds each image's luminance with Otsu's method (dark-on-bright images: ``--invert``),
splits touching nuclei with :func:`monai_uda.inference.postprocess.binary_to_instances` (the
post-processing of the semantic bundles), writes the instance maps to ``OUT`` and prints the
mean metrics of :func:`monai_uda.metrics.evaluate.evaluate_dirs` (also ``OUT/metrics.json``).
No training, no labels used: what a learned method must beat to be worth its CPU time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from skimage.filters import threshold_otsu

from monai_uda.data.io import list_images, read_image, stem_of, write_array
from monai_uda.inference.postprocess import binary_to_instances
from monai_uda.metrics.evaluate import evaluate_dirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, type=Path)
    parser.add_argument("--labels", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--invert", action="store_true", help="nuclei darker than the background (bright-field, H&E)")
    parser.add_argument("--min_size", type=int, default=10)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in list_images(args.images):
        image, _ = read_image(path)
        grey = image.mean(axis=0).astype(np.float64)
        grey = -grey if args.invert else grey
        foreground = (grey > threshold_otsu(grey)).astype(np.float32)
        instances = binary_to_instances(foreground, threshold=0.5, min_size=args.min_size)
        write_array(
            args.out / f"{stem_of(path)}.tif", instances.astype(np.uint32 if instances.max() >= 2**16 else np.uint16)
        )
    mean = evaluate_dirs(args.out, args.labels, args.out / "metrics.json")["mean"]
    print(" ".join(f"{key}={value:.3f}" for key, value in mean.items()))


if __name__ == "__main__":
    main()
