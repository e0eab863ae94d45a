"""``monai-uda demo``: the main job on the built-in sample, end to end, in a few minutes on a CPU.

1. writes the built-in 2D sample dataset (real DSB2018 fluorescence + H&E images when the
   ``[samples]`` extra is installed, else phantoms; which one is printed),
2. trains CellSegUDA (``bundles/cellseg_uda``, CPU preset) from the fluorescence source to the
   H&E-like target with a progress bar,
3. segments the labelled target test images (masks, instance maps, overlays),
4. scores them (AJI, AJI+, PQ, Dice, ...) into ``metrics.json``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from monai_uda.bundle_runner import run_config
from monai_uda.data.datalist import get_split, load_datalist
from monai_uda.data.io import stem_of
from monai_uda.data.samples import make_sample_dataset, samples_origin
from monai_uda.metrics.evaluate import evaluate_dirs

__all__ = ["run_demo", "DEMO_ITERATIONS"]

#: iterations of the demo's training run (CPU preset); about 2-3 minutes on 2 cores
DEMO_ITERATIONS = 120


def split_test_set(datalist_path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Copy the datalist's labelled ``test`` items to ``out_dir/images`` and ``out_dir/labels`` (same stems)."""
    out_dir = Path(out_dir)
    images, labels = out_dir / "images", out_dir / "labels"
    for folder in (images, labels):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for item in get_split(load_datalist(datalist_path), "test", require_labels=True):
        stem = stem_of(item["image"])
        shutil.copy(item["image"], images / Path(item["image"]).name)
        shutil.copy(item["label"], labels / f"{stem}{Path(item['label']).name[len(stem_of(item['label'])):]}")
    return images, labels


def run_demo(output_dir: str | Path = "monai_uda_demo", max_iterations: int | None = None, device: str | None = None) -> Path:
    """Run the demo; returns the path of the metrics JSON."""
    start = time.perf_counter()
    out = Path(output_dir).resolve()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    datalist = make_sample_dataset(out / "sample_data", spatial_dims=2)
    print(f"[demo] sample data: {samples_origin()} images -> {datalist}", flush=True)
    test_images, test_labels = split_test_set(datalist, out / "test")
    common = {"preset": "cpu", "device": device, "output_dir": str(out / "train")}
    print(f"[demo] training CellSegUDA for {max_iterations or DEMO_ITERATIONS} iterations on {device}", flush=True)
    run_config(
        "cellseg_uda", "training", dataset_dir=str(Path(datalist).parent),
        max_iterations=int(max_iterations or DEMO_ITERATIONS), ckpt_interval=max(int(max_iterations or DEMO_ITERATIONS) // 2, 1), **common,
    )
    print("[demo] segmenting the target test images", flush=True)
    run_config(
        "cellseg_uda", "inference", preset="cpu", device=device, input_dir=str(test_images),
        output_dir=str(out / "predictions"), ckpt_path=str(out / "train" / "model.pt"),
    )
    metrics_path = out / "metrics.json"
    evaluate_dirs(out / "predictions", test_labels, metrics_path)
    print(f"[demo] done in {time.perf_counter() - start:.0f} s: overlays and masks in {out / 'predictions'}, metrics in {metrics_path}", flush=True)
    return metrics_path
