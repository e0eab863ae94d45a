"""Exported inference networks (TorchScript / torch.export) load and match the eager networks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out
from monai.networks.nets import UNet

from monai_uda.data.io import read_image
from monai_uda.errors import UDAInputError
from monai_uda.export import detections_difference, export_bundle, load_exported, main
from monai_uda.methods.ad_gan import DomainTranslator
from monai_uda.networks.adain import AdaINGenerator
from monai_uda.networks.domain_separation import DomainSeparationMaskRCNN
from monai_uda.networks.mask_rcnn import inference_detector
from monai_uda.networks.pdam import PDAMDetector

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
UNET = {"widths": [4, 8, 16]}
GENERATOR = {"gen_widths": [4, 8, 8], "num_res_blocks": 1, "mlp_channels": 8}


def _segmenter_checkpoint(path: Path) -> UNet:
    torch.manual_seed(0)
    net = UNet(2, 3, 1, UNET["widths"], [2, 2], num_res_units=1).eval()
    torch.save({"segmenter": net.state_dict(), "discriminator": {}}, path)
    return net


@pytest.mark.parametrize("method, suffix", [("torchscript", ".ts"), ("export", ".pt2")])
def test_cellseg_uda_segmenter_export_matches_eager(tmp_path, method, suffix):
    net = _segmenter_checkpoint(tmp_path / "model.pt")
    report = export_bundle(BUNDLES / "cellseg_uda", tmp_path / f"model{suffix}", ckpt_path=str(tmp_path / "model.pt"),
                           method=method, input_shape=(2, 3, 64, 64), **UNET)
    assert report["max_abs_diff"] <= 1e-4 and report["method"] == method
    exported = load_exported(tmp_path / f"model{suffix}")
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net(x), atol=1e-4, rtol=1e-4)


def test_ad_gan_translator_export_matches_eager(tmp_path):
    torch.manual_seed(0)
    generator = AdaINGenerator(2, 1, channels=GENERATOR["gen_widths"], num_res_blocks=1, mlp_channels=8).eval()
    torch.save({"generator": generator.state_dict()}, tmp_path / "model.pt")
    export_bundle(
        BUNDLES / "ad_gan",
        tmp_path / "model.ts",
        ckpt_path=str(tmp_path / "model.pt"),
        input_shape=(2, 1, 64, 64),
        **GENERATOR,
    )
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(
            load_exported(tmp_path / "model.ts")(x), DomainTranslator(generator)(x), atol=1e-4, rtol=1e-4
        )


def test_monai_ckpt_export_and_verify_net_in_out(tmp_path):
    """MONAI's own bundle commands work on the CellSegUDA inference config."""
    net = _segmenter_checkpoint(tmp_path / "model.pt")
    configs = BUNDLES / "cellseg_uda" / "configs"
    common = dict(meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.yaml"), **UNET)
    verify_net_in_out("network_def", device="cpu", **common)
    ckpt_export(
        "network_def",
        filepath=str(tmp_path / "monai.ts"),
        ckpt_file=str(tmp_path / "model.pt"),
        key_in_ckpt="segmenter",
        use_trace=True,
        input_shape=[1, 3, 64, 64],
        **common,
    )
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "monai.ts"))(x), net(x), atol=1e-4, rtol=1e-4)


def test_bad_export_requests(tmp_path):
    with pytest.raises(UDAInputError, match="method must be"):
        export_bundle(BUNDLES / "cellseg_uda", tmp_path / "m.onnx", method="onnx")
    with pytest.raises(UDAInputError, match="not a bundle"):
        export_bundle(tmp_path, tmp_path / "m.ts")
    with pytest.raises(UDAInputError, match="does not exist"):
        export_bundle(
            BUNDLES / "cellseg_uda",
            tmp_path / "m.ts",
            ckpt_path=str(tmp_path / "missing.pt"),
            input_shape=(2, 3, 64, 64),
            **UNET,
        )


# ---------------------------------------------------------------- Mask R-CNN bundles (TorchScript)
#: tiny detectors built from the bundles' inference.yaml (low score threshold: random weights still detect)
TINY_DETECTOR = {
    "backbone": "resnet18", "patch": [64, 64], "score_threshold": 0.0, "detections_per_tile": 4,
    "detector_kwargs": {"rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 20},
}
#: per bundle, what its training saves as "detector", built around inference.yaml's Mask R-CNN
DETECTOR_BUNDLES = {"cyc_pdam": PDAMDetector, "darcnn": DomainSeparationMaskRCNN}
TORCHSCRIPT_ONLY = "import sys, torch, torchvision\nassert 'monai_uda' not in sys.modules\n"


def _config(bundle: str, **overrides) -> ConfigParser:
    configs = BUNDLES / bundle / "configs"
    parser = ConfigParser()
    parser.read_meta(str(configs / "metadata.json"))
    parser.read_config(str(configs / "inference.yaml"))
    # no model file yet: the network takes the config's own settings, not the records of the shipped weights
    parser.update({"ckpt_path": "not_trained_yet.pt", **TINY_DETECTOR, **overrides})
    return parser


@pytest.fixture(scope="module")
def he_crop(shared_data) -> torch.Tensor:
    """A real 64x72 H&E crop of MoNuSeg (RGB in [0, 1])."""
    image, _ = read_image(sorted((shared_data / "monuseg" / "train" / "images").glob("*.tif"))[0])
    return torch.as_tensor(image[:3, 300:364, 300:372] / 255.0, dtype=torch.float32)


@pytest.fixture(scope="module")
def exported_detectors(tmp_path_factory, he_crop) -> dict:
    """Per bundle: the trained network, the checkpoint's eager detections of the H&E crop, ``model.ts``."""
    out = {}
    for bundle, training_network in DETECTOR_BUNDLES.items():
        folder = tmp_path_factory.mktemp(bundle)
        torch.manual_seed(0)
        trained = training_network(_config(bundle).get_parsed_content("mask_rcnn")).eval()
        torch.save({"detector": trained.state_dict()}, folder / "model.pt")
        eager = inference_detector(trained)  # what inference.yaml runs
        with torch.no_grad():
            expected = eager([he_crop])
        report = export_bundle(BUNDLES / bundle, folder / "model.ts", ckpt_path=str(folder / "model.pt"),
                               input_shape=(3, 64, 64), **TINY_DETECTOR)
        out[bundle] = {"trained": trained, "expected": expected, "report": report, "folder": folder}
    return out


@pytest.mark.parametrize("bundle", DETECTOR_BUNDLES)
def test_detector_export_matches_checkpoint_on_real_image(exported_detectors, he_crop, bundle):
    run = exported_detectors[bundle]
    assert run["report"]["max_abs_diff"] <= 1e-4 and run["report"]["input_shape"] == [3, 64, 64]
    with torch.no_grad(), torch.jit.optimized_execution(False):
        got = load_exported(run["folder"] / "model.ts")([he_crop])[0]
    expected = run["expected"][0]
    assert len(expected["scores"]) == 4 and got["masks"].shape == (4, 1, 64, 72)
    for key in ("boxes", "labels", "scores", "masks"):
        torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=1e-4)


