"""Divergence: an injected NaN/inf loss stops ``monai-uda train`` with one line, keeping the last good checkpoint."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import monai_uda.bundle_runner
from monai_uda.engines import latest_checkpoint


@pytest.fixture()
def with_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``monai-uda train`` merge the fault-injection config after the bundle's own."""
    config_files = monai_uda.bundle_runner.config_files
    faults = str(Path(__file__).resolve().parent / "configs" / "faults.yaml")
    monkeypatch.setattr(monai_uda.bundle_runner, "config_files", lambda *a, **k: [*config_files(*a, **k), faults])


@pytest.mark.parametrize(("loss", "value", "iteration"), [("seg", "nan", 3), ("disc", "inf", 2)])
def test_injected_bad_loss_stops_training_in_one_line(
    dataset: Path, tmp_path: Path, kit, with_faults, loss, value, iteration
):
    out = tmp_path / "run"
    code, stderr = kit.run("train", "--dataset_dir", dataset, "--output_dir", out, *kit.tiny_args(
        max_iterations=5, ckpt_interval=1, inject_nan_at=iteration, inject_loss=loss, inject_value=value))
    assert code == 3
    line = kit.error_line(stderr)
    assert line.startswith(f"error: training diverged: loss '{loss}' is {value} at iteration {iteration};"), line
    assert "last good checkpoint" in line
    # the last good checkpoint is the iteration before, complete and finite; no final model was written
    ckpt = torch.load(latest_checkpoint(out), weights_only=True)
    assert ckpt["trainer"]["iteration"] == iteration - 1
    assert all(torch.isfinite(t).all() for t in ckpt["segmenter"].values())
    assert not (out / "model.pt").exists()
    assert not list(out.glob(".tmp-*")) and not list(out.glob("tmp*"))


def test_resume_after_divergence_finishes_from_last_good_checkpoint(dataset: Path, tmp_path: Path, kit, with_faults):
    out = tmp_path / "run"
    common = ["train", "--dataset_dir", dataset, "--output_dir", out]
    code, _ = kit.run(*common, *kit.tiny_args(max_iterations=4, ckpt_interval=1, inject_nan_at=3, inject_loss="recons"))
    assert code == 3
    code, stderr = kit.run(*common, *kit.tiny_args(max_iterations=4, ckpt_interval=1), "--resume", "true")
    assert code == 0, stderr[-2000:]
    assert torch.load(latest_checkpoint(out), weights_only=True)["trainer"]["iteration"] == 4
    model = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in model["segmenter"].values())


def test_divergence_message_names_the_first_non_finite_loss(dataset: Path, tmp_path: Path, kit, with_faults):
    """``-inf`` is reported as such (not as nan), and the iteration counts from 1 like the logs."""
    code, stderr = kit.run("train", "--dataset_dir", dataset, "--output_dir", tmp_path / "run", *kit.tiny_args(
        max_iterations=2, ckpt_interval=1, inject_nan_at=1, inject_loss="adv", inject_value="-inf"))
    assert code == 3
    found = re.search(r"loss '(\w+)' is (\S+) at iteration (\d+)", kit.error_line(stderr))
    assert found is not None and found.groups() == ("adv", "-inf", "1")
    assert math.isinf(float(found.group(2)))
    assert not list((tmp_path / "run").glob("*checkpoint*.pt"))  # nothing good to keep before iteration 1
