"""Whole-slide inference benchmark: throughput, peak memory and end-to-end vs network-only speed.

For each size a synthetic H&E-like RGB tiled TIFF (``size x size``, the top ``--tissue`` fraction
tissue with nuclei, the rest blank glass) is generated tile by tile (or reused from ``--workdir``),
then segmented by :class:`monai_uda.inference.SlideSegmenter` in a fresh process (so the peak
RSS is that of segmenting that size, not of generating it); its progress bar goes to stderr.
The same process times the network alone (random tensors of the same batch size, no I/O, no
stitching) before and after the run, scales the mean to the same number of windows and reports the
ratio of the two throughputs, with the host's CPU steal time during the run.

    python scripts/bench_inference.py --sizes 4096,16384
    python scripts/bench_inference.py --sizes 16384 --network cpu   # train_cpu.yaml U-Net
    python scripts/bench_inference.py --sizes 32768 --rows 1536 --tissue 1   # the 32k slide's width, in minutes
    python scripts/bench_inference.py --sizes 16384 --prefetch_slabs 2   # network in a worker thread (the GPU default)

The last line printed per size is
``size=<px> megapixels_per_s=<f> peak_rss_gib=<f> e2e_over_network=<f>``.
"""

from __future__ import annotations

import argparse
import json
import os
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


def _tiles(size: int, tissue: float, tile: int, seed: int, rows: int | None = None) -> Iterator[np.ndarray]:
    """Raster-ordered RGB tiles of a ``rows x size`` slide (default square): tissue rows with ~40 nuclei
    of radius 5-9 per tile, then glass."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    rows = size if rows is None else rows
    for ty in range(0, rows, tile):
        for _ in range(0, size, tile):
            out = np.empty((tile, tile, 3), dtype=np.uint8)
            if ty < tissue * rows:
                out[:] = TISSUE
                for y, x, r in zip(*rng.integers((10, 10, 5), (tile - 10, tile - 10, 10), size=(40, 3)).T):
                    out[disk((y, x), r, shape=out.shape[:2])] = NUCLEUS
            else:
                out[:] = GLASS
            yield np.clip(out.astype(np.int16) + rng.integers(-8, 9, out.shape), 0, 255).astype(np.uint8)


def make_slide(path: Path, size: int, tissue: float, tile: int = 256, seed: int = 0, rows: int | None = None) -> Path:
    """Write the synthetic slide, streaming (never holds the whole slide), atomically."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".partial-{path.name}")
    rows = size if rows is None else rows
    with tifffile.TiffWriter(partial, bigtiff=rows * size * 3 > 2**31) as writer:
        writer.write(
            _tiles(size, tissue, tile, seed, rows),
            shape=(rows, size, 3), dtype=np.uint8, tile=(tile, tile), compression="zlib", maxworkers=1,
        )
    partial.replace(path)
    return path


def slide_path(workdir: Path, size: int, tissue: float, rows: int | None = None) -> Path:
    """Where the slide of one size (and height), tissue fraction lives in the work folder."""
    height = "" if rows is None else f"_rows{rows}"
    return workdir / str(size) / "slides" / f"slide{size}{height}_tissue{tissue:g}.tif"


