"""train_transforms / inference_transforms: shapes, dtypes, scaling, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_uda.data.io import write_array
from monai_uda.errors import UDAInputError
from monai_uda.transforms import BackgroundPadd, inference_transforms, train_transforms


def _blobs_2d(tmp_path, shape=(40, 50), dtype=np.uint16):
    image = np.full(shape, 200, dtype=dtype)
    label = np.zeros(shape, dtype=np.uint16)
    image[5:15, 5:15] = 3000 if dtype == np.uint16 else 250
    label[5:15, 5:15] = 4
    return {
        "image": str(write_array(tmp_path / "img.tif", image)),
        "label": str(write_array(tmp_path / "lab.tif", label)),
    }


def test_train_2d_shapes_types_and_label_alignment(tmp_path):
    t = train_transforms(2, (16, 16), channels=3)
    t.set_random_state(seed=0)
    for _ in range(5):
        out = t(_blobs_2d(tmp_path))
        assert type(out["image"]) is torch.Tensor and type(out["label"]) is torch.Tensor
        assert out["image"].shape == (3, 16, 16) and out["image"].dtype == torch.float32
        assert out["label"].shape == (1, 16, 16) and out["label"].dtype == torch.int32
        assert set(torch.unique(out["label"]).tolist()) <= {0, 4}
        # the nucleus is bright (1.0) exactly where it is labelled, the background is 0
        assert torch.equal(out["image"][0] == 1.0, out["label"][0] == 4)
        assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0


def test_train_3d_shapes(tmp_path):
    volume = np.random.default_rng(0).integers(0, 60000, (10, 20, 24)).astype(np.uint16)
    label = (volume > 30000).astype(np.uint16)
    item = {
        "image": str(write_array(tmp_path / "v.tif", volume)),
        "label": str(write_array(tmp_path / "v_lab.tif", label)),
    }
    out = train_transforms(3, (8, 16, 16), channels=1)(item)
    assert out["image"].shape == (1, 8, 16, 16) and out["label"].shape == (1, 8, 16, 16)


def test_image_smaller_than_patch_is_padded_with_background_label_zero(tmp_path):
    item = _blobs_2d(tmp_path, shape=(20, 18))
    out = train_transforms(2, (32, 32), channels=1, augment=False)(item)
    assert out["image"].shape == (1, 32, 32) and out["label"].shape == (1, 32, 32)
    assert int((out["label"] == 4).sum()) == 100  # the whole nucleus is kept, nothing invented
    # padding takes the background median: no streaks through the nucleus rows or columns
    assert torch.equal(out["image"][0] > 0.5, out["label"][0] == 4)
    assert float(out["image"][0, 0, 0]) == 0.0 and float(out["image"][0, 10, 0]) == 0.0


def test_background_pad_uses_each_channel_median():
    image = torch.tensor([[[1.0, 1.0, 9.0]], [[5.0, 2.0, 2.0]]])  # (2, 1, 3)
    out = BackgroundPadd("image", (3, 5))({"image": image})["image"]
    assert out.shape == (2, 3, 5)
    torch.testing.assert_close(out[:, 1, 1:4], image[:, 0])  # centred as SpatialPad(method="symmetric")
    assert torch.all(out[0, 0] == 1.0) and torch.all(out[1, :, 0] == 2.0)
    assert BackgroundPadd("image", (1, 2))({"image": image})["image"] is image


def test_percentile_scaling_of_uint16_and_symmetric_range(tmp_path):
    ramp = (np.arange(1000, dtype=np.uint16).reshape(10, 100) * 60).astype(np.uint16)
    path = str(write_array(tmp_path / "ramp.tif", ramp))
    out = inference_transforms(2, channels=1)({"image": path})["image"]
    p_lo, p_hi = np.percentile(ramp.astype(np.float64), [1, 99.8])
    expected = np.clip((ramp - p_lo) / (p_hi - p_lo), 0, 1)
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-5)
    sym = inference_transforms(2, channels=1, value_range=(-1.0, 1.0))({"image": path})["image"]
    np.testing.assert_allclose(sym[0].numpy(), expected * 2 - 1, atol=1e-5)
    assert float(sym.min()) == -1.0 and float(sym.max()) == 1.0


def test_inference_keeps_meta_and_channels(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (9, 11, 3)).astype(np.uint8)
    path = str(write_array(tmp_path / "rgb.png", rgb))
    out = inference_transforms(2, channels=1, invert=True)({"image": path})["image"]
    assert isinstance(out, MetaTensor) and out.shape == (1, 9, 11)
    assert out.meta["filename_or_obj"] == path and out.meta["spatial_shape"] == (9, 11)


def test_non_square_patch_skips_rotation_and_bad_arguments():
    names = [type(t).__name__ for t in train_transforms(2, (16, 32), 1).transforms]
    assert "RandRotate90d" not in names and names.count("RandFlipd") == 2
    assert "RandRotate90d" in [type(t).__name__ for t in train_transforms(3, (8, 16, 16), 1).transforms]
    with pytest.raises(UDAInputError, match="patch_size must have 3"):
        train_transforms(3, (16, 16), 1)
    with pytest.raises(UDAInputError, match="value_range"):
        train_transforms(2, (16, 16), 1, value_range=(1.0, 0.0))
    with pytest.raises(UDAInputError, match="spatial_dims"):
        inference_transforms(4, 1)
