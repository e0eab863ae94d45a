"""Timing presets: a ready method and one batch per bundle, at the paper's configuration and a CPU one.

``scripts/bench_train_step.py`` times ``method.step(engine, batch)`` on them and
``scripts/bench_memory.py`` measures their peak memory; the bundles' ``train_cpu.yaml`` files
follow the ``cpu`` presets (tests check that they agree). Batches are synthetic (random images,
disc-shaped nuclei), so a preset needs no data set. The methods never import this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["BENCHMARK_PRESETS", "build_for_benchmark"]

#: per bundle and preset: image size, batch size and the method's or detector's settings
BENCHMARK_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # AD-GAN: the paper's "mini-batch of 16" is the official code's ``batch_size=8`` of (image, mask)
    # pairs (8 masks + 8 images, 256x256, 1 channel, the paper's widths); cpu: 2 + 2, 128x128 crops,
    # half widths, 2 residual blocks
    "ad_gan": {
        "paper": {"size": 256, "batch_size": 8, "method": {}},
        "cpu": {
            "size": 128,
            "batch_size": 2,
            "method": {
                "channels": (32, 64, 128),
                "disc_channels": (32, 64, 128, 256),
                "num_res_blocks": 2,
                "mlp_channels": 128,
            },
        },
    },
    # CyC-PDAM's PDAM stage: one source and one target image
    "cyc_pdam": {
        "paper": {
            "size": 256,
            "detector": {
                "backbone": "resnet101",
                "norm": "group",
                "min_size": 256,
                "max_size": 256,
                "instance_proposals": 64,
            },
        },
        "cpu": {
            "size": 128,
            "detector": {
                "backbone": "resnet50",
                "norm": "group",
                "min_size": 128,
                "max_size": 128,
                "instance_proposals": 16,
                "rpn_pre_nms_top_n_train": 500,
                "rpn_post_nms_top_n_train": 200,
                "rpn_pre_nms_top_n_test": 200,
                "rpn_post_nms_top_n_test": 50,
                "box_batch_size_per_image": 64,
            },
        },
    },
    # DARCNN's stage 1
    "darcnn": {
        "paper": {
            "size": 512,
            "batch_size": 1,
            "detector": {"min_size": 512, "max_size": 512, "box_detections_per_img": 100},
        },
        "cpu": {
            "size": 256,
            "batch_size": 1,
            "detector": {
                "min_size": 256,
                "max_size": 256,
                "box_detections_per_img": 50,
                "rpn_pre_nms_top_n_train": 1000,
                "rpn_post_nms_top_n_train": 500,
                "box_batch_size_per_image": 128,
            },
        },
    },
}


def _disc_labels(batch_size: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``(B, 1, size, size)`` instance maps of non-overlapping random discs on a grid."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(batch_size, 1, size, size, dtype=torch.int64)
    cell = max(size // 4, 8)
    for b in range(batch_size):
        ids = 0
        for cy in range(cell // 2, size, cell):
            for cx in range(cell // 2, size, cell):
                radius = int(torch.randint(cell // 6 + 1, cell // 3 + 1, (1,), generator=generator))
                ids += 1
                labels[b, 0][(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = ids
    return labels


def _cellseg_uda(preset: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """CellSegUDA from its bundle's configs (``paper``: ``train.yaml``; ``cpu``: + ``train_cpu.yaml``), random batch."""
    from monai.bundle import ConfigParser

    from monai_uda.bundle_runner import bundles_dir

    configs = bundles_dir() / "cellseg_uda" / "configs"
    files = [str(configs / "train.yaml")] + ([str(configs / "train_cpu.yaml")] if preset == "cpu" else [])
    parser = ConfigParser()
    parser.read_config(files)
    parser["device"] = "cpu"
    method = parser.get_parsed_content("method")
    b, c = parser["batch_size"], parser["channels"]
    sp, tp = parser["source_patch"], parser["target_patch"]
    batch = {
        "source_image": torch.rand(b, c, *sp),
        "source_label": (torch.rand(b, 1, *sp) > 0.7).int(),
        "target_image": torch.rand(b, c, *tp),
    }
    return method, batch


def _ad_gan(cfg: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
    """AD-GAN and a batch of synthetic masks (source) and random images (target)."""
    from monai_uda.data.synthetic import SyntheticMaskDataset
    from monai_uda.methods.ad_gan import ADGAN

    method, size, half_batch = ADGAN(**cfg["method"]), cfg["size"], cfg["batch_size"]
    masks = SyntheticMaskDataset((size, size), length=half_batch, preset="hela")
    generator = torch.Generator().manual_seed(0)
    batch = {
        "source_image": torch.stack([masks[i]["image"] for i in range(half_batch)]),
        "target_image": torch.rand(half_batch, 1, size, size, generator=generator) * 2 - 1,
    }
    return method, batch


def _cyc_pdam(cfg: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
    """CyC-PDAM's PDAM stage and one source and one target image of discs."""
    from monai_uda.methods.cyc_pdam import PDAMStage
    from monai_uda.networks.pdam import PDAMDetector

    generator = torch.Generator().manual_seed(0)
    label = _disc_labels(1, cfg["size"], generator)
    source = (label > 0).float().expand(-1, 3, -1, -1) * 0.6 + 0.2
    target = (1.0 - source * torch.rand(source.shape, generator=generator)).contiguous()
    method = PDAMStage(PDAMDetector(**cfg["detector"]), warmup_iterations=0)
    return method, {"source_image": source.contiguous(), "source_label": label, "target_image": target}


def _darcnn(cfg: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
    """DARCNN's stage 1 and a batch of disc images (source) and their noisy inverse (target)."""
    from monai_uda.methods.darcnn import DARCNNStage1
    from monai_uda.networks.domain_separation import DomainSeparationMaskRCNN

    generator = torch.Generator().manual_seed(0)
    label = _disc_labels(cfg["batch_size"], cfg["size"], generator)
    source = (label > 0).float().expand(-1, 3, -1, -1) * 0.8 + 0.1
    target = 1.0 - source * torch.rand(source.shape, generator=generator)
    method = DARCNNStage1(DomainSeparationMaskRCNN(**cfg["detector"]))
    return method, {"source_image": source.contiguous(), "source_label": label, "target_image": target}


_BUILDERS: dict[str, Callable[[dict[str, Any]], tuple[Any, dict[str, torch.Tensor]]]] = {
    "ad_gan": _ad_gan,
    "cyc_pdam": _cyc_pdam,
    "darcnn": _darcnn,
}


def build_for_benchmark(bundle: str, preset: str = "cpu") -> tuple[Any, dict[str, torch.Tensor]]:
    """A ready method of ``bundle`` and one batch for timing ``method.step(engine, batch)``.

    Args:
        bundle: ``cellseg_uda``, ``ad_gan``, ``cyc_pdam`` or ``darcnn``.
        preset: ``"paper"`` (the paper's configuration) or ``"cpu"`` (:data:`BENCHMARK_PRESETS`;
            CellSegUDA: its bundle's ``train_cpu.yaml``).

    Raises:
        ValueError: unknown bundle or preset.
    """
    presets = {"paper": None, "cpu": None} if bundle == "cellseg_uda" else BENCHMARK_PRESETS.get(bundle)
    if presets is None:
        raise ValueError(f"unknown bundle {bundle!r}; choose one of {sorted(['cellseg_uda', *BENCHMARK_PRESETS])}")
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(presets)}")
    if bundle == "cellseg_uda":
        return _cellseg_uda(preset)
    return _BUILDERS[bundle](presets[preset])
