"""Built-in samples: origin reporting, phantoms, and the 2D/3D sample datasets through MONAI."""

from __future__ import annotations

import importlib.util
import json
import logging

import numpy as np
import pytest
from monai.data import DataLoader, Dataset

from monai_uda.data import samples
from monai_uda.data.datalist import load_datalist
from monai_uda.data.io import read_image, read_label
from monai_uda.errors import UDAInputError
from monai_uda.transforms import inference_transforms, train_transforms

HAS_STARDIST = importlib.util.find_spec("stardist") is not None


@pytest.fixture
def no_stardist(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "stardist" else real(name, *a))


def test_origin_follows_the_installed_extra(no_stardist, caplog):
    assert samples.samples_origin() == "phantom"
    with caplog.at_level(logging.WARNING, logger="monai_uda.data.samples"):
        sample = samples.load_sample("fluo_2d")
    assert sample.origin == "phantom" and "using a generated phantom" in caplog.text
    with pytest.raises(UDAInputError, match=r"\[samples\] extra"):
        samples.load_sample("he_2d", origin="stardist")


@pytest.mark.skipif(not HAS_STARDIST, reason="stardist sample data not installed")
def test_real_samples():
    assert samples.samples_origin() == "stardist"
    fluo = samples.load_sample("fluo_2d")
    assert fluo.origin == "stardist" and fluo.image.shape == (1, 512, 512) and fluo.image.dtype == np.float32
    assert len(np.unique(fluo.label)) - 1 == 125
    he = samples.load_sample("he_2d")
    assert he.image.shape == (3, 300, 500) and he.label is None
    vol = samples.load_sample("nuclei_3d")
    assert vol.image.shape == (1, 31, 61, 57) and vol.label.shape == (31, 61, 57)


@pytest.mark.parametrize(
    "name,shape,channels", [("fluo_2d", (512, 512), 1), ("he_2d", (300, 500), 3), ("nuclei_3d", (31, 61, 57), 1)]
)
def test_phantoms(name, shape, channels):
    sample = samples.load_sample(name, origin="phantom")
    assert sample.origin == "phantom" and "phantom" in sample.description
    assert sample.image.shape == (channels, *shape) and sample.image.dtype == np.float32
    if name == "he_2d":
        assert sample.label is None
        background = sample.image[:, 0:3, 0:3].mean(axis=(1, 2))
        assert background[0] > background[1] and background[2] > background[1]  # pink: red and blue above green
    else:
        assert sample.label.shape == shape and sample.label.max() >= 20
        inside = sample.image[0][sample.label > 0].mean()
        assert inside > 5 * sample.image[0][sample.label == 0].mean()  # bright nuclei on a dark background
    with pytest.raises(UDAInputError, match="unknown sample"):
        samples.load_sample("nope")


def _check_labels_sequential(items):
    for item in items:
        ids = np.unique(read_label(item["label"]))
        assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, len(ids))) and len(ids) > 3


def test_sample_dataset_2d(sample_2d):
    datalist = load_datalist(sample_2d)
    assert [len(datalist[k]) for k in ("source", "target", "validation", "test")] == [4, 4, 1, 1]
    assert all("label" in item for key in ("source", "validation", "test") for item in datalist[key])
    assert all("label" not in item for item in datalist["target"])
    raw = json.loads((sample_2d / "datalist.json").read_text())
    assert all(not item["image"].startswith("/") for items in raw.values() for item in items)
    _check_labels_sequential(datalist["source"] + datalist["validation"] + datalist["test"])
    test_image, _ = read_image(datalist["test"][0]["image"])
    assert test_image.shape[0] == 3  # H&E-like rendering of the held-out fluorescence quarter
    assert "origin: " + samples.samples_origin() in (sample_2d / "README.txt").read_text()

    source = Dataset(datalist["source"], train_transforms(2, (64, 64), channels=3, invert=True))
    batch = next(iter(DataLoader(source, batch_size=2)))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["label"].shape == (2, 1, 64, 64)
    target = Dataset(datalist["target"], train_transforms(2, (64, 64), channels=3, label_key=None))
    assert target[0]["image"].shape == (3, 64, 64)
    test = inference_transforms(2, channels=3)(datalist["test"][0])
    assert test["image"].shape[0] == 3


def test_sample_dataset_3d(sample_3d):
    datalist = load_datalist(sample_3d)
    assert [len(datalist[k]) for k in ("source", "target", "validation", "test")] == [3, 2, 1, 1]
    _check_labels_sequential(datalist["source"] + datalist["test"])
    item = Dataset(datalist["source"], train_transforms(3, (16, 32, 32), channels=1))[0]
    assert item["image"].shape == (1, 16, 32, 32) and item["label"].shape == (1, 16, 32, 32)
    source_look, _ = read_image(datalist["source"][0]["image"])
    target_look, _ = read_image(datalist["target"][0]["image"])
    label = read_label(datalist["source"][0]["label"]) > 0
    assert source_look[0][label].mean() > source_look[0][~label].mean()  # bright nuclei
    assert target_look[0][label].mean() < target_look[0][~label].mean()  # inverted in the target


def test_sample_dataset_is_idempotent_and_seeded(tmp_path):
    first = samples.make_sample_dataset(tmp_path / "a", spatial_dims=2, seed=3, origin="phantom")
    before = {p.name: p.read_bytes() for p in (tmp_path / "a" / "source").iterdir()}
    second = samples.make_sample_dataset(tmp_path / "a", spatial_dims=2, seed=3, origin="phantom")
    assert first == second == tmp_path / "a" / "datalist.json"
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "a" / "source").iterdir()}
    samples.make_sample_dataset(tmp_path / "b", spatial_dims=2, seed=4, origin="phantom")
    assert (tmp_path / "b" / "source" / "fluo_crop0.tif").read_bytes() != before["fluo_crop0.tif"]
    with pytest.raises(UDAInputError, match="spatial_dims"):
        samples.make_sample_dataset(tmp_path / "c", spatial_dims=4)
