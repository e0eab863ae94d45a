"""The CyC-PDAM configs run through ``monai.bundle`` on the tiny built-in 2D sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run

from monai_uda.data.datalist import export_split, load_datalist
from monai_uda.data.io import read_array, read_label

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "cyc_pdam" / "configs"
SCHEMA = REPO.parent / "shared" / "monai_schema" / "meta_schema_20240725.json"

TINY = {
    "patch": [64, 64],
    "cyclegan_width": 4,
    "cyclegan_blocks": 1,
    "cyclegan_disc_widths": [8, 16],
    "backbone": "resnet50",
    "instance_proposals": 8,
    "detector_kwargs": {"rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50, "box_batch_size_per_image": 32},
}
TINY_INFERENCE = {
    "backbone": "resnet50",
    "patch": [128, 128],
    "tile_overlap": 32,
    "score_threshold": 0.0,
    "detections_per_tile": 5,
    "detector_kwargs": {"rpn_pre_nms_top_n_test": 30, "rpn_post_nms_top_n_test": 10},
}


def _cfg(*names: str) -> list[str]:
    return [str(CONFIGS / n) for n in names]


def test_pipeline_trains_end_to_end_then_inference_and_evaluate(sample_2d, tmp_path):
    """CycleGAN -> synthesis + inpainting -> PDAM from the command line, then inference and evaluation."""
    out = tmp_path / "train"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.yaml"),
           "--dataset_dir", str(sample_2d), "--output_dir", str(out), "--max_iterations", "1"]
    for key, value in TINY.items():
        cmd += [f"--{key}", json.dumps(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cyclegan = torch.load(out / "cyclegan" / "model.pt", weights_only=True)
    assert set(cyclegan) == {"generator_s2t", "generator_t2s", "discriminator_t", "discriminator_s"}
    synthesized = load_datalist(out / "synthesized")
    source = load_datalist(sample_2d)["source"]
    assert len(synthesized["source"]) == len(source)
    assert np.array_equal(read_label(synthesized["source"][0]["label"]), read_label(source[0]["label"]))
    image, _ = read_array(synthesized["source"][0]["image"])
    assert image.dtype == np.uint8 and image.shape[-1] == 3  # target-style RGB
    pdam = torch.load(out / "pdam" / "model.pt", weights_only=True)
    assert set(pdam) == {"detector"} and any(k.startswith("entropy_discriminator.") for k in pdam["detector"])

    images, labels = export_split(sample_2d / "datalist.json", "test", tmp_path / "test")
    pred = tmp_path / "pred"
    run("inference", config_file=_cfg("inference.yaml"), meta_file=str(CONFIGS / "metadata.json"), input_dir=str(images),
        output_dir=str(pred), ckpt_path=str(out / "pdam" / "model.pt"), **TINY_INFERENCE)
    stems = [p.name.split(".")[0] for p in images.iterdir()]
    assert stems and all((pred / f"{s}_instances.tif").is_file() for s in stems)
    instances, _ = read_array(pred / f"{stems[0]}_instances.tif")
    mask, _ = read_array(pred / f"{stems[0]}_mask.png")
    assert np.array_equal(mask > 0, instances > 0)

    metrics = tmp_path / "metrics.json"
    run("evaluate", config_file=_cfg("evaluate.yaml"), meta_file=str(CONFIGS / "metadata.json"),
        pred_dir=str(pred), gt_dir=str(labels), out=str(metrics))
    result = json.loads(metrics.read_text())["mean"]
    assert {"aji", "aji_plus", "pq", "object_f1", "dice"} <= set(result)
    assert all(0.0 <= result[k] <= 1.0 for k in ("aji", "aji_plus", "pq", "object_f1", "dice"))


@pytest.mark.parametrize("variant", ["wo_sem", "cycada"])
def test_ablation_variants_configure_the_detector(variant):
    parser = ConfigParser()
    parser.read_config(_cfg("train.yaml"))
    parser.update({"variant": variant, **TINY})
    method = parser.get_parsed_content("pdam")
    assert method.detector.semantic_head is None
    assert method.reweight is (variant != "cycada")


def test_metadata_verifies():
    if not SCHEMA.is_file():
        pytest.skip("bundle schema not found beside the checkout")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"),
                           "--filepath", str(SCHEMA)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "verified with no error" in proc.stdout + proc.stderr
