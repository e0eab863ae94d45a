"""Every AD-GAN config (train, segment, synthesise, evaluate) runs through ``monai.bundle`` on the tiny sample
(2D and 3D)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import run

from monai_uda.data.datalist import export_split, get_split, load_datalist
from monai_uda.data.io import read_array, read_label

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "ad_gan" / "configs"
META = str(CONFIGS / "metadata.json")
SCHEMA = REPO.parent / "shared" / "monai_schema" / "meta_schema_20240725.json"

TINY_NET = {"gen_widths": [4, 8, 8], "num_res_blocks": 1, "mlp_channels": 8}
TINY_2D = {**TINY_NET, "disc_widths": [4, 8], "patch": [32, 32], "batch_size": 2, "masks_per_epoch": 4,
           "axis_range": [3, 5], "count_range": [2, 5]}
TINY_3D = {**TINY_NET, "disc_widths": [4, 8], "patch": [16, 32, 32], "batch_size": 1, "masks_per_epoch": 2,
           "axis_range": [3, 5], "count_range": [2, 4]}


def _cfg(*names: str) -> list[str]:
    return [str(CONFIGS / n) for n in names]


def test_training_command_line_then_inference_and_evaluate(sample_2d, tmp_path):
    out = tmp_path / "train"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.yaml"),
        "--dataset_dir", str(sample_2d), "--output_dir", str(out), "--max_iterations", "2",
        "--constant_iterations", "1",
    ]
    for key, value in TINY_2D.items():
        cmd += [f"--{key}", json.dumps(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = torch.load(out / "model.pt", weights_only=True)
    assert set(model) == {"generator", "discriminator", "source_diameter", "network_config"}
    assert model["source_diameter"] > 0  # of the synthetic masks the generator learnt to draw
    # the settings that shape the generator, so that inference builds it without being told them
    assert model["network_config"] == {"channels": 1, **TINY_NET, "encoder_adain": True, "ternary": False}

    images, labels = export_split(sample_2d / "datalist.json", "test", tmp_path / "test")
    pred = tmp_path / "pred"
    run(  # no network settings given: those model.pt records
        "inference", config_file=_cfg("inference.yaml"), meta_file=META, input_dir=str(images), output_dir=str(pred),
        ckpt_path=str(out / "model.pt"), patch=[32, 32],
    )
    assert all((pred / f"{p.name.split('.')[0]}_instances.tif").is_file() for p in images.iterdir())
    mask, _ = read_array(next(pred.glob("*_mask.png")))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}

    metrics = tmp_path / "metrics.json"
    run(
        "evaluate", config_file=_cfg("evaluate.yaml"), meta_file=META, pred_dir=str(pred), gt_dir=str(labels),
        out=str(metrics),
    )
    result = json.loads(metrics.read_text())
    assert {"aji", "pq", "object_f1", "dice", "precision", "recall"} <= set(result["mean"])

    # the same tiny checkpoint synthesises a paired set from the test labels (mask -> image), the documented command
    synth = tmp_path / "synth"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
        str(_cfg("inference.yaml", "inference_synthesis.yaml")), "--ckpt_path", str(out / "model.pt"), "--output_dir",
        str(synth), "--mask_dir", str(labels), "--domain_label", "0.7", "--patch", "[32, 32]",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    items = get_split(load_datalist(synth), "source", require_labels=True)
    assert len(items) == len(list(labels.iterdir())) and all(Path(i["image"]).is_file() for i in items)
    for item in items:
        image, label = read_array(item["image"])[0], read_label(item["label"])
        assert image.dtype == np.uint8 and image.shape == label.shape  # grey generator (channels 1)
        assert label.max() > 0


def test_ad_gan_ins_ternary_and_ablation_train_and_infer(sample_2d, tmp_path):
    run(
        "training", config_file=_cfg("train.yaml"), meta_file=META, dataset_dir=str(sample_2d),
        output_dir=str(tmp_path / "t"), max_iterations=1, ternary=True, aligned=False, use_ctr=False, **TINY_2D,
    )
    images, _ = export_split(sample_2d / "datalist.json", "test", tmp_path / "test")
    run(
        "inference", config_file=_cfg("inference.yaml"), meta_file=META, input_dir=str(images),
        output_dir=str(tmp_path / "p"), ckpt_path=str(tmp_path / "t" / "model.pt"), patch=[32, 32], ternary=True,
        **TINY_NET,
    )
    assert list((tmp_path / "p").glob("*_instances.tif"))


def test_3d_train_and_inference(sample_3d, tmp_path):
    run(
        "training", config_file=_cfg("train.yaml", "train_3d.yaml"), meta_file=META, dataset_dir=str(sample_3d),
        output_dir=str(tmp_path / "train"), max_iterations=1, **TINY_3D,
    )
    images, _ = export_split(sample_3d / "datalist.json", "test", tmp_path / "test")
    run(
        "inference", config_file=_cfg("inference.yaml", "train_3d.yaml"), meta_file=META, input_dir=str(images),
        output_dir=str(tmp_path / "pred"), ckpt_path=str(tmp_path / "train" / "model.pt"), patch=[16, 32, 32],
        **TINY_NET,
    )
    outputs = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert any(n.endswith("_instances.nii.gz") for n in outputs) and any(n.endswith("_mask.nii.gz") for n in outputs)

    synth = tmp_path / "synth"
    run(
        "inference", config_file=_cfg("inference.yaml", "train_3d.yaml", "inference_synthesis.yaml"), meta_file=META,
        output_dir=str(synth), ckpt_path=str(tmp_path / "train" / "model.pt"), patch=[16, 32, 32], num_masks=1,
        axis_range=TINY_3D["axis_range"], count_range=TINY_3D["count_range"], **TINY_NET,
    )
    items = get_split(load_datalist(synth), "source", require_labels=True)
    assert [Path(i["image"]).name for i in items] == ["synthetic_0000_image.nii.gz"]
    image, label = read_array(items[0]["image"])[0], read_label(items[0]["label"])
    assert image.dtype == np.float32 and image.shape == label.shape == (16, 32, 32) and label.max() >= 2


def test_metadata_verifies():
    if not SCHEMA.is_file():
        pytest.skip("bundle schema not found beside the checkout")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", META, "--filepath", str(SCHEMA)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0 and "verified with no error" in proc.stdout + proc.stderr


def test_multi_gpu_config_parses_without_ddp_wrapping():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_cfg("train.yaml", "multi_gpu_train.yaml"))
    assert parser["device"].startswith("$") and any("init_distributed" in step for step in parser["initialize"])
    assert parser["trainer"]["method"] == "@method"  # ADGAN averages gradients itself, no DDP wrapper
    assert "$import monai_uda.methods.ad_gan" in parser["imports"]


def test_cpu_preset_matches_the_benchmark_preset():
    from monai.bundle import ConfigParser

    from monai_uda.benchmark.presets import build_for_benchmark

    parser = ConfigParser()
    parser.read_config(_cfg("train.yaml", "train_cpu.yaml"))
    method, batch = build_for_benchmark("ad_gan", "cpu")
    assert (
        parser["patch"] == list(batch["target_image"].shape[2:])
        and parser["batch_size"] == batch["target_image"].shape[0]
    )
    assert parser["gen_widths"][0] == method.generator.encoder.layers[0].conv.out_channels
    assert len(parser["gen_widths"]) == 3 and parser["num_res_blocks"] == 2
