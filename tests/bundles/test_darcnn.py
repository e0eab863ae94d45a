"""Every DARCNN config runs through ``monai.bundle`` on the tiny built-in samples.

The detector is a real ResNet-50-FPN domain separation Mask R-CNN, made cheap by 64x64
patches, frozen ResNet stages, few proposals and two iterations per stage.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run, verify_metadata

from monai_uda.data.datalist import export_split
from monai_uda.data.io import read_array
from monai_uda.shipping import ship_weights

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "darcnn" / "configs"
SCHEMA = REPO.parent / "shared" / "monai_schema" / "meta_schema_20240725.json"

#: network settings shared by training and inference (model.pt records them too)
NETWORK = {
    "patch": [64, 64],
    "detector_kwargs": {"rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 20},
}
TINY_TRAIN = {
    **NETWORK,
    "projection_dim": 16,  # L_sim's projection trains only: inference neither builds nor loads it
    "mmd_grid": 4,
    # the narrow detector; inference rebuilds it from model.pt's record (it is not among the inference overrides)
    "detector_widths": "small",
    "trainable_layers": 0,
    "detections_per_image": 10,
    "detector_kwargs": {
        **NETWORK["detector_kwargs"],
        "rpn_pre_nms_top_n_train": 100,
        "rpn_post_nms_top_n_train": 20,
        "box_batch_size_per_image": 16,
    },
}
TINY_INFERENCE = {**NETWORK, "detections_per_tile": 5, "tile_overlap": 16}
SOURCE_BRANCH = ("private_encoders.source.", "heads.source.", "sim_projection.")


def _cfg(*names: str) -> list[str]:
    return [str(CONFIGS / n) for n in names]


@pytest.fixture(scope="module")
def trained(sample_2d, tmp_path_factory) -> Path:
    """The README's training command, verbatim plus tiny overrides: both stages, 2 iterations each."""
    out = tmp_path_factory.mktemp("darcnn") / "train"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.yaml"),
           "--dataset_dir", str(sample_2d), "--output_dir", str(out), "--max_iterations", "2",
           # stage 2 validates once, on the sample's validation strip; the untrained detector's ~0.5 scores
           # stay below the threshold (its many weak masks would only slow the test)
           "--val_interval", "2", "--val_handler#network#score_threshold", "0.99"]
    for key, value in TINY_TRAIN.items():
        cmd += [f"--{key}", json.dumps(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_training_runs_both_stages_on_one_network(trained):
    final = torch.load(trained / "model.pt", weights_only=True)
    stage1 = torch.load(trained / "stage1" / "model.pt", weights_only=True)
    assert set(final) == set(stage1) == {"detector", "network_config"}  # the stage-2 teacher stays out of model.pt
    assert final["network_config"] == stage1["network_config"]
    assert final["network_config"]["projection_dim"] == TINY_TRAIN["projection_dim"]
    assert final["network_config"]["detector_widths"] == "small"
    assert final["detector"]["shared_encoder.fpn.layer_blocks.0.0.weight"].shape[0] == 128  # a 128-channel FPN
    assert not any(".body.layer4." in key for key in final["detector"])  # stage 4 not built
    final, stage1 = final["detector"], stage1["detector"]
    assert set(final) == set(stage1)
    # stage 2 continued from the stage-1 network: the frozen source branch is bit-identical ...
    source_keys = [k for k in final if k.startswith(SOURCE_BRANCH)]
    assert source_keys and all(torch.equal(final[k], stage1[k]) for k in source_keys)
    # ... while the target branch and the shared parts trained on
    for key in (
        "heads.target.box_predictor.cls_score.weight",
        "rpn.head.cls_logits.weight",
        "shared_encoder.fpn.layer_blocks.0.0.weight",
    ):
        assert not torch.equal(final[key], stage1[key]), key
    assert not list(trained.glob("stage*/*checkpoint*.pt"))  # ckpt_interval (500) never reached
    best = torch.load(trained / "model_best.pt", weights_only=True)  # validated: the best detector kept
    assert set(best) == {"detector"} and set(best["detector"]) == set(final)


def test_inference_and_evaluate_2d(trained, sample_2d, tmp_path):
    images, labels = export_split(sample_2d / "datalist.json", "test", tmp_path / "test")
    pred = tmp_path / "pred"
    run(
        "inference", config_file=_cfg("inference.yaml"), meta_file=str(CONFIGS / "metadata.json"),
        input_dir=str(images), output_dir=str(pred), ckpt_path=str(trained / "model.pt"), **TINY_INFERENCE,
    )
    stems = [Path(p.name).stem for p in images.iterdir()]
    for stem in stems:
        assert {f"{stem}_mask.png", f"{stem}_instances.tif", f"{stem}_overlay.png"} <= {p.name for p in pred.iterdir()}
        mask, _ = read_array(pred / f"{stem}_mask.png")
        instances, _ = read_array(pred / f"{stem}_instances.tif")
        image, _ = read_array(images / f"{stem}.png")
        assert mask.shape == instances.shape == image.shape[:2]
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask > 0, instances > 0)

    metrics = tmp_path / "metrics.json"
    run(
        "evaluate", config_file=_cfg("evaluate.yaml"), meta_file=str(CONFIGS / "metadata.json"), pred_dir=str(pred),
        gt_dir=str(labels), out=str(metrics),
    )
    result = json.loads(metrics.read_text())
    assert set(result["mean"]) == {
        "aji", "aji_plus", "pq", "sq", "dq", "object_f1", "dice", "precision", "recall", "iou",
    }
    assert all(0.0 <= v <= 1.0 for v in result["mean"].values())


def test_shipped_target_branch_segments_as_the_training_model(trained, sample_2d, tmp_path):
    """models/model.pt keeps the target branch only; inference from it writes the training model's instances."""
    bundle = tmp_path / "darcnn"
    (bundle / "models").mkdir(parents=True)
    shipped = torch.load(ship_weights("darcnn", trained / "model.pt", bundle_dir=bundle), weights_only=True)
    full = torch.load(trained / "model.pt", weights_only=True)
    assert shipped["network_config"] == full["network_config"]
    dropped = {k for k in full["detector"] if k.startswith(SOURCE_BRANCH)}
    assert dropped and set(shipped["detector"]) == set(full["detector"]) - dropped
    images, _ = export_split(sample_2d / "datalist.json", "test", tmp_path / "test")
    outputs = {}
    for name, ckpt in (("training", trained / "model.pt"), ("shipped", bundle / "models" / "model.pt")):
        run(
            "inference", config_file=_cfg("inference.yaml"), meta_file=str(CONFIGS / "metadata.json"),
            input_dir=str(images), output_dir=str(tmp_path / name), ckpt_path=str(ckpt),
            **{**TINY_INFERENCE, "score_threshold": 0.0},  # the 2-iteration detector's weak detections count
        )
        outputs[name] = {p.name: read_array(p)[0] for p in sorted((tmp_path / name).glob("*_instances.tif"))}
    assert outputs["training"] and outputs["training"].keys() == outputs["shipped"].keys()
    assert any(instances.max() > 0 for instances in outputs["training"].values())
    for name, instances in outputs["training"].items():
        np.testing.assert_array_equal(outputs["shipped"][name], instances)


def test_inference_3d_volume_slice_wise(trained, sample_3d, tmp_path):
    """A 3D volume through the slice-wise detector (grey volume repeated to the model's 3 channels)."""
    images, _ = export_split(sample_3d / "datalist.json", "test", tmp_path / "test")
    pred = tmp_path / "pred"
    run(
        "inference", config_file=_cfg("inference.yaml"), meta_file=str(CONFIGS / "metadata.json"),
        input_dir=str(images), output_dir=str(pred), ckpt_path=str(trained / "model.pt"), spatial_dims=3,
        **TINY_INFERENCE,
    )
    volume = next(images.iterdir())
    stem = volume.name.split(".")[0]
    instances, _ = read_array(pred / f"{stem}_instances.nii.gz")
    mask, _ = read_array(pred / f"{stem}_mask.nii.gz")
    source, _ = read_array(volume)
    assert instances.shape == mask.shape == source.shape
    np.testing.assert_array_equal(mask > 0, instances > 0)


def test_3d_training_items_are_2d_slices(sample_3d, tmp_path):
    parser = ConfigParser()
    parser.read_config(_cfg("train.yaml", "train_3d.yaml"))
    parser.update({"dataset_dir": str(sample_3d), "output_dir": str(tmp_path), "patch": [48, 40]})
    dataset = parser.get_parsed_content("train_dataset")
    assert parser.get_parsed_content("spatial_dims") == 3 and parser.get_parsed_content("run_dir") == "./runs/darcnn_3d"
    item = dataset[0]
    assert item["source_image"].shape == item["target_image"].shape == (1, 48, 40)
    assert item["source_label"].shape == (1, 48, 40) and item["source_label"].dtype == torch.int32


def _touch_checkpoint(folder: Path, iteration: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"checkpoint_iteration={iteration}.pt"
    torch.save({"trainer": {"iteration": iteration}}, path)  # a complete archive: latest_checkpoint checks it
    return path


def _resume_parser(output_dir: Path, sample_2d: Path, resume: bool) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(_cfg("train.yaml"))
    parser.update({"output_dir": str(output_dir), "dataset_dir": str(sample_2d), "resume": resume, **TINY_TRAIN})
    if not resume:  # the stages' plan alone: a new run over these checkpoints would be refused by the run folder
        parser.update({"stage1_handlers": [], "stage2_handlers": []})
    return parser


def test_resume_picks_the_stage(sample_2d, tmp_path):
    out = tmp_path / "run"
    stage1_ckpt = _touch_checkpoint(out / "stage1", 4)
    _touch_checkpoint(out / "stage1", 2)
    parser = _resume_parser(out, sample_2d, resume=False)
    assert (
        parser.get_parsed_content("stage1_stage").checkpoint is None
        and parser.get_parsed_content("stage2_stage").checkpoint is None
    )

    parser = _resume_parser(out, sample_2d, resume=True)  # no stage-2 checkpoint yet: continue stage 1
    stage1 = parser.get_parsed_content("stage1_stage")
    assert not stage1.finished and parser.get_parsed_content("stage2_stage").checkpoint is None
    assert stage1.resume_loader().load_path == str(stage1_ckpt)

    stage2_ckpt = _touch_checkpoint(out / "stage2", 3)
    parser = _resume_parser(out, sample_2d, resume=True)  # stage 2 has begun: stage 1 is not run again
    stage1 = parser.get_parsed_content("stage1_stage")
    assert stage1.finished and stage1.checkpoint is None
    assert parser.get_parsed_content("stage2_stage").resume_loader().load_path == str(stage2_ckpt)
    assert parser.get_parsed_content("run_stage1") is None  # not run
    assert not (out / "stage1" / "model.pt").exists()


def test_resume_skips_a_finished_stage1_and_starts_stage2_from_its_model(sample_2d, tmp_path):
    out = tmp_path / "run"
    _touch_checkpoint(out / "stage1", 2)
    parser = _resume_parser(out, sample_2d, resume=True)
    network = parser.get_parsed_content("network_def")
    finished = {k: torch.full_like(v, 0.25) if v.is_floating_point() else v for k, v in network.state_dict().items()}
    torch.save({"detector": finished}, out / "stage1" / "model.pt")  # stage 1 ended: its final model exists

    parser = _resume_parser(out, sample_2d, resume=True)
    stage1 = parser.get_parsed_content("stage1_stage")
    assert stage1.finished and stage1.checkpoint is None
    assert parser.get_parsed_content("run_stage1") is None  # not run; its model is loaded for stage 2
    loaded = parser.get_parsed_content("network_def")
    assert stage1.weights["detector"] is loaded
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in finished.items())
    # a fresh run retrains
    assert not _resume_parser(out, sample_2d, resume=False).get_parsed_content("stage1_stage").finished


def test_multi_gpu_config_parses_and_metadata_verifies():
    parser = ConfigParser()
    parser.read_config(_cfg("train.yaml", "multi_gpu_train.yaml"))
    assert parser["device"].startswith("$") and parser["training"] == "@run"
    assert parser["stage1_outputs"]["main_process"] == parser["stage2_outputs"]["main_process"] == "@is_main"
    if not SCHEMA.is_file():
        pytest.skip("bundle schema not found beside the checkout")
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))  # raises on any schema error


