"""Every CellSegUDA config runs through ``monai.bundle`` on the tiny built-in sample (2D and 3D)."""

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
from monai_uda.data.io import read_array
from monai_uda.errors import UDAInputError, user_error

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "cellseg_uda" / "configs"
SCHEMA = REPO.parent / "shared" / "monai_schema" / "meta_schema_20240725.json"

TINY_2D = {
    "widths": [4, 8, 16], "disc_widths": [4, 4, 4, 4], "source_patch": [64, 64], "target_patch": [64, 64],
    "batch_size": 2,
}
TINY_3D = {
    "widths": [4, 8], "disc_widths": [4, 4, 4, 4], "source_patch": [32, 32, 32], "target_patch": [32, 32, 32],
    "batch_size": 1,
}


def _cfg(*names: str) -> list[str]:
    return [str(CONFIGS / n) for n in names]


def test_training_command_line_then_inference_and_evaluate(sample_2d, tmp_path):
    """The README's command, verbatim, then the inference and evaluate configs on its model."""
    out = tmp_path / "train"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.yaml"),
        "--dataset_dir", str(sample_2d), "--output_dir", str(out), "--max_iterations", "2",
    ]
    for key, value in TINY_2D.items():
        cmd += [f"--{key}", json.dumps(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = torch.load(out / "model.pt", weights_only=True)
    assert set(model) == {"segmenter", "reconstructor", "discriminator", "source_diameter", "network_config"}
    assert model["source_diameter"] > 0  # the source labels' typical nucleus diameter, inference's reference
    # the settings that shape the segmenter, so that inference builds it without being told them
    assert model["network_config"] == {"channels": 3, "widths": TINY_2D["widths"], "num_res_units": 1}

    images, labels = export_split(sample_2d / "datalist.json", "test", tmp_path / "test")
    pred = tmp_path / "pred"
    run(
        "inference", config_file=_cfg("inference.yaml"), meta_file=str(CONFIGS / "metadata.json"),
        input_dir=str(images), output_dir=str(pred), ckpt_path=str(out / "model.pt"), target_patch=[64, 64],
    )
    stems = [p.name for p in images.iterdir()]
    assert stems and all((pred / f"{Path(s).stem}_instances.tif").is_file() for s in stems)
    mask, _ = read_array(next(pred.glob("*_mask.png")))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}

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


@pytest.mark.parametrize("mode", ["source_only", "no_recons", "target_only"])  # ssda: test_ssda_on_a_partly_...
def test_paper_table_rows_train(sample_2d, tmp_path, mode):
    # the upper bound needs labelled target images: use the labelled target-like test items
    datalist = json.loads((sample_2d / "datalist.json").read_text())
    datalist["target"] = datalist["test"] * 2
    (sample_2d / "datalist_labelled_target.json").write_text(json.dumps(datalist))
    run(
        "training", config_file=_cfg("train.yaml"), meta_file=str(CONFIGS / "metadata.json"),
        dataset_dir=str(sample_2d / "datalist_labelled_target.json"), output_dir=str(tmp_path), max_iterations=1,
        mode=mode, **TINY_2D,
    )
    model = torch.load(tmp_path / "model.pt", weights_only=True)
    expected = {
        "source_only": {"segmenter"}, "target_only": {"segmenter"}, "no_recons": {"segmenter", "discriminator"},
    }[mode]
    assert set(model) - {"source_diameter", "network_config"} == expected


def _parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser.update(overrides)
    return parser


@pytest.mark.parametrize("batch_size, fraction", [(2, None), (4, 0.25)])
def test_ssda_on_a_partly_labelled_target_split(sample_2d, tmp_path, batch_size, fraction):
    """3 of 8 target items carry a label: SSDA trains on them (fraction null) or on round(0.25 * 8) = 2 of them."""
    data = {key: list(items) for key, items in load_datalist(sample_2d).items()}
    crops = data["target"][1:]  # the three H&E crops, not the whole tile (quicker to load)
    data["target"] = data["test"] * 3 + crops + crops[:2]  # 3 labelled, 5 unlabelled
    data["validation"] = []
    datalist = tmp_path / "partly_labelled.json"
    datalist.write_text(json.dumps(data))
    tiny = {**TINY_2D, "source_patch": [32, 32], "target_patch": [32, 32], "batch_size": batch_size}
    overrides = {} if fraction is None else {"target_label_fraction": fraction}
    parser = _parser(
        dataset_dir=str(datalist), output_dir=str(tmp_path / "out"), max_iterations=2, mode="ssda",
        memory_check=False, **tiny, **overrides,
    )
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")
    flags = parser.get_parsed_content("train_dataset").target_labelled
    assert flags[3:] == [False] * 5 and sum(flags) == (3 if fraction is None else 2)
    trainer = parser.get_parsed_content("trainer")
    assert trainer.state.iteration == 2 and 0.0 <= trainer.state.output["seg_target"] <= 1.0
    model = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert set(model) == {"segmenter", "reconstructor", "discriminator", "source_diameter", "network_config"}


def test_ssda_without_any_labelled_target_item_is_refused(sample_2d, tmp_path):
    parser = _parser(dataset_dir=str(sample_2d), output_dir=str(tmp_path), mode="ssda")
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps it; the CLI prints the UDAInputError's line
        parser.get_parsed_content("train_dataset")
    error = user_error(raised.value)
    assert isinstance(error, UDAInputError)
    assert error.reason == (
        "domain 'target': none of its 4 items has a 'label'; semi-supervised training (mode ssda) needs at least "
        "one labelled item"
    )
    assert error.path == str(sample_2d / "datalist.json")


def test_augmentation_is_off_by_default_and_on_with_the_override():
    """The paper trains without augmentation; --augment true adds flips and 90-degree rotations."""
    def steps(**overrides) -> set[str]:
        parser = _parser(**overrides)
        return {
            type(t).__name__
            for key in ("source_transform", "target_transform")
            for t in parser.get_parsed_content(f"train_dataset#{key}").transforms
        }

    assert not steps() & {"RandFlipd", "RandRotate90d"}
    assert {"RandFlipd", "RandRotate90d"} <= steps(augment="true")  # the word, as a command line gives it


def test_resume_override_continues_from_newest_checkpoint(sample_2d, tmp_path):
    common = dict(
        config_file=_cfg("train.yaml"), meta_file=str(CONFIGS / "metadata.json"), dataset_dir=str(sample_2d),
        output_dir=str(tmp_path), ckpt_interval=1, **TINY_2D,
    )
    run("training", max_iterations=2, **common)
    assert sorted(p.name for p in tmp_path.glob("*checkpoint*.pt"))  # periodic checkpoints written
    run("training", max_iterations=3, resume=True, **common)
    ckpt = torch.load(max(tmp_path.glob("*checkpoint*.pt"), key=lambda p: p.stat().st_mtime), weights_only=True)
    assert ckpt["trainer"]["iteration"] == 3
    # the word "false", as fire hands it over from `python -m monai.bundle run ... --resume false`,
    # starts afresh (a resumed run would already be past max_iterations=1 and stay at 3); over another run's
    # checkpoints only with --overwrite true, which deletes them
    run("training", max_iterations=1, resume="false", overwrite="true", **common)
    assert sorted(p.name for p in tmp_path.glob("*checkpoint*.pt")) == ["checkpoint_iteration=1.pt"]
    ckpt = torch.load(max(tmp_path.glob("*checkpoint*.pt"), key=lambda p: p.stat().st_mtime), weights_only=True)
    assert ckpt["trainer"]["iteration"] == 1


def test_3d_train_and_inference_keep_spacing(sample_3d, tmp_path):
    run(
        "training", config_file=_cfg("train.yaml", "train_3d.yaml"), meta_file=str(CONFIGS / "metadata.json"),
        dataset_dir=str(sample_3d), output_dir=str(tmp_path / "train"), max_iterations=1, **TINY_3D,
    )
    images, _ = export_split(sample_3d / "datalist.json", "test", tmp_path / "test")
    run(
        "inference", config_file=_cfg("inference.yaml", "train_3d.yaml"), meta_file=str(CONFIGS / "metadata.json"),
        input_dir=str(images), output_dir=str(tmp_path / "pred"), ckpt_path=str(tmp_path / "train" / "model.pt"),
        widths=TINY_3D["widths"], target_patch=[32, 32, 32],
    )
    outputs = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert any(n.endswith("_instances.nii.gz") for n in outputs) and any(n.endswith("_mask.nii.gz") for n in outputs)


def test_multi_gpu_config_parses_and_metadata_verifies():
    parser = ConfigParser()
    parser.read_config(_cfg("train.yaml", "multi_gpu_train.yaml"))
    assert parser["device"].startswith("$") and "run" in parser.config and "training" in parser.config
    if not SCHEMA.is_file():
        pytest.skip("bundle schema not found beside the checkout")
    proc = subprocess.run(
        [
            sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"),
            "--filepath", str(SCHEMA),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "verified with no error" in proc.stdout + proc.stderr
