"""Help, options, numbers and exit codes at the front door (issue 19): ``monai-uda`` and ``python -m monai.bundle run``.

``--help`` prints usage and runs nothing; an unknown or wrong-typed option is one ``error:`` line and exit code 2
before any work; an input error found anywhere is the last line of output, exit code 2, also through
``monai.bundle``; a data error while the dataset is cached never aborts the process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "bundles" / "cellseg_uda" / "configs" / "train.yaml"


def _python(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MONAI_UDA_DEBUG", None)
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return (result.stdout + result.stderr).strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["demo", "prepare", "train", "infer", "evaluate", "benchmark", None])
def test_help_prints_usage_and_runs_nothing(command: str | None, tmp_path: Path, monkeypatch, capsys):
    from monai_uda.cli import main

    monkeypatch.chdir(tmp_path)
    for flag in ("--help", "-h"):
        assert main([flag] if command is None else [command, flag]) == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: monai-uda") if command else "commands:" in out
        assert "MONAI_UDA_DEBUG=1" in out
    assert list(tmp_path.iterdir()) == []


def test_train_help_shows_the_bundle_defaults(tmp_path: Path, monkeypatch, capsys):
    from monai_uda.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "-h"]) == 0
    out = capsys.readouterr().out
    assert "--max_iterations           5000" in out and "--batch_size               1" in out
    assert "--output_dir               ./runs/cellseg_uda" in out and "--resume                   false" in out
    assert main(["infer", "--bundle", "darcnn", "--help"]) == 0
    out = capsys.readouterr().out
    assert "config options of darcnn" in out and "\n  --ckpt_path " in out and "\n  --input_dir " in out
    assert list(tmp_path.iterdir()) == []


def test_help_through_a_subprocess_writes_nothing(tmp_path: Path):
    result = _python("-m", "monai_uda.cli", "train", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "--max_iterations" in result.stdout, result.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["train", "--max_iteration", "4"], "error: unknown option --max_iteration (did you mean --max_iterations?)"),
        (["infer", "--ckpt_pth", "x.pt"], "error: unknown option --ckpt_pth (did you mean --ckpt_path?)"),
        (
            ["train", "--network_def#channelz", "3"],
            "error: unknown option --network_def#channelz (did you mean --network_def#channels?)",
        ),
        (["demo", "--ouput_dir", "x"], "error: unknown option --ouput_dir (did you mean --output_dir?)"),
        (["trian"], "error: unknown command 'trian' (did you mean train?)"),
        (["train", "--max_iterations", "abc"], "error: --max_iterations must be a whole number >= 1, got 'abc'"),
        (["train", "--max_iterations", "2.5"], "error: --max_iterations must be a whole number >= 1, got 2.5"),
        (["train", "--max_iterations", "0"], "error: --max_iterations must be a whole number >= 1, got 0"),
        (["train", "--max_iterations", "-1"], "error: --max_iterations must be a whole number >= 1, got -1"),
        (["train", "--batch_size=0"], "error: --batch_size must be a whole number >= 1, got 0"),
        (
            ["train", "--bundle", "cyc_pdam", "--cyclegan_iterations", "0"],
            "error: --cyclegan_iterations must be a whole number >= 1, got 0",
        ),
        (["train", "--lr_segmenter", "fast"], "error: --lr_segmenter must be a number, got 'fast'"),
        (["train", "--resume", "maybe"], "error: --resume must be true or false, got 'maybe'"),
        (["demo", "--max_iterations", "abc"], "error: --max_iterations must be a whole number >= 1, got 'abc'"),
    ],
)
def test_option_slips_are_one_line_before_any_work(args: list[str], line: str, tmp_path: Path, monkeypatch, kit):
    monkeypatch.chdir(tmp_path)
    code, stderr = kit.run(*args)
    assert code == 2 and kit.error_line(stderr) == line
    assert list(tmp_path.iterdir()) == []


def test_component_arguments_are_known_options():
    from monai_uda.options import check_options, config_defaults

    defaults = config_defaults([str(TRAIN)])
    check_options({"train_dataset#cache": False, "max_iterations": 3, "lr_segmenter": 1, "amp": "true"}, defaults)
    with pytest.raises(ValueError, match="unknown option --train_dataset#cachee"):
        check_options({"train_dataset#cachee": False}, defaults)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--max_iteration", 4], "error: unknown option --max_iteration (did you mean --max_iterations?)"),
        (["--max_iterations", "abc"], "error: --max_iterations must be a whole number >= 1, got 'abc'"),
        (["--max_iterations=-1"], "error: --max_iterations must be a whole number >= 1, got -1"),
        (
            ["--dataset_dir", "/nonexistent/data", "--max_iterations", 1],
            "error: /nonexistent/data: datalist file does not exist",
        ),
    ],
)
def test_monai_bundle_run_answers_slips_in_one_last_line(args: list[object], line: str, tmp_path: Path):
    result = _python(
        "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--output_dir", tmp_path / "run", *args,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert _last_line(result) == line
    assert not (tmp_path / "run" / "model.pt").exists()


def test_monai_bundle_debug_switch_shows_the_traceback(tmp_path: Path):
    env_debug = {"MONAI_UDA_DEBUG": "1"}
    result = subprocess.run(
        [
            sys.executable, "-m", "monai.bundle", "run", "evaluate",
            "--config_file", str(TRAIN.with_name("evaluate.yaml")), "--pred_dir", str(tmp_path / "none"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), **env_debug},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'none'}: folder does not exist"


def _mismatch(folder: Path) -> None:
    tifffile.imwrite(folder / "source" / "s1_label.tif", np.zeros((40, 48), np.uint16))


def _truncated(folder: Path) -> None:
    data = (folder / "source" / "s1.tif").read_bytes()
    (folder / "source" / "s1.tif").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("breaker", "reason"), [(_mismatch, "does not match image shape"), (_truncated, "cannot read image")]
)
def test_data_error_while_caching_ends_with_exit_2_through_both_doors(
    breaker, reason: str, dataset: Path, tmp_path: Path, kit
):
    breaker(dataset)
    tiny = kit.tiny_args(max_iterations=1)
    cli = _python(
        "-m", "monai_uda.cli", "train", "--dataset_dir", dataset, "--output_dir", tmp_path / "a", *tiny, cwd=tmp_path
    )
    bundle = _python("-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--dataset_dir", dataset,
                     "--output_dir", tmp_path / "b", *tiny, cwd=tmp_path)
    for result in (cli, bundle):
        assert result.returncode == 2, result.stderr[-3000:]
        assert _last_line(result).startswith("error: ") and reason in _last_line(result)


def test_cache_threads_have_stopped_when_an_item_fails(tmp_path: Path):
    """The abort's cause: MONAI's ThreadPool keeps a cache thread inside torch while the process exits."""
    script = tmp_path / "cache.py"
    script.write_text(
        "import sys, torch\n"
        "from monai.transforms import Compose, Lambda\n"
        "from monai_uda.data.dataset import StoppingCacheDataset\n"
        "def load(x):\n"
        "    if x['i'] == 0:\n"
        "        raise ValueError('bad item')\n"
        "    t = torch.rand(1500, 1500)\n"
        "    for _ in range(20):\n"
        "        t = torch.nn.functional.avg_pool2d(t[None], 3, 1, 1)[0]\n"
        "    return x\n"
        "try:\n"
        "    StoppingCacheDataset(\n"
        "        [{'i': i} for i in range(3)], Compose([Lambda(load)]), num_workers=int(sys.argv[1]), progress=False\n"
        "    )\n"
        "except RuntimeError:\n"
        "    sys.exit(2)\n"
    )
    for workers in (1, 2):
        assert _python(script, workers, cwd=tmp_path).returncode == 2


def test_not_a_checkpoint_and_tiny_rgb_image(tmp_path: Path, kit):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10).save(inputs / "tiny.png")
    (tmp_path / "notes.txt").write_text("not weights\n")
    for fake in (tmp_path / "notes.txt", inputs / "tiny.png"):
        code, stderr = kit.run(*kit.infer_args(inputs, tmp_path / "out", fake))
        assert (
            code == 2
            and kit.error_line(stderr) == f"error: {fake}: not a checkpoint (not a file written by torch.save)"
        )

    from monai_uda.data.io import read_image

    image, _ = read_image(inputs / "tiny.png", 2)
    assert image.shape == (3, 2, 3) and image[:, 0, 1].tolist() == [30.0, 40.0, 50.0]


@pytest.mark.parametrize("bundle", ["cellseg_uda", "ad_gan", "cyc_pdam", "darcnn"])
def test_every_config_users_run_checks_its_command_line_first(bundle: str):
    from monai.bundle import ConfigParser

    configs = REPO / "bundles" / bundle / "configs"
    for files in (["train.yaml"], ["train.yaml", "multi_gpu_train.yaml"], ["inference.yaml"], ["evaluate.yaml"]):
        parser = ConfigParser()
        parser.read_config([str(configs / f) for f in files])
        assert parser["initialize"][0] == "$monai_uda.check_command_line()", (bundle, files)


def test_input_error_in_a_distributed_worker_is_its_last_line(dataset: Path, tmp_path: Path, kit):
    """torch.distributed wraps sys.excepthook and buffers stderr: the error line must still be printed
    (torchrun worker)."""
    _mismatch(dataset)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29531"}
    configs = f"['{TRAIN}','{TRAIN.with_name('multi_gpu_train.yaml')}']"
    result = subprocess.run(
        [
            sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", configs,
            "--dataset_dir", str(dataset), "--output_dir", str(tmp_path / "run"), *kit.tiny_args(max_iterations=1),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert _last_line(result).startswith("error: ") and "does not match image shape" in _last_line(result)
