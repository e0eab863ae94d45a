"""One training per output folder: the lock, no new run over another run's checkpoints, resume checks the record,
checkpoint retention after a resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from monai_uda.engines import AtomicCheckpointSaver
from monai_uda.engines.run_folder import LOCK_NAME, RECORD_NAME, claim_run_folder
from monai_uda.errors import UDAInputError


def _checkpoints(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("checkpoint_*.pt"))


def test_new_run_refuses_old_checkpoints_resume_continues_and_retention_holds(dataset: Path, tmp_path: Path, kit):
    out = tmp_path / "out"
    args = ["train", "--dataset_dir", dataset, "--output_dir", out, *kit.tiny_args(max_iterations=2, ckpt_interval=1)]
    code, stderr = kit.run(*args)
    assert code == 0, stderr[-3000:]
    assert _checkpoints(out) == ["checkpoint_iteration=1.pt", "checkpoint_iteration=2.pt"]
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["bundle"] == "cellseg_uda" and record["config"]["widths"] == [4, 8, 16]
    assert not (out / LOCK_NAME).exists()  # released at the end
    model = (out / "model.pt").read_bytes()

    # a new run does not replace the old run's model
    code, stderr = kit.run(*args)
    line = kit.error_line(stderr)
    assert code == 2 and f"{out}: output folder holds another run's checkpoints (checkpoint_iteration=1.pt" in line, (
        line
    )
    assert "--resume true" in line and "--overwrite true" in line
    assert (out / "model.pt").read_bytes() == model

    # resume with a config that differs in a key defining the run: one line, nothing trained
    code, stderr = kit.run(*args, "--resume", "true", "--widths", "[4,8,8]")
    line = kit.error_line(stderr)
    assert (
        code == 2 and "cannot resume: widths is [4, 8, 8] but the run that wrote this folder used [4, 8, 16]" in line
    ), line
    assert _checkpoints(out) == ["checkpoint_iteration=1.pt", "checkpoint_iteration=2.pt"]

    # two resumes: n_saved = 2 holds (the pre-resume checkpoints are deleted in turn, not kept forever)
    for iterations in (4, 5):
        code, stderr = kit.run(*args, "--resume", "true", "--max_iterations", iterations)
        assert code == 0, stderr[-3000:]
        assert _checkpoints(out) == [
            f"checkpoint_iteration={iterations - 1}.pt",
            f"checkpoint_iteration={iterations}.pt",
        ]
    assert torch.load(out / "checkpoint_iteration=5.pt", weights_only=True)["trainer"]["iteration"] == 5

    # --overwrite true starts afresh: the old checkpoints are gone at once, the old model.pt when the new one is written
    code, stderr = kit.run(*args, "--overwrite", "true", "--seed", "3")
    assert code == 0, stderr[-3000:]
    assert (out / "model.pt").read_bytes() != model
    assert _checkpoints(out) == ["checkpoint_iteration=1.pt", "checkpoint_iteration=2.pt"]
    assert json.loads((out / RECORD_NAME).read_text())["config"]["seed"] == 3


def _lock(folder: Path, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lock = {
        "pid": pid,
        "host": host or socket.gethostname(),
        "started": "2026-01-01 00:00:00",
        "command": "monai-uda train",
        "token": "x",
    }
    (folder / LOCK_NAME).write_text(json.dumps(lock))


def test_folder_of_a_running_training_is_refused_and_a_stale_lock_is_taken_over(tmp_path: Path, dataset: Path, kit):
    out = tmp_path / "out"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _lock(out, other.pid)
        code, stderr = kit.run("train", "--dataset_dir", dataset, "--output_dir", out, *kit.tiny_args(max_iterations=1))
        line = kit.error_line(stderr)
        assert (
            code == 2
            and f"{out}: output folder is in use by another training (pid {other.pid} on {socket.gethostname()}" in line
        )
        assert "monai-uda train" in line and not (out / "model.pt").exists()
        _lock(out, other.pid, host="elsewhere")
        with pytest.raises(UDAInputError, match="on elsewhere"):  # another host: cannot be checked, refused
            claim_run_folder(out, "cellseg_uda", config={})
    finally:
        other.kill()
        other.wait()
    _lock(out, other.pid)  # the process is gone: stale
    folder = claim_run_folder(out, "cellseg_uda", config={"widths": [4]})
    held = json.loads((out / LOCK_NAME).read_text())
    assert held["pid"] == os.getpid() and held["command"]
    folder.release()
    assert not (out / LOCK_NAME).exists()


def test_resume_of_another_bundle_is_refused_and_unrecorded_folder_is_recorded(tmp_path: Path):
    claim_run_folder(tmp_path, "ad_gan", config={"widths": [4]}).release()
    with pytest.raises(UDAInputError, match="cannot resume: the folder holds a ad_gan run, this is darcnn"):
        claim_run_folder(tmp_path, "darcnn", resume="true", config={})
    assert not (tmp_path / LOCK_NAME).exists()  # released after the refusal
    # keys a resume may change, and keys only one side has, are not compared
    claim_run_folder(
        tmp_path, "ad_gan", resume=True, config={"widths": [4], "max_iterations": 9, "device": "cuda", "new": 1}
    ).release()
    fresh = tmp_path / "fresh"
    claim_run_folder(fresh, "ad_gan", resume=True, config={"widths": [8]}).release()
    assert json.loads((fresh / RECORD_NAME).read_text())["config"] == {"widths": [8]}


def test_checkpoint_saver_adopts_checkpoints_on_disk(tmp_path: Path):
    for it in (3, 5, 7, 9):
        (tmp_path / f"checkpoint_iteration={it}.pt").write_bytes(b"x")
    (tmp_path / "model.pt").write_bytes(b"m")
    engine = Engine(lambda e, b: None)
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"a": torch.nn.Linear(1, 1), "b": torch.nn.Linear(1, 1)}, save_interval=1,
        n_saved=2, epoch_level=False,
    )
    saver.attach(engine)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_iteration=7.pt", "checkpoint_iteration=9.pt", "model.pt",
    ]
    engine.run([0], max_epochs=10, epoch_length=1)
    # ignite continues at iteration 1..10 here; the adopted newest (9) outranks them until 10
    assert _checkpoints(tmp_path) == ["checkpoint_iteration=10.pt", "checkpoint_iteration=9.pt"]


def test_two_stage_bundle_keeps_the_lock_until_its_last_stage_completes(tmp_path: Path):
    """``cyc_pdam``/``darcnn``: the first stage lists ``run_folder.hold``, the last ``run_folder``."""
    folder = claim_run_folder(tmp_path, "darcnn", config={})
    stage1, stage2 = Engine(lambda e, b: None), Engine(lambda e, b: None)
    folder.hold.attach(stage1)
    folder.attach(stage2)
    stage1.run([0], max_epochs=1)
    assert (tmp_path / LOCK_NAME).exists()
    stage2.run([0], max_epochs=1)
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("bundle", ["cellseg_uda", "ad_gan", "cyc_pdam", "darcnn"])
def test_every_train_config_claims_its_output_folder(bundle: str):
    """``overwrite: false`` and ``run_folder`` in every train.yaml; the last stage's outputs release ``@run_folder``."""
    import yaml

    config = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "bundles" / bundle / "configs" / "train.yaml").read_text()
    )
    assert config["overwrite"] is False and config["run_folder"]["bundle"] == bundle
    assert config["run_folder"]["_target_"] == "monai_uda.engines.run_folder.claim_run_folder"
    stages = {
        "cellseg_uda": ["train"],
        "ad_gan": ["train"],
        "cyc_pdam": ["cyclegan", "pdam"],
        "darcnn": ["stage1", "stage2"],
    }[bundle]
    for stage in stages:  # the stage's output handlers (engines.training_outputs), listed in its handlers
        assert config[f"{stage}_outputs"]["run_folder"] == "@run_folder"
        assert f"@{stage}_outputs" in config[f"{stage}_handlers"]
    assert config[f"{stages[-1]}_outputs"].get("last_stage", True) is True
    if len(stages) == 2:
        assert config[f"{stages[0]}_outputs"]["last_stage"] is False  # holds the lock until the last stage completes


def test_a_checkpoint_that_does_not_fit_names_the_command_that_trained_it(tmp_path):
    import json

    import pytest
    import torch

    from monai_uda.engines.checkpoint import load_network_weights
    from monai_uda.errors import UDAInputError

    torch.save({"segmenter": torch.nn.Conv2d(3, 16, 3).state_dict()}, tmp_path / "model.pt")
    (tmp_path / "run_config.json").write_text(json.dumps({"command": ["monai-uda", "train", "--preset", "cpu"]}))
    with pytest.raises(
        UDAInputError, match=r"expects \(64, 3, 3, 3\).*it was trained by: train --preset cpu \(see .*run_config.json\)"
    ):
        load_network_weights(torch.nn.Conv2d(3, 64, 3), tmp_path / "model.pt", key="segmenter")
    (tmp_path / "run_config.json").unlink()  # no record: the message stops at the question
    with pytest.raises(UDAInputError, match=r"configuration\?\)$"):
        load_network_weights(torch.nn.Conv2d(3, 64, 3), tmp_path / "model.pt", key="segmenter")
