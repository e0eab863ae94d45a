from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_uda.networks.patchgan import PatchDiscriminator


def test_patchgan_2d_shape_and_layers():
    torch.manual_seed(0)
    net = PatchDiscriminator(2, in_channels=3, channels=(8, 16, 32, 64))
    # 64 -> 32 -> 16 -> 8 (stride 2) -> 7 (4x4, stride 1, pad 1) -> 6
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 3  # none after the first convolution
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}


def test_patchgan_70x70_receptive_field():
    """Default widths give pix2pix's 70x70 PatchGAN: a centre logit sees exactly 70x70 pixels."""
    net = PatchDiscriminator(2, in_channels=1, norm=None).double()
    x = torch.zeros(1, 1, 140, 140, dtype=torch.float64, requires_grad=True)
    out = net(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    assert rows.max() - rows.min() + 1 == 70


def test_patchgan_branch_selection_and_3d():
    torch.manual_seed(0)
    net = PatchDiscriminator(3, in_channels=1, channels=(4, 8), num_outputs=2, norm="batch")
    x = torch.randn(2, 1, 16, 16, 16)
    both = net(x)
    assert both.shape == (2, 2, 6, 6, 6)  # 16 -> 8 (stride 2) -> 7 -> 6
    picked = net(x, branch=torch.tensor([1, 0]))
    assert picked.shape == (2, 1, 6, 6, 6)
    torch.testing.assert_close(picked[0, 0], both[0, 1])
    torch.testing.assert_close(picked[1, 0], both[1, 0])
    assert any(isinstance(m, nn.BatchNorm3d) for m in net.modules())


def test_patchgan_bad_dims():
    with pytest.raises(ValueError):
        PatchDiscriminator(1, in_channels=1)
