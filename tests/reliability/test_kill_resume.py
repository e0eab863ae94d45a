"""Kill -9 a real training command part-way, resume with ``--resume true``: same weights as an uninterrupted run.

The killed run is the bundle command a user types (``python -m monai.bundle run training ...``) in its own
process, slowed down by ``tests/reliability/configs/faults.yaml`` (``--iteration_delay``) so that it is
reliably still running when the test has seen its first checkpoints. The minutes-long version with
several kills at random moments is ``scripts/kill_resume_check.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from monai_uda.engines import latest_checkpoint

MAX_ITERATIONS = 6


def _iterations(folder: Path) -> list[int]:
    return sorted(int(p.stem.split("=")[-1]) for p in folder.glob("checkpoint_iteration=*.pt"))


def _kill_after_checkpoint(command: list[str], out: Path, log: Path, iteration: int, timeout: float = 240.0) -> int:
    """Start ``command``, SIGKILL it once ``checkpoint_iteration=<iteration>.pt`` exists; returns the exit code."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
        "MKL_NUM_THREADS": str(torch.get_num_threads()),
    }
    with open(log, "w") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout
            while not (out / f"checkpoint_iteration={iteration}.pt").exists():
                assert proc.poll() is None, f"training ended before it could be killed:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no checkpoint written in time"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=60)
    return proc.returncode


def test_kill9_then_resume_gives_the_uninterrupted_weights(dataset: Path, tmp_path: Path, kit):
    killed, full = tmp_path / "killed", tmp_path / "full"
    overrides = kit.tiny_args(max_iterations=MAX_ITERATIONS, ckpt_interval=1)
    command = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", json.dumps([str(kit.CONFIGS / "train.yaml"), str(kit.FAULTS)]),
        "--meta_file", str(kit.CONFIGS / "metadata.json"), "--dataset_dir", str(dataset), "--output_dir", str(killed),
        "--iteration_delay", "0.3", *overrides,
    ]
    assert _kill_after_checkpoint(command, killed, tmp_path / "killed.log", iteration=2) == -signal.SIGKILL

    # what the kill left: complete checkpoints only, no final model
    assert not (killed / "model.pt").exists()
    done = _iterations(killed)
    assert done and max(done) < MAX_ITERATIONS
    for it in done:
        assert torch.load(killed / f"checkpoint_iteration={it}.pt", weights_only=True)["trainer"]["iteration"] == it
    assert not list(killed.glob(".tmp-*"))
    assert latest_checkpoint(killed) == str(killed / f"checkpoint_iteration={max(done)}.pt")

    # a damaged newest checkpoint (e.g. an interrupted copy) is reported in one line, not resumed from
    planted = killed / f"checkpoint_iteration={max(done) + 1}.pt"
    planted.write_bytes((killed / f"checkpoint_iteration={max(done)}.pt").read_bytes()[:5000])
    code, stderr = kit.run("train", "--dataset_dir", dataset, "--output_dir", killed, *overrides, "--resume", "true")
    line = kit.error_line(stderr)
    assert code == 2 and f"{planted.name}: checkpoint is truncated or corrupt" in line, line
    assert line.endswith(f"; delete it to resume from checkpoint_iteration={max(done)}.pt")
    planted.unlink()

    code, stderr = kit.run("train", "--dataset_dir", dataset, "--output_dir", killed, *overrides, "--resume", "true")
    assert code == 0, stderr[-3000:]
    code, stderr = kit.run("train", "--dataset_dir", dataset, "--output_dir", full, *overrides)
    assert code == 0, stderr[-3000:]

    resumed_model, full_model = (torch.load(d / "model.pt", weights_only=True) for d in (killed, full))
    networks = {"segmenter", "reconstructor", "discriminator"}
    assert resumed_model.keys() == full_model.keys() == networks | {"source_diameter", "network_config"}
    assert resumed_model["source_diameter"] == full_model["source_diameter"] > 0
    for net in networks:
        for key, value in full_model[net].items():
            assert torch.equal(resumed_model[net][key], value), f"{net}.{key}"
    resumed_ckpt, full_ckpt = (torch.load(latest_checkpoint(d), weights_only=True) for d in (killed, full))
    assert resumed_ckpt["trainer"]["iteration"] == full_ckpt["trainer"]["iteration"] == MAX_ITERATIONS
    assert torch.equal(resumed_ckpt["rng"]["cpu"], full_ckpt["rng"]["cpu"])  # a later resume continues identically too
    for name in ("optimizer_segmenter", "optimizer_discriminator", "optimizer_reconstructor"):
        for param, state in full_ckpt[name]["state"].items():
            assert torch.equal(resumed_ckpt[name]["state"][param]["exp_avg"], state["exp_avg"]), name
    assert not list(killed.glob(".tmp-*")) and not list(full.glob(".tmp-*"))
