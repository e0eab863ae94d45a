"""An installed monai-uda (not only a checkout) finds its bundles: the wheel carries them, and
:func:`monai_uda.bundle_runner.bundles_dir` looks at ``$MONAI_UDA_BUNDLES``, the installed copy,
then the checkout's ``bundles/``, in that order."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from monai_uda import bundle_runner
from monai_uda.errors import UDAInputError

REPO = Path(__file__).resolve().parents[1]
#: what a build needs from the checkout (copied, so the build leaves no build/ or egg-info here)
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "monai_uda", "bundles")


def _bundle_folder(root: Path, name: str) -> Path:
    (root / name / "configs").mkdir(parents=True)
    (root / name / "configs" / "train.yaml").write_text("max_iterations: 1\n")
    return root


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Three bundle folders, each with one bundle named after it, put where bundles_dir() looks."""
    folders = {kind: _bundle_folder(tmp_path / kind, f"from_{kind}") for kind in ("env", "installed", "checkout")}
    monkeypatch.setattr(bundle_runner, "_INSTALLED_BUNDLES", folders["installed"])
    monkeypatch.setattr(bundle_runner, "_CHECKOUT_BUNDLES", folders["checkout"])
    monkeypatch.delenv("MONAI_UDA_BUNDLES", raising=False)
    return folders


def test_bundles_dir_prefers_env_then_installed_then_checkout(places, monkeypatch):
    monkeypatch.setenv("MONAI_UDA_BUNDLES", str(places["env"]))
    assert bundle_runner.bundles_dir() == places["env"].resolve()
    assert bundle_runner.bundle_names() == ["from_env"]
    monkeypatch.delenv("MONAI_UDA_BUNDLES")
    assert bundle_runner.bundles_dir() == places["installed"]
    assert bundle_runner.bundle_path("from_installed") == places["installed"] / "from_installed"
    shutil.rmtree(places["installed"])
    assert bundle_runner.bundles_dir() == places["checkout"]
    assert bundle_runner.bundle_listing() == f"from_checkout\t{places['checkout'] / 'from_checkout'}"


def test_bundles_dir_errors_name_the_folder(places, monkeypatch, tmp_path):
    monkeypatch.setenv("MONAI_UDA_BUNDLES", str(tmp_path / "nowhere"))
    with pytest.raises(UDAInputError, match=f"^{tmp_path / 'nowhere'}: MONAI_UDA_BUNDLES is not a folder$"):
        bundle_runner.bundles_dir()
    monkeypatch.delenv("MONAI_UDA_BUNDLES")
    shutil.rmtree(places["installed"])
    shutil.rmtree(places["checkout"])
    with pytest.raises(UDAInputError, match="bundles folder not found .*set MONAI_UDA_BUNDLES"):
        bundle_runner.bundles_dir()


def test_unknown_bundle_names_the_known_ones(places):
    with pytest.raises(UDAInputError, match="^unknown bundle 'nope'; choose one of from_installed$"):
        bundle_runner.bundle_path("nope")


def test_cli_bundles_prints_the_folders(capsys):
    from monai_uda.cli import main

    assert main(["bundles", "cellseg_uda"]) == 0
    assert capsys.readouterr().out == f"{bundle_runner.bundles_dir() / 'cellseg_uda'}\n"
    assert main(["bundles"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"cellseg_uda\t{bundle_runner.bundles_dir() / 'cellseg_uda'}"
    assert main(["bundles", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown bundle 'nope'; choose one of ad_gan, cellseg_uda")


def _build(source: Path, out: Path) -> Path:
    """``pip wheel`` of ``source`` (a folder or an sdist) with the running setuptools, offline."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("monai_uda-*.whl"))


@pytest.mark.slow
def test_wheel_carries_every_bundle_and_an_installed_package_finds_them(tmp_path):
    pytest.importorskip("setuptools", minversion="77")
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, tree / name)
    expected = {
        f"monai_uda/bundles/{p.relative_to(REPO / 'bundles').as_posix()}"
        for p in (REPO / "bundles").rglob("*")
        if p.is_file()
    }
    assert {
        f"monai_uda/bundles/{b}/configs/{f}"
        for b in ("cellseg_uda", "ad_gan", "cyc_pdam", "darcnn")
        for f in ("train.yaml", "inference.yaml", "evaluate.yaml", "metadata.json", "logging.conf")
    } <= expected

    from setuptools import build_meta

    cwd = os.getcwd()
    try:  # the sdist (what `python -m build` makes first) must carry the bundles too
        os.chdir(tree)
        sdist = tree / "dist" / build_meta.build_sdist(str(tree / "dist"))
    finally:
        os.chdir(cwd)
    for source, out in ((tree, tmp_path / "wheel"), (sdist, tmp_path / "wheel_from_sdist")):
        with zipfile.ZipFile(_build(source, out)) as wheel:
            names = set(wheel.namelist())
        assert {n for n in names if n.startswith("monai_uda/bundles/")} == expected, source
        assert {"monai_uda/data/presets/dsb2018_fluo.yaml", "monai_uda/cli.py",
                "monai_uda/benchmark/configs/time_budget.yaml"} <= names

    site = tmp_path / "site"
    with zipfile.ZipFile(next((tmp_path / "wheel").glob("*.whl"))) as wheel:
        wheel.extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("MONAI_UDA_BUNDLES", None)
    script = (
        "import monai_uda; from monai_uda.bundle_runner import bundles_dir, config_files; "
        "print(monai_uda.__file__); print(bundles_dir()); print(*config_files('cellseg_uda', 'training', preset='cpu'))"
    )
    lines = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert lines[0] == str(site / "monai_uda" / "__init__.py")
    assert lines[1] == str(site / "monai_uda" / "bundles")
    configs = site / "monai_uda" / "bundles" / "cellseg_uda" / "configs"
    assert lines[2].split() == [str(configs / "train.yaml"), str(configs / "train_cpu.yaml")]
