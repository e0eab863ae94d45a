from __future__ import annotations

import torch

from monai_uda.networks.gradient_reversal import GradientReversal, grad_reverse


def test_forward_is_identity_and_backward_flips_and_scales():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = grad_reverse(x, alpha=0.5)
    assert torch.equal(y, x)
    (y * torch.tensor([2.0, 4.0, -6.0])).sum().backward()
    # d/dx of sum(w * x) is w; reversed and scaled by 0.5
    assert torch.allclose(x.grad, torch.tensor([-1.0, -2.0, 3.0]))


def test_module_alpha_is_settable_and_zero_cuts_the_gradient():
    layer = GradientReversal(alpha=1.0)
    x = torch.ones(2, requires_grad=True)
    (3.0 * layer(x)).sum().backward()
    assert torch.allclose(x.grad, torch.full((2,), -3.0))
    x.grad = None
    layer.set_alpha(0.0)
    (3.0 * layer(x)).sum().backward()
    assert torch.equal(x.grad, torch.zeros(2))
    assert "alpha=0.0" in repr(layer) and not list(layer.parameters())


def test_only_the_layers_before_the_reversal_see_the_reversed_gradient():
    torch.manual_seed(0)
    feature, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    x = torch.randn(4, 2)
    head(grad_reverse(feature(x), 2.0)).sum().backward()
    grad_reversed = (feature.weight.grad.clone(), head.weight.grad.clone())
    feature.zero_grad(), head.zero_grad()
    head(feature(x)).sum().backward()
    assert torch.allclose(grad_reversed[0], -2.0 * feature.weight.grad)
    assert torch.allclose(grad_reversed[1], head.weight.grad)  # the discriminator itself is unaffected
