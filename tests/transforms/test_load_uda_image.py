"""LoadUDAImaged: files through monai_uda.data.io, arrays pass through, shape checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_uda.data.io import write_array
from monai_uda.errors import UDAInputError
from monai_uda.transforms import LoadUDAImaged, filename_of


def test_loads_image_and_label_with_meta(tmp_path):
    image = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    label = np.array([[0, 0, 7, 7], [0, 3, 3, 0], [0, 0, 0, 0]], dtype=np.uint16)
    item = {
        "image": str(write_array(tmp_path / "a.tif", image)),
        "label": str(write_array(tmp_path / "a_label.tif", label)),
    }
    out = LoadUDAImaged("image", label_keys="label", spatial_dims=2)(item)
    assert (
        isinstance(out["image"], MetaTensor) and out["image"].shape == (1, 3, 4) and out["image"].dtype == torch.float32
    )
    assert float(out["image"][0, 2, 3]) == 11000.0
    assert out["label"].shape == (1, 3, 4) and out["label"].dtype == torch.int32
    np.testing.assert_array_equal(out["label"][0].numpy(), label)
    assert filename_of(out["image"]) == item["image"]
    assert out["image"].meta["spatial_shape"] == (3, 4)


def test_arrays_pass_through_unchanged():
    array = np.ones((1, 5, 5), np.float32)
    out = LoadUDAImaged("image")({"image": array})
    assert out["image"] is array


def test_label_shape_mismatch_and_bad_values(tmp_path):
    item = {
        "image": str(write_array(tmp_path / "a.tif", np.zeros((4, 4), np.uint8))),
        "label": str(write_array(tmp_path / "b.tif", np.zeros((4, 5), np.uint8))),
    }
    with pytest.raises(UDAInputError, match=r"b.tif: label shape \(4, 5\) does not match image shape \(4, 4\)"):
        LoadUDAImaged("image", label_keys="label")(item)
    with pytest.raises(UDAInputError, match="file path or an array"):
        LoadUDAImaged("image")({"image": 3})
    with pytest.raises(UDAInputError, match="does not exist"):
        LoadUDAImaged("image")({"image": str(tmp_path / "missing.png")})
    with pytest.raises(UDAInputError, match="expected a 3D image"):
        LoadUDAImaged("image", spatial_dims=3)({"image": str(tmp_path / "a.tif")})
