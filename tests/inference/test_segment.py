from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from monai.networks.nets import BasicUNet
from PIL import Image
from skimage.draw import disk

from monai_uda.errors import UDAInputError
from monai_uda.inference.network import to_probabilities
from monai_uda.inference.segment import FolderSegmenter


class InputAsLogit(torch.nn.Module):
    """Fixed toy network: logit = 20 (x - 0.5), so bright pixels (scaled to 1) get probability ~1."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(20.0))
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise RuntimeError(f"expected {self.in_channels} channels, got {x.shape[1]}")
        return self.scale * (x.mean(dim=1, keepdim=True) - 0.5)


class GreyToTernary(torch.nn.Module):
    """Toy network mapping grey levels 0 / 0.5 / 1 to one-hot [background, edge, interior] logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-20.0 * (x - level).abs() for level in (0.0, 0.5, 1.0)], dim=1)


def _disc_image(shape: tuple[int, int], centres: list[tuple[int, int]], radius: int = 8) -> np.ndarray:
    image = np.zeros(shape, dtype=np.uint8)
    for centre in centres:
        image[disk(centre, radius, shape=shape)] = 255
    return image


def _segmenter(network: torch.nn.Module, input_dir, output_dir, **kwargs) -> FolderSegmenter:
    kwargs.setdefault("roi_size", (32, 32))
    return FolderSegmenter(network, str(input_dir), str(output_dir), **kwargs)


def test_folder_2d_masks_instances_and_overlays(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    separate = _disc_image((48, 64), [(12, 12), (12, 50), (36, 30)])
    touching = _disc_image((48, 64), [(24, 20), (24, 34), (10, 55)], radius=7)  # first two overlap
    Image.fromarray(separate).save(inputs / "a.png")
    Image.fromarray(np.stack([touching] * 3, axis=-1)).save(inputs / "b.tif")  # RGB, averaged to grey
    records = _segmenter(InputAsLogit(), inputs, tmp_path / "out").run()
    assert [r["stem"] for r in records] == ["a", "b"]
    assert [r["n_instances"] for r in records] == [3, 3]
    for record, drawn in zip(records, (separate, touching)):
        mask = np.asarray(Image.open(record["mask"]))
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, drawn)
        instances = tifffile.imread(record["instances"])
        assert instances.dtype == np.uint16 and instances.shape == drawn.shape
        np.testing.assert_array_equal(instances > 0, drawn > 0)
        overlay = np.asarray(Image.open(record["overlay"]))
        assert overlay.shape == (*drawn.shape, 3)
        assert record["seconds"] > 0
    instances_b = tifffile.imread(records[1]["instances"])
    assert instances_b[24, 20] != instances_b[24, 34]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_instances.tif", "a_mask.png", "a_overlay.png", "b_instances.tif", "b_mask.png", "b_overlay.png",
    ]


