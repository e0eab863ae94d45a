"""Whole-slide inference benchmark: throughput, peak memory and end-to-end vs network-only speed.

For each size a synthetic H&E-like RGB tiled TIFF (``size x size``, the top ``--tissue`` fraction
tissue with nuclei, the rest blank glass) is generated tile by tile, then segmented by
:class:`monai_uda.inference.SlideSegmenter` in a fresh process (so the peak RSS is that size's).
The same process then times the network alone on the same number of windows of the same batch
size (random tensors, no I/O, no stitching) and reports the ratio of the two throughputs.

    python scripts/bench_inference.py --sizes 4096,16384
    python scripts/bench_inference.py --sizes 16384 --network cpu   # train_cpu.yaml U-Net

The last line printed per size is
``size=<px> megapixels_per_s=<f> peak_rss_gib=<f> e2e_over_network=<f>``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

NETWORKS = {  # U-Net widths and window of the bundle presets
    "default": ([64, 128, 256, 512, 512], 512),  # cellseg_uda inference.yaml
    "cpu": ([16, 32, 64, 128, 128], 256),  # cellseg_uda train_cpu.yaml
    "tiny": ([8, 16, 32], 256),
}
GLASS, TISSUE, NUCLEUS = (236, 230, 234), (222, 150, 196), (80, 40, 130)


def _tiles(size: int, tissue: float, tile: int, seed: int) -> Iterator[np.ndarray]:
    """Raster-ordered RGB tiles: tissue rows with ~40 nuclei of radius 5-9 per tile, then glass."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    for ty in range(0, size, tile):
        for _ in range(0, size, tile):
            out = np.empty((tile, tile, 3), dtype=np.uint8)
            if ty < tissue * size:
                out[:] = TISSUE
                for y, x, r in zip(*rng.integers((10, 10, 5), (tile - 10, tile - 10, 10), size=(40, 3)).T):
                    out[disk((y, x), r, shape=out.shape[:2])] = NUCLEUS
            else:
                out[:] = GLASS
            yield np.clip(out.astype(np.int16) + rng.integers(-8, 9, out.shape), 0, 255).astype(np.uint8)


def make_slide(path: Path, size: int, tissue: float, tile: int = 256, seed: int = 0) -> Path:
    """Write the synthetic slide, streaming (never holds the whole slide)."""
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=size * size * 3 > 2**31) as writer:
        writer.write(_tiles(size, tissue, tile, seed), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile), compression="zlib", maxworkers=1)
    return path


def run_one(size: int, network: str, tissue: float, sw_batch_size: int, workdir: Path) -> dict:
    """Generate, segment and time one slide in this process; returns the figures."""
    import torch
    from monai.networks.nets import UNet

    from monai_uda.inference import SlideSegmenter

    widths, roi = NETWORKS[network]
    slides = workdir / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    make_slide(slides / f"slide{size}.tif", size, tissue)
    torch.manual_seed(0)
    net = UNet(2, 3, 1, widths, [2] * (len(widths) - 1), num_res_units=1).eval()
    seg = SlideSegmenter(net, str(slides), str(workdir / "out"), channels=3, roi_size=(roi, roi), sw_batch_size=sw_batch_size)
    record = seg.segment_file(slides / f"slide{size}.tif")
    windows = record["windows"] - record["windows_skipped"]
    batches = -(-windows // sw_batch_size)
    sample = min(batches, 8)
    x = torch.rand(sw_batch_size, 3, roi, roi)
    with torch.no_grad():
        net(x)  # warm-up, as the first window of the streaming run
        start = time.perf_counter()
        for _ in range(sample):
            net(x)
    network_seconds = (time.perf_counter() - start) / sample * batches
    return {
        "size": size, "network": network, "windows": record["windows"], "windows_skipped": record["windows_skipped"],
        "n_instances": record["n_instances"], "e2e_seconds": record["seconds"], "network_in_run_seconds": record["network_seconds"],
        "network_only_seconds": network_seconds, "megapixels_per_s": size * size / 1e6 / record["seconds"],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "e2e_over_network": network_seconds / record["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16384,32768", help="comma-separated slide sides in pixels")
    parser.add_argument("--network", default="default", choices=sorted(NETWORKS), help="U-Net preset (default: the bundle's)")
    parser.add_argument("--tissue", type=float, default=0.5, help="fraction of the slide covered by tissue")
    parser.add_argument("--sw_batch_size", type=int, default=4)
    parser.add_argument("--workdir", default=None, help="folder for slides and outputs (default: a temporary one)")
    parser.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_inference_"))
    if args.single is not None:
        print(json.dumps(run_one(args.single, args.network, args.tissue, args.sw_batch_size, workdir)))
        return
    for size in (int(s) for s in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--single", str(size), "--network", args.network, "--tissue", str(args.tissue),
               "--sw_batch_size", str(args.sw_batch_size), "--workdir", str(workdir / str(size))]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"size {size} failed:\n{proc.stderr[-3000:]}")
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"size={size} network={figures['network']} windows={figures['windows']} skipped={figures['windows_skipped']} "
            f"nuclei={figures['n_instances']} e2e_s={figures['e2e_seconds']:.1f} network_only_s={figures['network_only_seconds']:.1f} "
            f"network_in_run_s={figures['network_in_run_seconds']:.1f}"
        )
        print(f"size={size} megapixels_per_s={figures['megapixels_per_s']:.4f} peak_rss_gib={figures['peak_rss_gib']:.3f} "
              f"e2e_over_network={figures['e2e_over_network']:.3f}", flush=True)


if __name__ == "__main__":
    main()
