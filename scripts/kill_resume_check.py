"""Kill -9 a real training run several times at random moments, resume it each time, compare with an uninterrupted run.

The minutes-long version of ``tests/reliability/test_kill_resume.py``: the kills land anywhere, also while a
checkpoint is being written, and the networks are the CPU preset's, not the tests' toy ones::

    python scripts/kill_resume_check.py --out runs/kill_check --kills 3 --max_iterations 20 --ckpt_interval 2

After every kill it checks that each ``*checkpoint*.pt`` in the output folder loads with
``torch.load(weights_only=True)`` (never half-written) and that no temporary file of ``save_atomic``
(``.tmp-*``) is left; files of Ignite's own temporary names (``tmp*``) that a kill during a save
leaves are counted and reported. At the end the resumed run's ``model.pt`` and last checkpoint must
be bit-identical to those of the uninterrupted run (CPU, fixed seed). Exit code 0 when all holds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fire
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "cellseg_uda" / "configs"


def _command(configs: list[str], dataset: Path, out: Path, overrides: dict[str, Any], resume: bool) -> list[str]:
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", json.dumps(configs),
               "--meta_file", str(CONFIGS / "metadata.json"), "--dataset_dir", str(dataset), "--output_dir", str(out)]
    for key, value in {**overrides, "resume": resume}.items():
        command.append(
            f"--{key}={json.dumps(value) if isinstance(value, list) else value}"
        )  # True/False: fire's booleans
    return command


def _checkpoints(out: Path) -> dict[int, Path]:
    return {int(p.stem.split("=")[-1]): p for p in out.glob("checkpoint_iteration=*.pt")}


def _check_folder(out: Path) -> tuple[list[str], int]:
    """Problems found in ``out`` (unreadable checkpoints, leftover ``.tmp-*``) and the count of Ignite temp files."""
    problems = []
    for path in sorted(out.glob("*.pt")):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # report every damaged file, whatever torch raises
            problems.append(f"{path.name}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    problems += [f"{p.name}: temporary file left" for p in out.glob(".tmp-*")]
    return problems, len([p for p in out.glob("tmp*") if p.is_file()])


def _run_and_kill(
    command: list[str], out: Path, log: Path, delay: float, rng: random.Random, env: dict[str, str]
) -> str:
    """Start ``command``; once it has written a new checkpoint, SIGKILL it after a random pause.

    Returns what happened.
    """
    before = max(_checkpoints(out), default=0)
    with open(log, "a") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        while max(_checkpoints(out), default=0) <= before and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, delay))
        if proc.poll() is not None:
            return f"finished before the kill (exit {proc.returncode})"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return f"killed at checkpoint {max(_checkpoints(out), default=0)}"


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _compare(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Names of the tensors that differ between two (nested) state dicts."""
    different = []
    for key in sorted(set(a) | set(b), key=str):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            different += _compare(x, y, f"{prefix}{key}.")
        elif isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape != y.shape or not torch.equal(x, y):
                different.append(f"{prefix}{key}")
        elif x != y:
            different.append(f"{prefix}{key}")
    return different


def _dataset(root: Path, dataset_dir: str | None) -> Path:
    """The dataset folder: ``dataset_dir``, or the built-in 2D sample written to ``root/data``."""
    if dataset_dir is not None:
        return Path(dataset_dir).resolve()
    from monai_uda.data.samples import make_sample_dataset

    return Path(make_sample_dataset(root / "data", spatial_dims=2)).parent


def _run_to_end(command: list[str], log: Path, mode: str, env: dict[str, str]) -> None:
    """Run ``command`` to its end with its output appended (``mode`` ``"a"``) or written (``"w"``) to ``log``."""
    with open(log, mode) as log_file:
        subprocess.run(command, check=True, env=env, stdout=log_file, stderr=subprocess.STDOUT)


