"""AD-GAN's mask domain from the labelled source's label maps (``mask_domain: source``)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import run

from monai_uda.data.datalist import Datalist
from monai_uda.data.dataset import UnpairedDataset
from monai_uda.data.mask_domain import mask_domain_items, mask_domain_transform
from monai_uda.errors import UDAInputError
from monai_uda.transforms import train_transforms

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "ad_gan" / "configs"


def _two_touching() -> np.ndarray:
    """16x16: two 7x7 squares side by side (ids 3 and 9), touching along columns 7|8."""
    label = np.zeros((16, 16), np.uint16)
    label[4:11, 1:8], label[4:11, 8:15] = 3, 9
    return label


def _ternary_two_touching() -> np.ndarray:
    """By hand: in a 7x7 square the distance to the outside is 1 on its outer ring .. 4 at its centre, so with
    edge_fraction 0.3 the ring (1/4 <= 0.3) is edge (0) and the inner 5x5 (>= 2/4) interior (1); background -1."""
    expected = np.full((16, 16), -1.0, np.float32)
    for cols in (slice(1, 8), slice(8, 15)):
        expected[4:11, cols] = 0.0
        expected[5:10, slice(cols.start + 1, cols.stop - 1)] = 1.0
    return expected


@pytest.fixture
def source_labels(tmp_path) -> list[dict]:
    """Two labelled source items whose images do not exist (the mask domain must never read them)."""
    single = np.zeros((16, 16), np.uint16)
    single[2:6, 10:13] = 7
    paths = []
    for name, label in (("touching", _two_touching()), ("single", single)):
        paths.append(tmp_path / f"{name}_label.tif")
        tifffile.imwrite(paths[-1], label)
    return [{"image": str(tmp_path / "missing.png"), "label": str(p)} for p in paths]


def test_items_are_the_labelled_source_maps_without_their_images(source_labels):
    datalist = Datalist({"source": source_labels + [{"image": "x.png"}], "target": [{"image": "t.png"}]})
    assert mask_domain_items("source", datalist) == [{"label": item["label"]} for item in source_labels]
    assert mask_domain_items("synthetic", datalist, 3) == [{"image": "synthetic", "label": "synthetic"}] * 3
    with pytest.raises(UDAInputError, match="mask_domain must be one of synthetic, source, got 'real'"):
        mask_domain_items("real", datalist)


@pytest.mark.parametrize("source", [[], [{"image": "a.png"}]])
def test_source_without_labels_is_one_error_naming_the_datalist(source, tmp_path):
    datalist = Datalist({"source": source, "target": [{"image": "t.png"}]}, tmp_path / "datalist.json")
    with pytest.raises(UDAInputError) as info:
        mask_domain_items("source", datalist)
    assert str(info.value).startswith(f"{tmp_path / 'datalist.json'}: mask_domain 'source' takes the labelled")
    assert "'label'" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("ternary", [False, True])
def test_batch_is_exactly_the_source_label_maps(source_labels, ternary, caplog):
    items = mask_domain_items("source", {"source": source_labels})
    with caplog.at_level(logging.INFO, logger="monai_uda.data.mask_domain"):
        chain = mask_domain_transform("source", (16, 16), ternary=ternary, source_items=items, augment=False,
                                      preset="auto", target_items=None)  # synthetic settings ignored, never read
    assert "label maps of 2 labelled source items" in caplog.text and "preset/axis_range" in caplog.text
    touching, single = (chain(dict(item)) for item in items)
    assert torch.equal(touching["label"][0], torch.from_numpy(_two_touching().astype(np.int32)))
    expected = _ternary_two_touching() if ternary else np.where(_two_touching() > 0, 1.0, -1.0)
    assert touching["image"].shape == (1, 16, 16) and touching["image"].dtype == torch.float32
    np.testing.assert_array_equal(touching["image"][0].numpy(), expected)
    # the single 4x3 nucleus: distance 1 on its ring, 2 at its 2x1 core -> ring 0.5 > 0.3 interior: no edge
    single_expected = np.full((16, 16), -1.0, np.float32)
    single_expected[2:6, 10:13] = 1.0
    np.testing.assert_array_equal(single["image"][0].numpy(), single_expected)


def test_small_maps_are_padded_with_background_and_augmented_consistently(source_labels):
    items = mask_domain_items("source", {"source": source_labels})
    chain = mask_domain_transform("source", (20, 20), ternary=True, source_items=items[:1])
    chain.set_random_state(seed=3)
    out = chain(dict(items[0]))
    padded = np.pad(_ternary_two_touching(), 2, constant_values=-1.0)  # 2 background pixels on every side
    views = [np.rot90(v, k) for v in (padded, padded[::-1], padded[:, ::-1], padded[::-1, ::-1]) for k in range(4)]
    assert any(np.array_equal(out["image"][0].numpy(), v) for v in views)
    assert torch.equal(out["image"][0] > -1, out["label"][0] > 0)


def test_3d_source_masks(tmp_path):
    label = np.zeros((4, 8, 8), np.uint16)
    label[1:3, 2:6, 2:6] = 1
    tifffile.imwrite(tmp_path / "v_label.tif", label)
    items = [{"label": str(tmp_path / "v_label.tif")}]
    chain = mask_domain_transform("source", (4, 8, 8), spatial_dims=3, source_items=items, augment=False)
    out = chain(dict(items[0]))
    assert out["image"].shape == (1, 4, 8, 8)
    np.testing.assert_array_equal(out["image"][0].numpy(), np.where(label > 0, 1.0, -1.0))


def test_unpaired_dataset_pairs_target_patches_with_source_masks(source_labels, tmp_path):
    target = tmp_path / "t.tif"
    tifffile.imwrite(target, np.random.default_rng(0).random((16, 16)).astype(np.float32))
    items = mask_domain_items("source", {"source": source_labels})
    masks = mask_domain_transform("source", (16, 16), source_items=items)
    data = UnpairedDataset(items, [{"image": str(target)}], masks,
                           train_transforms(2, (16, 16), 1, value_range=(-1, 1), label_key=None), cache=False)
    batch = [data[i] for i in range(len(data))]
    assert {int(i) for b in batch for i in torch.unique(b["source_label"])} == {0, 3, 7, 9}  # both maps, ids kept
    assert all(torch.equal(b["source_image"], torch.where(b["source_label"] > 0, 1.0, -1.0)) for b in batch)


def _datalist(sample_2d: Path, folder: Path, source: bool) -> Path:
    """The sample's datalist; its source images replaced by an unreadable file, or no source at all."""
    data = json.loads((sample_2d / "datalist.json").read_text())
    for key in ("target", "validation"):
        data[key] = [{k: str(sample_2d / v) for k, v in item.items()} for item in data[key]]
    (folder / "broken.png").write_bytes(b"not an image")
    data["source"] = [{"image": str(folder / "broken.png"), "label": str(sample_2d / i["label"])}
                      for i in data["source"]] if source else []
    data.pop("test")
    (folder / "datalist.json").write_text(json.dumps({k: v for k, v in data.items() if v}))
    return folder / "datalist.json"


