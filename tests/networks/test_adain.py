from __future__ import annotations

import pytest
import torch

from monai_uda.networks.adain import AdaIN, AdaINGenerator, domain_code


def _tiny(spatial_dims: int = 2, **kwargs) -> AdaINGenerator:
    torch.manual_seed(0)
    return AdaINGenerator(spatial_dims, channels=(4, 8, 16), num_res_blocks=2, mlp_channels=16, **kwargs)


def test_adain_hand_computed():
    x = torch.tensor([[[[1.0, 3.0]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    style = torch.tensor([[1.0, 0.0, 5.0, -1.0]])  # gamma (1, 0), beta (5, -1)
    out = AdaIN(2, eps=1e-12)(x, style)
    # channel 0: IN -> (-1, 1), scaled by 1 + 1 = 2, shifted by 5; channel 1: constant -> 0, shifted by -1
    torch.testing.assert_close(out, torch.tensor([[[[3.0, 7.0]], [[-1.0, -1.0]]]]))
    torch.testing.assert_close(AdaIN(2, eps=1e-12)(x, None)[0, 0], torch.tensor([[-1.0, 1.0]]))


def test_domain_code_onehot_and_interpolation():
    torch.testing.assert_close(domain_code(torch.tensor([0, 1]), 2), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(domain_code(0.25, 3), torch.tensor([[0.75, 0.25]] * 3))
    torch.testing.assert_close(domain_code(1, 1), torch.tensor([[0.0, 1.0]]))


def test_generator_shapes_2d_rgb_and_3d():
    net = _tiny(in_channels=3)
    x = torch.randn(2, 3, 32, 32)
    content = net.encode(x, torch.tensor([0, 1]))
    assert content.shape == (2, 16, 8, 8)
    out = net.decode(content, 1)
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1.0
    net3d = _tiny(3)
    assert net3d(torch.randn(1, 1, 16, 16, 16), 0, 1).shape == (1, 1, 16, 16, 16)
    assert AdaINGenerator(3).encoder.layers[0].conv.out_channels == 32  # 3D halves the paper's widths


def test_adain_conditioning_changes_output():
    net = _tiny()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        content_0, content_1 = net.encode(x, 0), net.encode(x, 1)
        assert (content_0 - content_1).abs().mean() > 1e-3  # encoder AdaIN reads the label
        out_0, out_1, out_half = net.decode(content_0, 0), net.decode(content_0, 1), net.decode(content_0, 0.5)
    assert (out_0 - out_1).abs().mean() > 1e-3
    # the interpolated label lies between the two domains' outputs (not equal to either)
    assert 0 < (out_half - out_0).abs().mean() < (out_1 - out_0).abs().mean() * 1.5


def test_encoder_without_adain_ignores_label():
    net = _tiny(encoder_adain=False)
    assert net.encoder.mlp is None
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.encode(x, 0), net.encode(x, 1))


def test_generator_bad_dims():
    with pytest.raises(ValueError):
        AdaINGenerator(1)