def _compare_runs(full: Path, killed: Path) -> list[str]:
    """The tensors that differ between the two runs' final models and their last checkpoints."""
    differences = _compare(_load(full / "model.pt"), _load(killed / "model.pt"))
    last = max(_checkpoints(full))
    checkpoints = _compare(_load(_checkpoints(full)[last]), _load(_checkpoints(killed)[last]))
    return differences + [f"checkpoint.{d}" for d in checkpoints]


def _kill_repeatedly(
    commands: list[list[str]], killed: Path, log: Path, kill_window: float, rng: random.Random, env: dict[str, str]
) -> tuple[list[str], list[str], int]:
    """Run and kill each command in turn; what happened, the damaged files found, the most Ignite temp files."""
    events, problems, ignite_temps = [], [], 0
    for attempt, command in enumerate(commands):
        events.append(_run_and_kill(command, killed, log, kill_window, rng, env))
        found, temps = _check_folder(killed)
        problems += [f"after kill {attempt + 1}: {p}" for p in found]
        ignite_temps = max(ignite_temps, temps)
        print(f"kill {attempt + 1}/{len(commands)}: {events[-1]}; {len(found)} problem(s), {temps} Ignite temp file(s)")
    return events, problems, ignite_temps


def main(
    out: str = "runs/kill_resume_check",
    dataset_dir: str | None = None,
    kills: int = 3,
    max_iterations: int = 20,
    ckpt_interval: int = 2,
    preset: str | None = "cpu",
    kill_window: float = 3.0,
    seed: int = 0,
    overrides: dict[str, Any] | str | None = None,
) -> int:
    """Run the check; returns the process exit code (0: identical weights and no damaged file).

    Args:
        out: working folder (``full/`` and ``killed/`` runs, logs, ``report.json``).
        dataset_dir: dataset folder with ``datalist.json``; default: the built-in 2D sample written to ``out/data``.
        kills: how many times the interrupted run is killed before it is allowed to finish.
        max_iterations: iterations of both runs.
        ckpt_interval: iterations between checkpoints.
        preset: ``train_<preset>.yaml`` merged after ``train.yaml`` (``None`` for the paper-size networks).
        kill_window: the kill comes a random 0..``kill_window`` seconds after a new checkpoint appeared.
        seed: seed of the kill times (training itself uses the bundle's seed).
        overrides: further config overrides, a dict or JSON object, e.g. ``'{"batch_size": 2}'``.
    """
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    dataset = _dataset(root, dataset_dir)
    configs = [str(CONFIGS / "train.yaml")] + ([str(CONFIGS / f"train_{preset}.yaml")] if preset else [])
    extra = json.loads(overrides) if isinstance(overrides, str) else dict(overrides or {})
    settings = {"max_iterations": max_iterations, "ckpt_interval": ckpt_interval, **extra}
    threads = str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    full, killed = root / "full", root / "killed"
    rng = random.Random(seed)

    start = time.perf_counter()
    _run_to_end(_command(configs, dataset, full, settings, resume=False), root / "full.log", "w", env)
    full_seconds = time.perf_counter() - start

    commands = [_command(configs, dataset, killed, settings, resume=attempt > 0) for attempt in range(kills)]
    events, problems, ignite_temps = _kill_repeatedly(commands, killed, root / "killed.log", kill_window, rng, env)
    _run_to_end(_command(configs, dataset, killed, settings, resume=kills > 0), root / "killed.log", "a", env)

    differences = _compare_runs(full, killed)
    report = {
        "kills": events,
        "problems": problems,
        "ignite_temp_files_left": ignite_temps,
        "differences": differences,
        "uninterrupted_seconds": round(full_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "settings": settings,
        "configs": configs,
    }
    (root / "report.json").write_text(json.dumps(report, indent=2))
    verdict = "IDENTICAL" if not differences else f"{len(differences)} tensors differ (e.g. {differences[:3]})"
    print(
        f"final weights vs uninterrupted run: {verdict}; damaged files: {len(problems)}; report: {root / 'report.json'}"
    )
    return 0 if not differences and not problems else 1


if __name__ == "__main__":
    sys.exit(fire.Fire(main, serialize=lambda result: None) or 0)
