"""Shipping trained weights into a bundle's models/: what is kept, the hash, and inference using them by default."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import run
from monai.networks.nets import UNet

from monai_uda.data.datalist import export_split
from monai_uda.data.io import read_array
from monai_uda.errors import UDAInputError
from monai_uda.shipping import INFERENCE_NETWORKS, INFERENCE_PARTS, md5sum, ship_weights

REPO = Path(__file__).resolve().parents[1]
WIDTHS = [4, 8, 16]


def _trained(path: Path, **records) -> Path:
    """A model.pt as cellseg_uda training writes it (tiny segmenter, an extra network, the records)."""
    segmenter = UNet(2, 3, 1, WIDTHS, [2, 2], num_res_units=1)
    state = {"segmenter": segmenter.state_dict(), "discriminator": {"w": torch.ones(3)}, **records}
    torch.save(state, path)
    return path


@pytest.fixture()
def bundle(tmp_path) -> Path:
    copy = tmp_path / "cellseg_uda"
    shutil.copytree(REPO / "bundles" / "cellseg_uda", copy, ignore=shutil.ignore_patterns("models"))
    return copy


def test_ship_keeps_inference_networks_and_records_and_hashes_the_file(bundle, tmp_path):
    config = {"channels": 3, "widths": WIDTHS, "num_res_units": 1}
    ckpt = _trained(tmp_path / "model.pt", network_config=config, source_diameter=17.5)
    out = ship_weights("cellseg_uda", ckpt, half=True, bundle_dir=bundle)
    assert out == bundle / "models" / "model.pt"
    shipped = torch.load(out, weights_only=True)
    assert set(shipped) == {"segmenter", "network_config", "source_diameter"}  # no discriminator
    assert shipped["network_config"] == config and shipped["source_diameter"] == 17.5
    assert {v.dtype for v in shipped["segmenter"].values() if v.is_floating_point()} == {torch.float16}
    listing = (bundle / "large_files.yml").read_text()
    assert listing.startswith("# The trained weights of this bundle")  # its comment kept
    entries = {e["path"]: e for e in yaml.safe_load(listing)["large_files"]}
    assert entries["models/model.pt"]["hash_val"] == md5sum(out) and entries["models/model.pt"]["url"] == ""
    assert "models/model.ts" in entries


def test_ship_selected_model_takes_the_records_of_the_model_beside_it(bundle, tmp_path):
    """model_best.pt (checkpoint selection) has no records: those of its run's model.pt are shipped with it."""
    config = {"channels": 3, "widths": WIDTHS, "num_res_units": 1}
    _trained(tmp_path / "model.pt", network_config=config, source_diameter=9.0)
    best = _trained(tmp_path / "model_best.pt")
    torch.save({"segmenter": {k: v + 1 for k, v in torch.load(best)["segmenter"].items()}}, best)
    shipped = torch.load(ship_weights("cellseg_uda", best, bundle_dir=bundle), weights_only=True)
    assert shipped["network_config"] == config and shipped["source_diameter"] == 9.0
    expected = torch.load(best, weights_only=True)["segmenter"]
    assert all(torch.equal(shipped["segmenter"][k], v) for k, v in expected.items())  # the selected weights


def test_ship_refuses_a_model_without_the_network_record(bundle, tmp_path):
    ckpt = _trained(tmp_path / "old.pt")
    with pytest.raises(UDAInputError, match="has no network_config"):
        ship_weights("cellseg_uda", ckpt, bundle_dir=bundle)
    assert not (bundle / "models").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "monai_uda.shipping", "cellseg_uda", str(ckpt), "--bundle_dir", str(bundle)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(f"error: {ckpt}: has no")
    missing = tmp_path / "no_such_run" / "model.pt"  # the documented command before any training
    proc = subprocess.run(
        [sys.executable, "-m", "monai_uda.shipping", "cyc_pdam", str(missing), "--half", "true"],
        capture_output=True, text=True, timeout=120,
    )
    expected = [f"error: {missing}: checkpoint file does not exist"]
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == expected


def test_inference_uses_the_shipped_weights_and_their_network_settings(bundle, tmp_path, sample_2d):
    """No --ckpt_path, no --widths: the bundle's models/model.pt builds and loads a 4-8-16 U-Net."""
    ckpt = _trained(tmp_path / "model.pt", network_config={"channels": 3, "widths": WIDTHS, "num_res_units": 1})
    ship_weights("cellseg_uda", ckpt, bundle_dir=bundle)
    images, _ = export_split(sample_2d / "datalist.json", "test", tmp_path / "test")
    pred = tmp_path / "pred"
    configs = bundle / "configs"
    run("inference", config_file=str(configs / "inference.yaml"), meta_file=str(configs / "metadata.json"),
        bundle_root=str(bundle), input_dir=str(images), output_dir=str(pred), target_patch=[64, 64])
    assert sorted(p.name for p in pred.glob("*_instances.tif")) == sorted(
        f"{p.name.split('.')[0]}_instances.tif" for p in images.iterdir()
    )


@pytest.mark.parametrize("name", ["cellseg_uda", "ad_gan", "cyc_pdam", "darcnn"])
def test_the_repository_ships_hashed_inference_weights_in_every_bundle(name):
    """Each bundle's models/model.pt: its md5 in large_files.yml, a safe load, only what inference loads."""
    folder = REPO / "bundles" / name
    entries = {e["path"]: e for e in yaml.safe_load((folder / "large_files.yml").read_text())["large_files"]}
    assert entries["models/model.pt"]["hash_val"] == md5sum(folder / "models" / "model.pt")
    shipped = torch.load(folder / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert set(INFERENCE_NETWORKS[name]) < set(shipped) and "network_config" in shipped
    for network in INFERENCE_NETWORKS[name]:
        parts = INFERENCE_PARTS.get(name, ("",))
        assert shipped[network] and all(key.startswith(parts) for key in shipped[network])


@pytest.mark.parametrize("name", ["cyc_pdam", "darcnn"])
def test_default_inference_command_of_a_detector_bundle_uses_its_weights(name, tmp_path, sample_2d):
    """The README's step 0 for a Mask R-CNN bundle, as written: shipped weights on images of their kind
    (cyc_pdam: the built-in H&E-like test image, its default input; darcnn: the sample's fluorescence image)."""
    command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
               f"bundles/{name}/configs/inference.yaml", "--output_dir", str(tmp_path / "pred")]
    if name == "darcnn":
        images, _ = export_split(sample_2d / "datalist.json", "source", tmp_path / "fluorescence")
        command += ["--input_dir", str(images)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    instances = [read_array(p)[0] for p in (tmp_path / "pred").glob("*_instances.tif")]
    assert instances and all(image.max() > 0 for image in instances)  # trained: every sample has nuclei found