def steal_seconds() -> float | None:
    """CPU time the hypervisor gave other guests so far (``steal`` of ``/proc/stat``, all cores), or None off Linux.

    On a shared virtual machine it tells a busy host (everything slower for a while, which the
    network timed alone before and after the run does not see) from a slow pipeline.
    """
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run_one(
    size: int,
    network: str,
    tissue: float,
    sw_batch_size: int,
    workdir: Path,
    rows: int | None = None,
    prefetch_slabs: int | None = None,
) -> dict:
    """Segment and time one slide (made by :func:`make_slide`) in this process; returns the figures."""
    import torch
    from monai.networks.nets import UNet

    from monai_uda.inference import SlideSegmenter

    widths, roi = NETWORKS[network]
    slide = slide_path(workdir, size, tissue, rows)
    torch.manual_seed(0)
    net = UNet(2, 3, 1, widths, [2] * (len(widths) - 1), num_res_units=1).eval()
    seg = SlideSegmenter(
        net, str(slide.parent), str(workdir / str(size) / "out"), channels=3, roi_size=(roi, roi),
        sw_batch_size=sw_batch_size, prefetch_slabs=prefetch_slabs,
    )
    x = torch.rand(sw_batch_size, 3, roi, roi)

    def seconds_per_batch(sample: int = 12) -> float:  # ~8 s of the default U-Net
        with torch.no_grad():
            net(x)  # warm-up, as the first window of the streaming run
            start = time.perf_counter()
            for _ in range(sample):
                net(x)
        return (time.perf_counter() - start) / sample

    # the network alone is timed before and after the run and the two averaged: the speed of a shared
    # machine drifts over an hour-long slide
    before = seconds_per_batch()
    steal_before = steal_seconds()
    record = seg.segment_file(slide)
    steal_after = steal_seconds()
    after = seconds_per_batch()
    windows = record["windows"] - record["windows_skipped"]
    batches = -(-windows // sw_batch_size)
    network_seconds = (before + after) / 2 * batches
    return {
        "size": size, "network": network, "windows": record["windows"], "windows_skipped": record["windows_skipped"],
        "n_instances": record["n_instances"], "e2e_seconds": record["seconds"],
        "network_in_run_seconds": record["network_seconds"],
        "network_only_seconds": network_seconds, "network_only_before_seconds": before * batches,
        "network_only_after_seconds": after * batches,
        "megapixels_per_s": (rows or size) * size / 1e6 / record["seconds"],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "e2e_over_network": network_seconds / record["seconds"],
        "cpu_steal_s": None if steal_before is None or steal_after is None else steal_after - steal_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16384,32768", help="comma-separated slide sides in pixels")
    parser.add_argument(
        "--network", default="default", choices=sorted(NETWORKS), help="U-Net preset (default: the bundle's)"
    )
    parser.add_argument("--tissue", type=float, default=0.5, help="fraction of the slide covered by tissue")
    parser.add_argument("--sw_batch_size", type=int, default=4)
    parser.add_argument("--workdir", default=None, help="folder for slides and outputs (default: a temporary one)")
    parser.add_argument(
        "--rows", type=int, default=None,
        help="slide height (default: square); e.g. --rows 1536 --tissue 1 "
        "gives a strip as wide as the slide, for its memory in minutes",
    )
    parser.add_argument(
        "--prefetch_slabs", type=int, default=None,
        help="SlideSegmenter's prefetch_slabs (0: no worker thread; default: its own, 0 on CPU)",
    )
    parser.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_inference_"))
    if args.single is not None:
        figures = run_one(
            args.single, args.network, args.tissue, args.sw_batch_size, workdir, args.rows, args.prefetch_slabs
        )
        print(json.dumps(figures))
        return
    for size in (int(s) for s in args.sizes.split(",")):
        slide = slide_path(workdir, size, args.tissue, args.rows)
        if not slide.is_file():  # same generator and seed: a slide left by an earlier run is the same slide
            start = time.perf_counter()
            make_slide(slide, size, args.tissue, rows=args.rows)
            print(f"size={size} generated {slide} in {time.perf_counter() - start:.0f} s", flush=True)
        cmd = [sys.executable, __file__, "--single", str(size), "--network", args.network, "--tissue", str(args.tissue),
               "--sw_batch_size", str(args.sw_batch_size), "--workdir", str(workdir)]
        cmd += ["--rows", str(args.rows)] if args.rows else []
        cmd += ["--prefetch_slabs", str(args.prefetch_slabs)] if args.prefetch_slabs is not None else []
        # stderr (progress, errors) passes through
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        if proc.returncode:
            sys.exit(f"size {size} failed (exit code {proc.returncode}, its error is above)")
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"size={size} network={figures['network']} windows={figures['windows']} "
            f"skipped={figures['windows_skipped']} "
            f"nuclei={figures['n_instances']} e2e_s={figures['e2e_seconds']:.1f} "
            f"network_only_s={figures['network_only_seconds']:.1f} "
            f"(before {figures['network_only_before_seconds']:.1f}, after {figures['network_only_after_seconds']:.1f}) "
            f"network_in_run_s={figures['network_in_run_seconds']:.1f} "
            f"cpu_steal_s={'n/a' if figures['cpu_steal_s'] is None else format(figures['cpu_steal_s'], '.1f')}"
        )
        print(
            f"size={size} megapixels_per_s={figures['megapixels_per_s']:.4f} "
            f"peak_rss_gib={figures['peak_rss_gib']:.3f} e2e_over_network={figures['e2e_over_network']:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
