"""Peak memory of one training step and of one inference batch, per bundle and preset.

    python scripts/bench_memory.py --bundle ad_gan [--presets paper,cpu] [--device cpu]

The method and batch are those ``scripts/bench_train_step.py`` times (``paper``: the paper's
configuration; ``cpu``: the CPU preset). The training step is measured as the trainer's memory
plan measures it (:func:`monai_uda.engines.memory.measure_step`: the real step at the full batch,
peak growth of the resident set on CPU, of allocated memory on CUDA, the method restored after);
the inference batch is the bundle's inference network on one target image of the same size,
without gradients. Prints one line per preset:
``bundle=<name> preset=<p> device=<d> batch=<b> train_step_peak_gib=<f> inference_batch_peak_gib=<f> available_gib=<f>``
A benchmark, not a test: the paper presets take minutes and several GiB.
"""

from __future__ import annotations

import argparse
from functools import partial
from types import SimpleNamespace
from typing import Any

import torch

from monai_uda.benchmark.presets import build_for_benchmark
from monai_uda.engines.memory import GIB, PeakMemory, available_memory, batch_length, measure_step


@torch.no_grad()
def infer_once(method: Any, image: torch.Tensor) -> Any:
    """The bundle's inference network on ``image`` (``(1, C, *spatial)``)."""
    method.eval()
    if hasattr(method, "translator"):  # AD-GAN: image -> mask translation
        return method.translator("mask")(image)
    network = method.inference_network()
    if hasattr(network, "branch_copy"):  # DARCNN: the target branch is the inference detector
        network = network.branch_copy("target").to(image.device)
    network.eval()
    if method.inference_network_name == "detector":
        return network(list(image))
    return network(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="cellseg_uda")
    parser.add_argument("--presets", "--preset", default="paper,cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    for preset in args.presets.split(","):
        method, batch = build_for_benchmark(args.bundle, preset)
        method.to(device)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        engine = SimpleNamespace(state=SimpleNamespace(iteration=1, max_iterations=2, epoch=1))
        with PeakMemory(device) as meter:  # first: the training step leaves its memory cached in the allocator
            infer_once(method, batch["target_image"][:1])
        method.train()
        step = partial(method.step, engine)  # step(micro) runs method.step(engine, micro)
        (train_peak,) = measure_step(step, method, batch, [batch_length(batch)], device)
        print(
            f"bundle={args.bundle} preset={preset} device={device.type} batch={batch_length(batch)} "
            f"train_step_peak_gib={train_peak / GIB:.2f} inference_batch_peak_gib={meter.peak / GIB:.2f} "
            f"available_gib={available_memory(device) / GIB:.1f}",
            flush=True,
        )
        del method, batch, step


if __name__ == "__main__":
    main()
