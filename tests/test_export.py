"""Exported inference networks (TorchScript / torch.export) load and match the eager networks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ckpt_export, verify_net_in_out
from monai.networks.nets import UNet

from monai_uda.errors import UDAInputError
from monai_uda.export import export_bundle, load_exported
from monai_uda.methods.ad_gan import DomainTranslator
from monai_uda.networks.adain import AdaINGenerator

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
