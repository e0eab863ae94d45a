"""The semantic bundles validate where the datalist has a validation list, select without labels where not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_uda.data.datalist import load_datalist
from monai_uda.engines.validation import MaskForeground, validation_items
from monai_uda.errors import UDAInputError
from monai_uda.networks.adain import AdaINGenerator

REPO = Path(__file__).resolve().parents[2]
BUNDLES = {  # the tiny sizes of test_cellseg_uda.py and test_ad_gan.py
    "cellseg_uda": {"widths": [4, 8, 16], "disc_widths": [4, 4, 4, 4], "source_patch": [64, 64],
                    "target_patch": [64, 64], "batch_size": 2},
    "ad_gan": {"gen_widths": [4, 8, 8], "num_res_blocks": 1, "mlp_channels": 8, "disc_widths": [4, 8],
               "patch": [32, 32], "batch_size": 2, "masks_per_epoch": 4, "axis_range": [3, 5], "count_range": [2, 5]},
}


def _datalists(sample: Path, folder: Path) -> tuple[Path, Path]:
    """The sample datalist with two labelled validation items, and the same without a validation list."""
    data = {key: list(items) for key, items in load_datalist(sample).items()}
    data["validation"] = data["validation"][:1] + data["test"][:1]
    with_val, without = folder / "with_val.json", folder / "without_val.json"
    with_val.write_text(json.dumps(data))
    without.write_text(json.dumps({k: v for k, v in data.items() if k != "validation"}))
    return with_val, without


def _train(bundle: str, datalist: Path, out: Path, **overrides: object) -> ConfigParser:
    parser = ConfigParser()
    configs = REPO / "bundles" / bundle / "configs"
    parser.read_meta(str(configs / "metadata.json"))
    parser.read_config(str(configs / "train.yaml"))
    parser.update({"dataset_dir": str(datalist), "output_dir": str(out), "max_iterations": 2, "val_interval": 2,
                   "memory_check": False, **BUNDLES[bundle], **overrides})
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")
    return parser


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_validation_or_label_free_selection_leaves_training_unchanged(sample_2d, tmp_path, bundle):
    with_val, without = _datalists(sample_2d, tmp_path)
    validated = _train(bundle, with_val, tmp_path / "with")
    dice = validated.get_parsed_content("val_handler").evaluator.state.metrics["val_mean_dice"]
    assert isinstance(dice, float) and 0.0 <= dice <= 1.0
    assert (tmp_path / "with" / "model_best.pt").is_file()
    best = torch.load(tmp_path / "with" / "model_best.pt", weights_only=True)
    # model.pt also records the source's nucleus diameter and the network settings (inference reads them beside
    # model_best.pt)
    records = {"source_diameter", "network_config"}
    assert set(best) == set(torch.load(tmp_path / "with" / "model.pt", weights_only=True)) - records

    # without a validation list: label-free selection on the target images, the best kept the same way
    selected = _train(bundle, without, tmp_path / "without", selection_images=2,
                      **{"selection_handler#inferer#roi_size": [128, 128]})  # fewer windows: a faster test
    unused = selected.get_parsed_content("val_handler")
    assert unused.items == [] and not unused.evaluator.state.metrics
    scores = json.loads((tmp_path / "without" / "selection.json").read_text())
    assert [e["iteration"] for e in scores] == [2] and 0.0 <= scores[0]["score"] <= 1.0
    assert set(torch.load(tmp_path / "without" / "model_best.pt", weights_only=True)) == set(best)
    # --selection false: neither
    plain = _train(bundle, without, tmp_path / "plain", selection="false")
    enabled = [p.get_parsed_content("selection_handler").enabled for p in (validated, selected, plain)]
    assert enabled == [False, True, False]
    assert not (tmp_path / "plain" / "model_best.pt").exists() and not (tmp_path / "plain" / "selection.json").exists()
    # validating and selecting draw no random numbers of the training and leave its networks in training mode
    losses = [p.get_parsed_content("trainer").state.output for p in (validated, selected, plain)]
    assert losses[0].keys() == losses[1].keys() == losses[2].keys()
    assert all(math.isclose(other[k], losses[2][k], rel_tol=1e-6) for other in losses[:2] for k in losses[2])


def test_validation_items(sample_2d):
    datalist = load_datalist(sample_2d)
    assert len(validation_items(datalist)) == 1
    assert validation_items({**datalist, "validation": []}) == []
    with pytest.raises(UDAInputError, match="has no 'label'"):
        validation_items({**datalist, "validation": [{"image": datalist["validation"][0]["image"]}]})


def test_mask_foreground_matches_inference_classes():
    generator = AdaINGenerator(2, in_channels=1, channels=[4, 8, 8], num_res_blocks=1, mlp_channels=8).eval()
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        binary = MaskForeground(generator)(x)
        ternary_net = MaskForeground(generator, ternary="true")
        ternary = ternary_net(x)
        levels = ternary_net.translator(x)
    assert binary.shape == ternary.shape == (1, 1, 16, 16)
    assert torch.equal(ternary >= 0, levels.argmax(dim=1, keepdim=True) > 0)
