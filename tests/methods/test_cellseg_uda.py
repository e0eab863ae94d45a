"""CellSegSSDA's step on partly labelled target batches: eq 6 on the labelled items only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_uda.errors import UDAInputError
from monai_uda.methods.cellseg_uda import CellSegUDA


def _zero_conv() -> nn.Conv2d:
    """A 1x1 convolution that outputs 0 everywhere (sigmoid 0.5) until it is trained."""
    conv = nn.Conv2d(1, 1, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _method() -> CellSegUDA:
    return CellSegUDA(_zero_conv(), reconstructor=_zero_conv(), discriminator=_zero_conv(), mode="ssda")


def _batch(labelled: list[bool]) -> dict[str, torch.Tensor]:
    """2x2 target images; item k's label covers ``(4, 0, 2, 0)[k]`` pixels (0 for the unlabelled)."""
    size = len(labelled)
    target_label = torch.zeros(size, 1, 2, 2, dtype=torch.int32)
    target_label[0] = 1  # 4 foreground pixels
    if size > 2:
        target_label[2, 0, 0] = 1  # 2 foreground pixels
    return {
        "source_image": torch.zeros(size, 1, 2, 2),
        "source_label": torch.ones(size, 1, 2, 2, dtype=torch.int32),
        "target_image": torch.zeros(size, 1, 2, 2),
        "target_label": target_label,
        "target_labelled": torch.tensor(labelled),
    }


def test_eq6_is_the_dice_of_the_labelled_items_only():
    """S outputs p = 0.5 on 4 pixels: Dice loss 1 - 2*0.5|y| / (0.5*4 + |y|) per item.

    Item 0 (|y| = 4): 1 - 4/6 = 1/3; item 2 (|y| = 2): 1 - 2/4 = 1/2; their mean 5/12. With the two
    unlabelled all-zero items it would be (1/3 + 1 + 1/2 + 1) / 4 = 17/24.
    """
    losses = _method().step(None, _batch([True, False, True, False]))
    assert losses["seg_target"].item() == pytest.approx(5 / 12, abs=1e-5)
    assert losses["seg"].item() == pytest.approx(1 / 3, abs=1e-5)  # eq 1: every source item |y| = 4
    expected_total = losses["seg"] + 0.001 * losses["adv"] + 0.01 * losses["recons"] + losses["seg_target"]
    assert losses["total"].item() == pytest.approx(expected_total.item(), abs=1e-6)  # eq 4 + eq 6


def test_batches_with_one_or_no_labelled_item():
    assert _method().step(None, _batch([True, False]))["seg_target"].item() == pytest.approx(1 / 3, abs=1e-5)
    method = _method()
    before = method.segmenter.bias.detach().clone()
    losses = method.step(None, _batch([False, False]))
    assert losses["seg_target"].item() == 0.0
    assert not torch.equal(before, method.segmenter.bias)  # S still adapts (eqs 1-4) on an unlabelled batch


def test_ssda_batch_without_target_labels_is_refused():
    batch = _batch([True, False])
    del batch["target_labelled"]
    with pytest.raises(UDAInputError, match="mode 'ssda' needs labelled target items"):
        _method().step(None, batch)