def test_stage2_selects_without_labels_on_one_tile_per_target_image(sample_2d, tmp_path):
    """Without a validation list stage 2 scores the detector on target crops; with one (the sample's) it validates."""
    from monai_uda.data.datalist import load_datalist, write_datalist

    unlabelled = write_datalist(tmp_path / "data", {k: v for k, v in load_datalist(sample_2d).items()
                                                    if k != "validation"})
    handlers = {}
    for name, data in (("unlabelled", unlabelled), ("validated", sample_2d)):
        parser = ConfigParser()
        parser.read_config(_cfg("train.yaml", "train_cpu.yaml"))
        parser.update({"dataset_dir": str(data), "output_dir": str(tmp_path / name), "device": "cpu",
                       "backbone": "resnet18", **NETWORK})
        handlers[name] = parser.get_parsed_content("selection_handler")
        assert parser.get_parsed_content("stage2_handlers")[-1] is handlers[name]
    selection = handlers["unlabelled"]
    targets = load_datalist(sample_2d)["target"]
    assert selection.enabled and len(selection.items) == min(4, len(targets)) and selection.crop == [64, 64]
    assert selection.saver.path == tmp_path / "unlabelled" / "model_best.pt"  # beside model.pt, its layout
    assert set(selection.saver.networks) == {"detector"} and selection.kind == "binary"
    assert not handlers["validated"].enabled
