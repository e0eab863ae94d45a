"""Fixtures of the reliability suite: a tiny labelled dataset, tiny networks, the CLI as a user runs it.

Helpers reach the tests through the ``kit`` fixture (:class:`Kit`), so no test imports this module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.networks.nets import UNet
from PIL import Image

from monai_uda.cli import main

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "cellseg_uda" / "configs"
HERE = Path(__file__).resolve().parent
FAULTS = HERE / "configs" / "faults.yaml"

#: CellSegUDA shrunk to a few thousand weights: every run of the suite takes about a second
TINY = {
    "widths": [4, 8, 16], "disc_widths": [4, 4, 4, 4], "source_patch": [32, 32], "target_patch": [32, 32],
    "batch_size": 1,
}


def tiny_args(**extra: object) -> list[str]:
    """``--key value`` command-line arguments for :data:`TINY` plus ``extra``."""
    args: list[str] = []
    for key, value in {**TINY, **extra}.items():
        args.append(f"--{key}={json.dumps(value) if isinstance(value, (list, bool)) else value}")
    return args


def nuclei(shape: tuple[int, int], count: int, seed: int) -> np.ndarray:
    """A uint16 instance map of ``count`` disks of radius 4 (ids 1..count)."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint16)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for k in range(1, count + 1):
        cy, cx = rng.integers(5, np.array(shape) - 5)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = k
    return label


def fluorescence(label: np.ndarray, seed: int) -> np.ndarray:
    """Bright nuclei on a dark background, uint8."""
    noise = np.random.default_rng(seed).integers(0, 40, label.shape)
    return ((label > 0) * 180 + noise).astype(np.uint8)


def he_like(label: np.ndarray, seed: int) -> np.ndarray:
    """Dark purple nuclei on pink, RGB uint8."""
    grey = fluorescence(label, seed).astype(np.float64)
    return np.stack([240 - 0.8 * grey, 190 - 0.7 * grey, 215 - 0.4 * grey], axis=-1).clip(0, 255).astype(np.uint8)


def make_dataset(folder: Path, size: int = 48, n: int = 2) -> Path:
    """``folder`` with grey TIFF source images + labels, RGB PNG targets, a labelled test image and datalist.json."""
    for sub in ("source", "target", "test"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    datalist: dict[str, list[dict[str, str]]] = {"source": [], "target": [], "test": []}
    for i in range(n):
        label = nuclei((size, size), 4, seed=i)
        tifffile.imwrite(folder / "source" / f"s{i}.tif", fluorescence(label, i))
        tifffile.imwrite(folder / "source" / f"s{i}_label.tif", label)
        datalist["source"].append({"image": f"source/s{i}.tif", "label": f"source/s{i}_label.tif"})
        Image.fromarray(he_like(nuclei((size, size), 4, seed=10 + i), 10 + i)).save(folder / "target" / f"t{i}.png")
        datalist["target"].append({"image": f"target/t{i}.png"})
    label = nuclei((size, size), 4, seed=99)
    Image.fromarray(he_like(label, 99)).save(folder / "test" / "x.png")
    tifffile.imwrite(folder / "test" / "x_label.tif", label)
    datalist["test"].append({"image": "test/x.png", "label": "test/x_label.tif"})
    (folder / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return folder


def tiny_segmenter(widths: list[int] | None = None, in_channels: int = 3, seed: int = 0) -> UNet:
    """The segmenter of ``inference.yaml`` with :data:`TINY` widths."""
    widths = widths or TINY["widths"]
    torch.manual_seed(seed)
    return UNet(2, in_channels, 1, channels=widths, strides=[2] * (len(widths) - 1), num_res_units=1)


def error_line(stderr: str) -> str:
    """The single ``error:`` line of ``stderr``; fails on a traceback or on several error lines."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def infer_args(input_dir: Path, output_dir: Path, ckpt: Path, **extra: object) -> list[str]:
    """``monai-uda infer`` arguments for the tiny segmenter."""
    # keys of inference.yaml
    inference = {key: value for key, value in TINY.items() if key in ("widths", "target_patch")}
    return [
        "infer", "--input_dir", str(input_dir), "--output_dir", str(output_dir), "--ckpt_path", str(ckpt),
        *[
            f"--{key}={json.dumps(value) if isinstance(value, (list, bool)) else value}"
            for key, value in {**inference, **extra}.items()
        ],
    ]


class Kit:
    """What the reliability tests share, handed out by the ``kit`` fixture."""

    TINY = TINY
    CONFIGS = CONFIGS
    FAULTS = FAULTS
    tiny_args = staticmethod(tiny_args)
    nuclei = staticmethod(nuclei)
    fluorescence = staticmethod(fluorescence)
    he_like = staticmethod(he_like)
    make_dataset = staticmethod(make_dataset)
    tiny_segmenter = staticmethod(tiny_segmenter)
    error_line = staticmethod(error_line)
    infer_args = staticmethod(infer_args)

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def run(self, *args: object) -> tuple[int, str]:
        """``monai-uda ARGS`` in-process: ``(exit code, stderr)``."""
        self.capsys.readouterr()
        code = main([str(a) for a in args])
        return code, self.capsys.readouterr().err


@pytest.fixture(autouse=True)
def faults_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this folder's ``faults`` module (the ``_target_`` of :data:`FAULTS`) importable here and in subprocesses."""
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))


@pytest.fixture()
def kit(capsys: pytest.CaptureFixture[str]) -> Kit:
    """The suite's helpers, with the CLI runner bound to this test's captured output."""
    return Kit(capsys)


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """A fresh tiny dataset folder (tests may break it)."""
    return make_dataset(tmp_path / "data")


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    """A CellSegUDA-style ``model.pt`` (``{"segmenter": state_dict}``) for the tiny inference config."""
    path = tmp_path / "model.pt"
    torch.save({"segmenter": tiny_segmenter().state_dict()}, path)
    return path
