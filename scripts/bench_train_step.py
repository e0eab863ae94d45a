"""Seconds per training iteration of a bundle's method, at the paper's configuration and a CPU preset.

    python scripts/bench_train_step.py --bundle cellseg_uda [--presets paper,cpu] [--iterations 3] [--threads 2]

The method and batch come from :func:`monai_uda.benchmark.presets.build_for_benchmark` (for
``cellseg_uda`` the bundle's own config files, ``train.yaml`` and ``train_cpu.yaml`` for the
``cpu`` preset, with random batches of the configured patch sizes). The first iteration
(allocations, lazy init) is a warm-up and is not timed. Prints one line per preset:
``bundle=<name> preset=<p> seconds_per_iteration=<f> batch=<b> source_patch=<...> target_patch=<...>``.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace
from typing import Any

import torch

from monai_uda.benchmark.presets import build_for_benchmark


def time_steps(method: Any, batch: dict[str, torch.Tensor], iterations: int) -> float:
    """Mean wall-clock seconds of ``method.step`` over ``iterations`` after one warm-up step."""
    engine = SimpleNamespace(state=SimpleNamespace(iteration=1, max_iterations=iterations + 1, epoch=1))
    method.train()
    method.step(engine, batch)
    start = time.perf_counter()
    for i in range(iterations):
        engine.state.iteration = i + 2
        method.step(engine, batch)
    return (time.perf_counter() - start) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="cellseg_uda")
    parser.add_argument("--presets", default="paper,cpu")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for preset in args.presets.split(","):
        method, batch = build_for_benchmark(args.bundle, preset)
        seconds = time_steps(method, batch, args.iterations)
        shapes = {k: tuple(v.shape) for k, v in batch.items() if k.endswith("image")}
        print(
            f"bundle={args.bundle} preset={preset} seconds_per_iteration={seconds:.3f} "
            f"batch={next(iter(shapes.values()))[0]} "
            + " ".join(f"{k}={'x'.join(map(str, s[2:]))}" for k, s in shapes.items()),
            flush=True,
        )


if __name__ == "__main__":
    main()
