"""ChannelPolicy: grey <-> RGB, inversion and channel-count errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_uda.errors import UDAInputError
from monai_uda.transforms import ChannelPolicy, ChannelPolicyd, scale_intensity_percentiles


def test_grey_to_rgb_repeats_the_channel():
    grey = torch.tensor([[[0.0, 0.25], [0.5, 1.0]]])
    rgb = ChannelPolicy(3)(grey)
    assert rgb.shape == (3, 2, 2)
    for c in range(3):
        assert torch.equal(rgb[c], grey[0])


def test_rgb_to_grey_is_luminance():
    rgb = np.zeros((3, 1, 3), dtype=np.float32)
    rgb[0, 0, 0] = 1.0  # pure red
    rgb[1, 0, 1] = 1.0  # pure green
    rgb[:, 0, 2] = (0.2, 0.4, 0.6)
    grey = ChannelPolicy(1)(rgb)
    assert isinstance(grey, np.ndarray) and grey.shape == (1, 1, 3)
    np.testing.assert_allclose(grey[0, 0], [0.299, 0.587, 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6], rtol=1e-6)


def test_same_count_passes_and_integer_input_becomes_float():
    image = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    out = ChannelPolicy(2)(image)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, image.astype(np.float32))


def test_invert_after_scaling_maps_unit_range_and_symmetric_range():
    grey = torch.tensor([[[0.0, 0.2], [0.7, 1.0]]])
    np.testing.assert_allclose(ChannelPolicy(1, invert=True)(grey)[0], [[1.0, 0.8], [0.3, 0.0]], atol=1e-6)
    symmetric = grey * 2 - 1  # value range (-1, 1) of AD-GAN
    np.testing.assert_allclose(ChannelPolicy(1, invert=True)(symmetric), -symmetric, atol=1e-6)
    rgb = ChannelPolicy(3, invert=True)(grey)
    assert rgb.shape == (3, 2, 2) and float(rgb[:, 0, 0].min()) == 1.0 and float(rgb[:, 1, 1].max()) == 0.0


def test_fluorescence_becomes_dark_on_bright_after_percentile_scaling():
    # bright nucleus (uint16 values) on a dark background, as read from a 16-bit TIFF
    image = np.full((1, 20, 20), 100.0, dtype=np.float32)
    image[0, 5:10, 5:10] = 4000.0
    d = scale_intensity_percentiles("image")({"image": image})
    out = ChannelPolicyd("image", channels=3, invert=True)(d)["image"]
    assert out.shape == (3, 20, 20)
    assert float(out[:, 0, 0].min()) == pytest.approx(1.0)  # background white
    assert float(out[:, 7, 7].max()) == pytest.approx(0.0)  # nucleus black


@pytest.mark.parametrize("count,channels", [(5, 3), (2, 1), (2, 3), (3, 2)])
def test_wrong_channel_count_names_the_file(count, channels):
    image = MetaTensor(torch.zeros(count, 4, 4), meta={"filename_or_obj": "data/img1.png"})
    with pytest.raises(UDAInputError, match=rf"^data/img1.png: image has {count} channels"):
        ChannelPolicy(channels)(image)
    with pytest.raises(UDAInputError, match="image has 5 channels"):
        ChannelPolicyd("image", 1)({"image": np.zeros((5, 4, 4), np.float32)})


def test_meta_survives_conversion():
    image = MetaTensor(torch.rand(1, 4, 4), meta={"filename_or_obj": "a.tif"})
    out = ChannelPolicy(3)(image)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a.tif"


def test_bad_channels_argument():
    with pytest.raises(UDAInputError, match="positive integer"):
        ChannelPolicy(0)
