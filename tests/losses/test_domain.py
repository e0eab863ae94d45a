from __future__ import annotations

import math

import pytest
import torch

from monai_uda.losses.domain import background_consistency_loss, gaussian_kernel, mmd_loss, orthogonality_loss


def test_gaussian_kernel_hand_computed():
    x = torch.tensor([[0.0, 0.0]])
    y = torch.tensor([[3.0, 4.0]])  # squared distance 25
    k = gaussian_kernel(x, y, bandwidths=(12.5, 25.0))
    assert k.shape == (1, 1)
    assert k.item() == pytest.approx(math.exp(-1.0) + math.exp(-0.5), rel=1e-6)


def test_mmd_zero_for_identical_sets_and_grows_with_mean_shift():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    assert mmd_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    values = [mmd_loss(x, x + shift).item() for shift in (0.1, 0.5, 1.0, 3.0)]
    assert values[0] > 1e-4
    assert all(a < b for a, b in zip(values, values[1:]))


def test_mmd_single_bandwidth_hand_computed():
    # one sample each, k(x,x)=1, k(x,y)=exp(-d2/(2b)) -> MMD^2 = 2 - 2 exp(-d2/(2b))
    x, y = torch.tensor([[0.0]]), torch.tensor([[2.0]])
    assert mmd_loss(x, y, bandwidths=(2.0,)).item() == pytest.approx(2 - 2 * math.exp(-1.0), rel=1e-6)


def test_mmd_rejects_mismatched_dims():
    with pytest.raises(ValueError):
        mmd_loss(torch.zeros(3, 2), torch.zeros(3, 4))


def test_orthogonality_zero_for_orthogonal_features():
    shared = torch.zeros(1, 4, 2, 2)
    private = torch.zeros(1, 4, 2, 2)
    shared[0, :, 0, :] = torch.randn(4, 2)  # active only in row 0
    private[0, :, 1, :] = torch.randn(4, 2)  # active only in row 1
    assert orthogonality_loss(shared, private, channel_fraction=1.0).item() == 0.0


def test_orthogonality_identical_rank_one_is_one_and_uses_half_the_channels():
    feats = torch.ones(2, 4, 3, 3)
    assert orthogonality_loss(feats, feats.clone()).item() == pytest.approx(1.0, rel=1e-6)
    # correlation confined to the last half of the channels is ignored with the default fraction
    shared = torch.zeros(1, 4, 1, 2)
    private = torch.zeros(1, 4, 1, 2)
    shared[0, 3], private[0, 3] = 1.0, 1.0  # channel 3 identical at both positions
    shared[0, 0, 0, 0] = 1.0  # first half: shared active at position 0 only,
    private[0, 1, 0, 1] = 1.0  # private at position 1 only
    assert orthogonality_loss(shared, private).item() == 0.0
    # all channels: normalised rows give H_c^T H_p / 2 entries 1/(2 sqrt 2), 1/sqrt 2, 1/(2 sqrt 2)
    assert orthogonality_loss(shared, private, channel_fraction=1.0).item() == pytest.approx(0.75, rel=1e-6)


def test_background_consistency_zero_for_constant_background():
    features = torch.full((2, 3, 4, 4), 0.7)
    features[:, :, 1:3, 1:3] = torch.randn(2, 3, 2, 2)  # foreground varies freely
    probs = torch.zeros(2, 1, 4, 4)
    probs[:, :, 1:3, 1:3] = 0.9
    result = background_consistency_loss([features], [probs], [torch.tensor([0.9, 0.8])])
    assert result.loss.item() == pytest.approx(0.0, abs=1e-7)
    assert result.num_proposals == 2 and result.num_empty_images == 0


def test_background_consistency_hand_computed_and_score_filter():
    features = torch.zeros(2, 2, 1, 2)
    features[0, :, 0, 0] = torch.tensor([0.0, 0.0])
    features[0, :, 0, 1] = torch.tensor([2.0, 4.0])
    features[1] = 100.0  # low-score proposal: must be ignored
    probs = torch.zeros(2, 1, 1, 2)
    # mean background (1, 2); L1 distances 3 and 3 -> loss 3
    result = background_consistency_loss([features], [probs], [torch.tensor([0.9, 0.5])], score_threshold=0.5)
    assert result.loss.item() == pytest.approx(3.0)
    assert result.num_proposals == 1


def test_background_consistency_no_confident_proposals_is_zero_with_count():
    features = torch.randn(3, 4, 2, 2, requires_grad=True)
    empty = background_consistency_loss(
        [features, features[:0]],
        [torch.zeros(3, 1, 4, 4), torch.zeros(0, 1, 4, 4)],
        [torch.full((3,), 0.2), torch.zeros(0)],
    )
    assert empty.loss.item() == 0.0 and empty.num_proposals == 0 and empty.num_empty_images == 2
    assert torch.isfinite(empty.loss)


def test_background_consistency_gradient_reaches_features_only():
    features = torch.randn(1, 2, 2, 2, requires_grad=True)
    probs = torch.zeros(1, 1, 4, 4, requires_grad=True)  # resized to the feature size
    result = background_consistency_loss([features], [probs], [torch.tensor([1.0])])
    result.loss.backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert probs.grad is None
