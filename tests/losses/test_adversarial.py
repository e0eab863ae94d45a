from __future__ import annotations

import math

import pytest
import torch

from monai_uda.losses.adversarial import discriminator_loss, gan_loss


def test_lsgan_values():
    pred = torch.tensor([[0.5, 2.0], [1.0, -1.0]])
    assert gan_loss(pred, True, "lsgan").item() == pytest.approx((0.25 + 1.0 + 0.0 + 4.0) / 4)
    assert gan_loss(pred, False, "lsgan").item() == pytest.approx((0.25 + 4.0 + 1.0 + 1.0) / 4)


def test_bce_values_and_stability():
    pred = torch.tensor([0.0, math.log(3.0)])  # sigmoid: 0.5 and 0.75
    assert gan_loss(pred, True, "bce").item() == pytest.approx((math.log(2) - math.log(0.75)) / 2)
    assert gan_loss(pred, False, "bce").item() == pytest.approx((math.log(2) - math.log(0.25)) / 2)
    assert math.isfinite(gan_loss(torch.tensor([200.0]), False, "bce").item())  # logits, no overflow


def test_list_and_discriminator_loss_and_bad_mode():
    a, b = torch.zeros(2, 1, 4, 4), torch.ones(1, 1, 2, 2)
    assert gan_loss([a, b], True).item() == pytest.approx(0.5)  # mean of 1 and 0
    assert discriminator_loss(torch.ones(3), torch.zeros(3)).item() == 0.0
    assert discriminator_loss(torch.zeros(3), torch.ones(3)).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="hinge"):
        gan_loss(a, True, "hinge")