def test_exported_detectors_run_with_plain_torch(exported_detectors, he_crop, tmp_path):
    """A fresh interpreter with torch and torchvision only (no monai_uda) runs both files."""
    torch.save(he_crop, tmp_path / "image.pt")
    files = [str(run["folder"] / "model.ts") for run in exported_detectors.values()]
    script = TORCHSCRIPT_ONLY + (
        f"image = torch.load({str(tmp_path / 'image.pt')!r})\n"
        "torch.jit.set_fusion_strategy([('STATIC', 0), ('DYNAMIC', 0)])\n"
        f"outs = [torch.jit.load(f)([image])[0] for f in {files!r}]\n"
        f"torch.save(outs, {str(tmp_path / 'outs.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    for out, run in zip(torch.load(tmp_path / "outs.pt"), exported_detectors.values()):
        torch.testing.assert_close(out["masks"], run["expected"][0]["masks"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out["scores"], run["expected"][0]["scores"], atol=1e-4, rtol=1e-4)


def test_monai_ckpt_export_of_darcnn(exported_detectors, he_crop, tmp_path):
    """The documented ``ckpt_export`` command: scripted eval path, strict load of the training checkpoint."""
    configs, ckpt = BUNDLES / "darcnn" / "configs", str(exported_detectors["darcnn"]["folder"] / "model.pt")
    ckpt_export(
        "export_network", filepath=str(tmp_path / "darcnn.ts"), ckpt_file=ckpt, key_in_ckpt="detector",
        meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.yaml"), ckpt_path=ckpt,
        export_network="$monai_uda.networks.mask_rcnn.inference_detector(@network_def)", **TINY_DETECTOR,
    )
    with torch.no_grad(), torch.jit.optimized_execution(False):
        got = torch.jit.load(str(tmp_path / "darcnn.ts"))([he_crop])
    assert detections_difference(got, exported_detectors["darcnn"]["expected"]) <= 1e-4


def test_inference_detector_loads_training_checkpoints_strictly(exported_detectors):
    """The training checkpoint's extra entries (discriminators, source branch) are skipped; missing ones are not."""
    for run in exported_detectors.values():
        state = run["trained"].state_dict()
        detector = inference_detector(run["trained"])
        assert len(detector.state_dict()) < len(state)
        detector.load_state_dict(state)  # strict, as ignite's Checkpoint.load_objects in ckpt_export
        with pytest.raises(RuntimeError, match="Missing key"):
            detector.load_state_dict({k: v for k, v in state.items() if "rpn" not in k})


def test_detector_export_refuses_torch_export_and_bad_shapes(tmp_path):
    with pytest.raises(UDAInputError, match="torchscript only"):
        export_bundle(BUNDLES / "cyc_pdam", tmp_path / "m.pt2", method="export", **TINY_DETECTOR)
    with pytest.raises(UDAInputError, match=r"\(C, H, W\)"):
        export_bundle(BUNDLES / "cyc_pdam", tmp_path / "m.ts", input_shape=(1, 3, 64, 64),
                      **TINY_DETECTOR)
    with pytest.raises(UDAInputError, match="not a Mask R-CNN"):
        inference_detector(torch.nn.Linear(2, 2))


def test_detections_difference_counts_mismatches():
    one = [{"scores": torch.tensor([0.9, 0.5]), "masks": torch.zeros(2, 1, 4, 4)}]
    close = [{"scores": torch.tensor([0.9, 0.25]), "masks": torch.zeros(2, 1, 4, 4)}]
    fewer = [{"scores": torch.tensor([0.9]), "masks": torch.zeros(1, 1, 4, 4)}]
    assert detections_difference(one, close) == pytest.approx(0.25)
    assert detections_difference(one, fewer) == float("inf") and detections_difference(one, []) == float("inf")


def test_export_command_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main([str(BUNDLES / "cellseg_uda"), str(tmp_path / "m.onnx"), "--method", "onnx"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: method must be one of")