def test_bundle_trains_two_iterations_on_source_masks(sample_2d, tmp_path):
    datalist = _datalist(sample_2d, tmp_path, source=True)
    run(
        "training", config_file=str(CONFIGS / "train.yaml"), meta_file=str(CONFIGS / "metadata.json"),
        dataset_dir=str(datalist), output_dir=str(tmp_path / "t"), max_iterations=2, constant_iterations=1,
        mask_domain="source", ternary=True, gen_widths=[4, 8, 8], num_res_blocks=1, mlp_channels=8,
        disc_widths=[4, 8], patch=[32, 32], batch_size=2,
    )
    model = torch.load(tmp_path / "t" / "model.pt", weights_only=True)
    assert set(model) == {"generator", "discriminator", "source_diameter", "network_config"}
    assert model["source_diameter"] > 0


def test_bundle_without_source_labels_ends_with_one_error_line(sample_2d, tmp_path):
    datalist = _datalist(sample_2d, tmp_path, source=False)
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.yaml"),
         "--dataset_dir", str(datalist), "--output_dir", str(tmp_path / "t"), "--mask_domain", "source"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {datalist}: mask_domain 'source' takes the")
    assert not (tmp_path / "t" / "model.pt").exists()


def test_benchmark_ad_gan_rows_take_the_source_masks_where_the_setting_has_a_labelled_source(tmp_path):
    from monai_uda.benchmark import settings
    from monai_uda.benchmark.recipes import ROWS
    from monai_uda.benchmark.runner import _row_spec

    prepared = settings.Prepared(tmp_path / "d.json", tmp_path, tmp_path, "x", [])
    domains = {
        (name, row): _row_spec(ROWS[row], settings.SETTINGS[name], prepared, "cpu", 1.0, None, None)[0]["overrides"]
        .get("mask_domain", "synthetic")
        for name in ("dsb2018_fluo->monuseg", "dsb2018_dim->dsb2018_bright", "synthetic->dsb2018_fluo")
        for row in ("ad_gan", "ad_gan_ins")
    }
    assert domains == {
        ("dsb2018_fluo->monuseg", "ad_gan"): "source", ("dsb2018_fluo->monuseg", "ad_gan_ins"): "source",
        ("dsb2018_dim->dsb2018_bright", "ad_gan"): "source", ("dsb2018_dim->dsb2018_bright", "ad_gan_ins"): "source",
        ("synthetic->dsb2018_fluo", "ad_gan"): "synthetic", ("synthetic->dsb2018_fluo", "ad_gan_ins"): "synthetic",
    }
    assert all("mask_domain source" in ROWS[row].description for row in ("ad_gan", "ad_gan_ins"))
    # the other rows of those settings are untouched (their signatures, and so their finished runs, stay valid)
    close = settings.SETTINGS["dsb2018_dim->dsb2018_bright"]
    assert _row_spec(ROWS["cellseg_uda"], close, prepared, "cpu", 1.0, None, None)[0]["overrides"]["channels"] == 1
    assert "mask_domain" not in _row_spec(ROWS["cyc_pdam"], close, prepared, "cpu", 1.0, None, None)[0]["overrides"]
