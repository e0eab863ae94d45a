"""``monai-uda demo``: the main job on the built-in sample, end to end, sized for a CPU.

1. writes the built-in 2D sample dataset (real DSB2018 fluorescence + H&E images when the
   ``[samples]`` extra is installed, else phantoms; which one is printed),
2. trains CellSegUDA (``bundles/cellseg_uda``, ``train_demo.yaml`` preset) from the fluorescence source to the
   H&E-like target with a progress bar,
3. segments the labelled target test images (masks, instance maps, overlays),
4. scores them (AJI, AJI+, PQ, Dice, ...) into ``metrics.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from monai_uda.bundle_runner import run_config
from monai_uda.data.datalist import export_split
from monai_uda.data.samples import make_sample_dataset, samples_origin
from monai_uda.metrics.evaluate import evaluate_dirs

__all__ = ["run_demo", "DEMO_ITERATIONS"]

#: iterations of the demo's training run (``train_demo.yaml`` preset)
DEMO_ITERATIONS = 150


def run_demo(
    output_dir: str | Path = "monai_uda_demo", max_iterations: int | None = None, device: str | None = None
) -> Path:
    """Run the demo; returns the path of the metrics JSON."""
    start = time.perf_counter()
    out = Path(output_dir).resolve()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    datalist = make_sample_dataset(out / "sample_data", spatial_dims=2)
    print(f"[demo] sample data: {samples_origin()} images -> {datalist}", flush=True)
    test_images, test_labels = export_split(datalist, "test", out / "test")
    common = {"budget_preset": "demo", "device": device, "output_dir": str(out / "train")}
    print(f"[demo] training CellSegUDA for {max_iterations or DEMO_ITERATIONS} iterations on {device}", flush=True)
    run_config(
        "cellseg_uda",
        "training",
        dataset_dir=str(Path(datalist).parent),
        max_iterations=int(max_iterations or DEMO_ITERATIONS),
        ckpt_interval=max(int(max_iterations or DEMO_ITERATIONS) // 2, 1),
        **common,
        overwrite=True,  # the demo's own folder: a second demo replaces the first
    )
    print("[demo] segmenting the target test images", flush=True)
    run_config(
        "cellseg_uda",
        "inference",
        budget_preset="demo",
        device=device,
        input_dir=str(test_images),
        output_dir=str(out / "predictions"),
        ckpt_path=str(out / "train" / "model.pt"),
    )
    metrics_path = out / "metrics.json"
    evaluate_dirs(out / "predictions", test_labels, metrics_path)
    print(
        f"[demo] done in {time.perf_counter() - start:.0f} s: overlays and masks in {out / 'predictions'}, "
        f"metrics in {metrics_path}",
        flush=True,
    )
    return metrics_path
