"""The ``monai-uda`` command line: demo end to end, evaluate, errors as one line."""

from __future__ import annotations

import json

import numpy as np

from monai_uda.cli import main
from monai_uda.data.io import write_array


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--output_dir", str(tmp_path), "--max_iterations", "2"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["per_image"]) == {"he_like_test"}
    assert (tmp_path / "predictions" / "he_like_test_overlay.png").is_file()
    assert (tmp_path / "train" / "model.pt").is_file()
    assert "[demo] sample data:" in capsys.readouterr().out
    out = (tmp_path / "sample_data" / "README.txt").read_text()
    assert "origin:" in out


def test_evaluate_writes_contract_json_and_missing_stem_is_one_line(tmp_path, capsys):
    gt = np.zeros((8, 8), np.uint16)
    gt[1:4, 1:4] = 5
    gt[5:7, 5:7] = 9
    pred = gt.copy()
    pred[5:7, 5:7] = 0  # one nucleus missed: DQ = 2*1/(2*1+0+1) = 2/3
    write_array(tmp_path / "gt" / "a.tif", gt)
    write_array(tmp_path / "pred" / "a_instances.tif", pred)
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(tmp_path / "pred"),
                "--gt",
                str(tmp_path / "gt"),
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "m.json").read_text())
    assert abs(result["per_image"]["a"]["dq"] - 2 / 3) < 1e-9 and abs(result["mean"]["aji"] - 9 / 13) < 1e-9
    write_array(tmp_path / "gt" / "b.tif", gt)
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "b" in err[0]


def test_unknown_budget_preset_names_the_presets_of_the_bundle(capsys):
    assert main(["train", "--bundle", "darcnn", "--budget_preset", "gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown budget preset 'gpu' for bundle 'darcnn'; choose one of cpu"]


def test_preset_is_ad_gan_mask_preset_and_names_budget_preset_elsewhere(capsys, monkeypatch):
    """``--preset`` no longer picks train_NAME.yaml: it reaches AD-GAN's config; other bundles name the new option."""
    assert main(["train", "--bundle", "darcnn", "--preset", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--budget_preset NAME" in err[0] and "'darcnn'" in err[0]
    seen = {}
    monkeypatch.setattr("monai.bundle.run", lambda run_id, **kwargs: seen.update(kwargs))
    assert main(["train", "--bundle", "ad_gan", "--preset", "hela", "--budget_preset", "cpu"]) == 0
    assert seen["preset"] == "hela" and seen["config_file"][-1].endswith("train_cpu.yaml")


def test_help_piped_into_a_reader_that_stops_early_exits_0(monkeypatch):
    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["train", "--help"]) == 0  # `monai-uda train --help | head -1`: no traceback


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import monai_uda.bundle_runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(monai_uda.bundle_runner, "run_config", interrupted)
    assert main(["train", "--max_iterations", "2"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "interrupted; a training continues from its newest checkpoint with --resume true"
    ]