def test_image_smaller_than_roi_with_amp_and_no_overlay(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(_disc_image((20, 27), [(10, 13)], radius=6)).save(inputs / "small.png")
    (record,) = _segmenter(InputAsLogit(), inputs, tmp_path / "out", roi_size=(64, 64), amp=True, overlay=False).run()
    assert record["n_instances"] == 1 and "overlay" not in record
    assert np.asarray(Image.open(record["mask"])).shape == (20, 27)


def test_ternary_softmax_splits_edge_band(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    classes = np.zeros((40, 40), dtype=np.uint8)
    classes[5:35, 5:35] = 1
    classes[8:18, 8:32] = 2
    classes[21:32, 8:32] = 2
    Image.fromarray((classes * 127.5).astype(np.uint8)).save(inputs / "c.png")  # 0, 127, 255
    (record,) = _segmenter(
        GreyToTernary(), inputs, tmp_path / "out", output_activation="softmax", postprocess="ternary", overlay=False
    ).run()
    assert record["n_instances"] == 2
    np.testing.assert_array_equal(np.asarray(Image.open(record["mask"])), (classes > 0) * 255)


def test_3d_nifti_keeps_affine(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    grid = np.indices((20, 22, 18))
    volume = (sum((g - c) ** 2 for g, c in zip(grid, (10, 11, 9))) <= 25).astype(np.float32) * 300.0
    affine = np.array([[0.5, 0, 0, -3.0], [0, 0.5, 0, 4.0], [0, 0, 2.0, 1.5], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(volume, affine), str(inputs / "vol.nii.gz"))
    (record,) = _segmenter(InputAsLogit(), inputs, tmp_path / "out", spatial_dims=3, roi_size=(16, 16, 16)).run()
    assert record["instances"].endswith("vol_instances.nii.gz") and "overlay" not in record
    assert record["n_instances"] == 1
    for key in ("mask", "instances"):
        written = nib.load(record[key])
        np.testing.assert_allclose(written.affine, affine)
        np.testing.assert_array_equal(np.asarray(written.dataobj) > 0, volume > 0)


def test_tiff_stack_spacing_is_written(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    stack = np.zeros((12, 16, 16), dtype=np.uint8)
    stack[3:9, 4:12, 4:12] = 200
    tifffile.imwrite(inputs / "stack.tif", stack, imagej=True, metadata={"spacing": 2.5})
    (record,) = _segmenter(InputAsLogit(), inputs, tmp_path / "out", spatial_dims=3, roi_size=(8, 8, 8)).run()
    written = nib.load(record["instances"])
    np.testing.assert_allclose(written.header.get_zooms(), (2.5, 1.0, 1.0))
    assert record["n_instances"] == 1 and written.shape == (12, 16, 16)


def test_checkpoint_loading_and_mismatch(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(_disc_image((24, 24), [(12, 12)])).save(inputs / "a.png")
    unet_args = dict(spatial_dims=2, in_channels=1, out_channels=1, features=(2, 2, 2, 2, 2, 2))
    trained = BasicUNet(**unet_args)
    torch.save({"segmenter": trained.state_dict()}, tmp_path / "model.pt")
    network = BasicUNet(**unet_args)
    segmenter = _segmenter(
        network, inputs, tmp_path / "out", ckpt_path=str(tmp_path / "model.pt"), ckpt_key="segmenter"
    )
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(network.state_dict()[name], tensor)
    assert len(segmenter.run()) == 1
    with pytest.raises(UDAInputError, match="checkpoint does not fit the network") as info:
        _segmenter(
            BasicUNet(**{**unet_args, "out_channels": 3}), inputs, tmp_path / "o", ckpt_path=str(tmp_path / "model.pt"),
            ckpt_key="segmenter",
        )
    assert str(tmp_path / "model.pt") in str(info.value) and "final_conv" in str(info.value)
    with pytest.raises(UDAInputError, match="generator"):
        _segmenter(network, inputs, tmp_path / "o", ckpt_path=str(tmp_path / "model.pt"), ckpt_key="generator")
    with pytest.raises(UDAInputError, match="does not exist"):
        _segmenter(network, inputs, tmp_path / "o", ckpt_path=str(tmp_path / "missing.pt"))


def test_3d_volume_into_2d_config_and_wrong_channels(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), dtype=np.float32), np.eye(4)), str(inputs / "vol.nii.gz"))
    with pytest.raises(UDAInputError, match="vol.nii.gz: expected a 2D image"):
        _segmenter(InputAsLogit(), inputs, tmp_path / "out").run()
    grey = tmp_path / "grey"
    grey.mkdir()
    Image.fromarray(_disc_image((16, 16), [(8, 8)])).save(grey / "g.png")
    with pytest.raises(UDAInputError, match="g.png: image has 1 channels"):
        _segmenter(InputAsLogit(2), grey, tmp_path / "out", channels=2).run()
    with pytest.raises(UDAInputError, match="g.png: expected a 3D image"):
        _segmenter(InputAsLogit(), grey, tmp_path / "out", spatial_dims=3, roi_size=(8, 8, 8)).run()


def test_refuses_to_overwrite_inputs_empty_folder_and_unwritable_output(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = _disc_image((16, 16), [(8, 8)])
    Image.fromarray(image).save(inputs / "a.png")
    Image.fromarray(image).save(inputs / "a_mask.png")  # would be overwritten by the mask of a.png
    with pytest.raises(UDAInputError, match="would overwrite an input"):
        _segmenter(InputAsLogit(), inputs, inputs).run()
    assert np.array_equal(np.asarray(Image.open(inputs / "a_mask.png")), image)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UDAInputError, match="no images found"):
        _segmenter(InputAsLogit(), empty, tmp_path / "out").run()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UDAInputError, match="output folder is not writable"):
        _segmenter(InputAsLogit(), inputs, blocker / "out").run()


def test_bad_configuration_and_activations():
    with pytest.raises(UDAInputError, match="roi_size"):
        FolderSegmenter(InputAsLogit(), "in", "out", spatial_dims=3, roi_size=(32, 32))
    with pytest.raises(UDAInputError, match="postprocess"):
        FolderSegmenter(InputAsLogit(), "in", "out", postprocess="stardist")
    out = torch.tensor([[[-1.0, 0.0, 1.0]]])
    torch.testing.assert_close(to_probabilities(out, "tanh"), torch.tensor([[[0.0, 0.5, 1.0]]]))
    torch.testing.assert_close(to_probabilities(out, "sigmoid")[0, 0, 1], torch.tensor(0.5))
    torch.testing.assert_close(to_probabilities(torch.zeros(1, 2, 3), "softmax"), torch.full((1, 2, 3), 0.5))


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "softmax", "none"])
def test_in_place_probabilities_are_bit_identical(activation):
    """The streaming path maps its blended slab in place: the values must equal the in-memory path's exactly."""
    logits = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(0)) * 4
    expected = to_probabilities(logits, activation)
    work = logits.clone()
    got = to_probabilities(work, activation, inplace=True)
    assert torch.equal(got, expected)
    if activation in ("sigmoid", "tanh"):
        assert got.data_ptr() == work.data_ptr()  # no second slab-sized tensor
