"""The instance split scaled by the nuclei's size: estimate, rule, checkpoint record, runner options."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from skimage.draw import disk

from monai_uda.engines.checkpoint import FinalModelSaver
from monai_uda.errors import UDAInputError
from monai_uda.inference.network import SegmentationNetwork, parse_diameter, recorded_diameter
from monai_uda.inference.postprocess import binary_to_instances, split_scale, typical_diameter
from monai_uda.networks.weights import load_network_weights
from tests.bundles.test_cellseg_uda import CONFIGS

REFERENCE = 20.0  # a source whose nuclei are discs of radius 10


def _discs(shape: tuple[int, int], discs: list[tuple[int, int, int]]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for row, col, radius in discs:
        mask[disk((row, col), radius, shape=shape)] = True
    return mask


def _peanut() -> np.ndarray:
    """One large nucleus with a shallow waist: discs of radius 30 and 28, centres 26 apart (depth 1-3 px)."""
    return _discs((100, 150), [(50, 57, 30), (50, 83, 28)])


def test_typical_diameter_is_twice_the_median_inscribed_radius():
    assert typical_diameter(_discs((64, 64), [(32, 32, 10)])) == 20.0
    # a clump of two touching discs has the radius of one disc, not of the clump
    assert typical_diameter(_discs((64, 96), [(32, 30, 10), (32, 48, 10)])) == 20.0
    # pooled over images: radii 10 and 20, median 15
    assert typical_diameter([_discs((64, 64), [(32, 32, 10)]), _discs((64, 64), [(32, 32, 20)])]) == 30.0
    speck = np.zeros((16, 16), dtype=bool)
    speck[2:4, 2:4] = True  # 4 pixels < min_size: debris
    assert typical_diameter(speck) is None and typical_diameter(np.zeros((8, 8))) is None


def test_split_scale_is_the_ratio_or_one_when_unknown():
    assert split_scale(60.0, 20.0) == 3.0
    assert split_scale(None, 20.0) == split_scale(60.0, None) == split_scale(0.0, 20.0) == 1.0
    assert split_scale(10.0, 20.0) == 0.5
    # within 1.5x of the source's size the split stays as at the source's scale
    assert split_scale(29.0, 20.0) == split_scale(14.0, 20.0) == 1.0


def test_touching_large_discs_are_split_with_auto():
    mask = _discs((100, 150), [(50, 45, 30), (50, 103, 30)])  # radius 30, centres 58 apart: they touch
    auto = binary_to_instances(mask, diameter="auto", reference_diameter=REFERENCE)
    for instances in (binary_to_instances(mask), auto):
        assert instances.max() == 2 and instances[50, 45] != instances[50, 103]
        np.testing.assert_array_equal(instances > 0, mask)


def test_large_nucleus_with_a_shallow_waist_is_cut_by_h1_but_kept_whole_with_auto():
    mask = _peanut()
    assert binary_to_instances(mask).max() == 2  # today: h = 1 px cuts it at the waist
    kept = binary_to_instances(mask, diameter="auto", reference_diameter=REFERENCE)  # diameter 60: h = 3
    assert kept.max() == 1
    np.testing.assert_array_equal(kept == 1, mask)
    # the same with the diameter given, and at the source's own size h = 1 again
    assert binary_to_instances(mask, diameter=60, reference_diameter=REFERENCE).max() == 1
    assert binary_to_instances(mask, diameter=20, reference_diameter=REFERENCE).max() == 2


def test_at_the_reference_scale_the_split_is_todays():
    mask = _discs((96, 160), [(20, 20, 10), (20, 37, 10), (60, 30, 9), (60, 46, 11), (50, 100, 12), (70, 130, 8)])
    reference = typical_diameter(mask)
    today = binary_to_instances(mask)
    assert today.max() >= 6
    np.testing.assert_array_equal(binary_to_instances(mask, diameter="auto", reference_diameter=reference), today)
    # no reference (a checkpoint from before the record) or no diameter: today's split whatever the size
    big = _peanut()
    cut = binary_to_instances(big)
    np.testing.assert_array_equal(binary_to_instances(big, diameter="auto", reference_diameter=None), cut)
    np.testing.assert_array_equal(binary_to_instances(big, diameter=None, reference_diameter=20), cut)


def test_parse_diameter():
    assert parse_diameter("auto") == "auto" and parse_diameter(" Auto ") == "auto"
    assert parse_diameter(None) is None and parse_diameter("null") is None
    assert parse_diameter(30) == 30.0 and parse_diameter("12.5") == 12.5
    for bad in ("big", -1, 0, True, float("inf")):
        with pytest.raises(UDAInputError, match="diameter must be 'auto', null or a positive number"):
            parse_diameter(bad)
    with pytest.raises(UDAInputError, match="^reference_diameter must be null or a positive number"):
        parse_diameter("auto", "reference_diameter")


def _save_final(path, source_data) -> torch.nn.Module:
    net = torch.nn.Conv2d(1, 1, 1)
    engine = SimpleNamespace(method=SimpleNamespace(networks=lambda: {"segmenter": net}), logger=logging.getLogger())
    FinalModelSaver(path.parent, path.name, source_data=source_data)(engine)
    return net


def test_final_model_records_the_source_diameter_and_inference_reads_it(tmp_path):
    label = torch.from_numpy(_discs((64, 64), [(20, 20, 10), (44, 44, 10)])).int()[None]
    source = SimpleNamespace(source=[{"image": None, "label": label}] * 3)
    net = _save_final(tmp_path / "model.pt", source)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == {"segmenter", "source_diameter"} and state["source_diameter"] == REFERENCE
    assert recorded_diameter(tmp_path / "model.pt") == REFERENCE
    load_network_weights(torch.nn.Conv2d(1, 1, 1), tmp_path / "model.pt", "segmenter")  # the networks load as before

    old = tmp_path / "old" / "model.pt"
    old.parent.mkdir()
    _save_final(old, None)  # no source data: nothing recorded, as in checkpoints written before
    assert set(torch.load(old, weights_only=True)) == {"segmenter"} and recorded_diameter(old) is None
    assert recorded_diameter(None) is None and recorded_diameter(tmp_path / "missing.pt") is None
    torch.save({"segmenter": net.state_dict()}, tmp_path / "model_best.pt")  # beside model.pt: takes its record
    assert recorded_diameter(tmp_path / "model_best.pt") == REFERENCE
    (tmp_path / "scored").mkdir()  # label-free selection's kept networks: the model.pt one folder up
    torch.save({"segmenter": net.state_dict()}, tmp_path / "scored" / "model_iteration=2.pt")
    assert recorded_diameter(tmp_path / "scored" / "model_iteration=2.pt") == REFERENCE

    prob = _peanut().astype(np.float32)[None]
    for ckpt, expected in ((tmp_path / "model.pt", 1), (old, 2)):  # old checkpoint: h = 1, the waist is cut
        model = SegmentationNetwork(net, roi_size=(64, 64), ckpt_path=str(ckpt), ckpt_key="segmenter",
                                    output_activation="none", reference_diameter=recorded_diameter(ckpt))
        assert model.instances(prob).max() == expected
        assert model.to_instances((prob[0] > 0.5).astype(np.uint8)).max() == expected


def test_inference_config_reads_the_reference_from_the_checkpoint(tmp_path):
    label = torch.from_numpy(_discs((64, 64), [(32, 32, 10)]))[None]
    _save_final(tmp_path / "model.pt", SimpleNamespace(source=[{"label": label}]))
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.yaml"))
    parser.update({"ckpt_path": str(tmp_path / "model.pt")})
    assert parser.get_parsed_content("diameter") == "auto"
    assert parser.get_parsed_content("reference_diameter") == REFERENCE
    with pytest.raises(UDAInputError, match="diameter must be"):
        SegmentationNetwork(torch.nn.Conv2d(1, 1, 1), diameter="large")
