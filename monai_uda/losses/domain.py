"""Feature-level domain losses of DARCNN (Hsu et al., CVPR 2021).

* :func:`mmd_loss` -- L_sim, the maximum mean discrepancy between shared source and target
  features with a multi-bandwidth Gaussian kernel (eq 2);
* :func:`orthogonality_loss` -- L_diff, the soft subspace orthogonality between shared and
  private features (eq 3);
* :func:`background_consistency_loss` -- L_target, the self-supervised background
  representation consistency inside confident target proposals (eqs 4-6).

All functions are pure (no learnable state); the learned projection applied before L_sim
lives in :class:`monai_uda.networks.domain_separation.DomainSeparationMaskRCNN`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_BANDWIDTHS",
    "BackgroundConsistency",
    "gaussian_kernel",
    "mmd_loss",
    "orthogonality_loss",
    "background_consistency_loss",
]

#: kernel bandwidths ``b`` of ``exp(-||x - y||^2 / (2 b))``, the multi-scale set of the domain
#: separation networks (Bousmalis et al., 2016) that DARCNN's L_sim uses
DEFAULT_BANDWIDTHS: tuple[float, ...] = (
    1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 100.0, 1e3, 1e4, 1e5, 1e6,
)


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS) -> torch.Tensor:
    """Sum of Gaussian kernels ``k(x, y) = sum_b exp(-||x - y||^2 / (2 b))`` for all pairs.

    Args:
        x: ``(N, D)`` samples.
        y: ``(M, D)`` samples.
        bandwidths: the kernel bandwidths ``b`` (variances), all positive.

    Returns:
        ``(N, M)`` kernel matrix.
    """
    dist2 = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    scales = 1.0 / (2.0 * torch.as_tensor(bandwidths, dtype=dist2.dtype, device=dist2.device))
    return torch.exp(-dist2.unsqueeze(-1) * scales).sum(-1)


def mmd_loss(
    source: torch.Tensor, target: torch.Tensor, bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS
) -> torch.Tensor:
    """Squared maximum mean discrepancy between two sample sets (DARCNN eq 2, L_sim).

    ``MMD^2 = E[k(s, s')] - 2 E[k(s, t)] + E[k(t, t')]`` with the (biased, non-negative)
    V-statistic estimate over all pairs and :func:`gaussian_kernel`.

    Args:
        source: ``(N, D)`` source samples (e.g. projected shared features at N positions).
        target: ``(M, D)`` target samples.
        bandwidths: see :func:`gaussian_kernel`.

    Returns:
        scalar tensor, 0 for identical sample sets, growing with the distributions' distance.
    """
    if source.ndim != 2 or target.ndim != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) samples, got {tuple(source.shape)} and {tuple(target.shape)}")
    k_ss = gaussian_kernel(source, source, bandwidths).mean()
    k_tt = gaussian_kernel(target, target, bandwidths).mean()
    k_st = gaussian_kernel(source, target, bandwidths).mean()
    return (k_ss + k_tt - 2.0 * k_st).clamp_min(0.0)


def orthogonality_loss(shared: torch.Tensor, private: torch.Tensor, channel_fraction: float = 0.5) -> torch.Tensor:
    """Soft subspace orthogonality between shared and private features (DARCNN eq 3, L_diff).

    ``||H_c^T H_p||_F^2`` where the rows of ``H_c``/``H_p`` are the feature vectors of the
    first ``channel_fraction`` of the channels at every position of every image. Rows are
    L2-normalised and the product divided by the number of rows, so the loss lies in [0, 1]
    (0: the two feature subspaces are orthogonal; 1: identical rank-one features).

    Args:
        shared: ``(B, C, *spatial)`` shared-encoder features.
        private: private-encoder features of the same shape.
        channel_fraction: fraction of the channels (the first ones) the constraint applies to;
            DARCNN uses half, leaving the other half free.

    Returns:
        scalar tensor.
    """
    if shared.shape != private.shape:
        raise ValueError(
            f"shared and private features differ in shape: {tuple(shared.shape)} vs {tuple(private.shape)}"
        )
    if not 0.0 < channel_fraction <= 1.0:
        raise ValueError(f"channel_fraction must be in (0, 1], got {channel_fraction}")
    channels = max(1, round(shared.shape[1] * channel_fraction))
    h_c = F.normalize(shared[:, :channels].movedim(1, -1).reshape(-1, channels), dim=1)
    h_p = F.normalize(private[:, :channels].movedim(1, -1).reshape(-1, channels), dim=1)
    correlation = h_c.transpose(0, 1) @ h_p / h_c.shape[0]
    return correlation.pow(2).sum()


class BackgroundConsistency(NamedTuple):
    """Result of :func:`background_consistency_loss`."""

    #: mean over images of eq 6 (0 when no image has a confident proposal with background)
    loss: torch.Tensor
    #: proposals with score above the threshold, over the whole batch
    num_proposals: int
    #: images that contributed nothing (no confident proposal or no background pixel in them)
    num_empty_images: int


def background_consistency_loss(
    roi_features: Sequence[torch.Tensor],
    mask_probs: Sequence[torch.Tensor],
    scores: Sequence[torch.Tensor],
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
) -> BackgroundConsistency:
    """Self-supervised background representation consistency (DARCNN eqs 4-6, L_target).

    For every image: keep the proposals with score > ``score_threshold`` (k, eq 4), call
    background the pooled positions where the predicted mask probability is below
    ``mask_threshold`` (i, eq 4), average their features into the image's background
    representation (eq 5) and penalise each background feature's L1 distance to it (eq 6).
    The mask only selects positions (no gradient flows through it); the gradient reaches the
    encoders through ``roi_features``.

    Args:
        roi_features: per image, ``(N_i, C, h, w)`` RoI-aligned features of its proposals.
        mask_probs: per image, ``(N_i, 1, h', w')`` mask probabilities (resized to ``(h, w)``).
        scores: per image, ``(N_i,)`` detection scores.
        score_threshold: k, minimum (exclusive) proposal score.
        mask_threshold: i, mask probability below which a position is background.

    Returns:
        :class:`BackgroundConsistency`; ``loss`` is a well-defined 0 when no image contributes.
    """
    if not (len(roi_features) == len(mask_probs) == len(scores)) or not roi_features:
        raise ValueError("roi_features, mask_probs and scores need one (equal, non-zero) entry per image")
    per_image: list[torch.Tensor] = []
    num_proposals = 0
    for features, probs, score in zip(roi_features, mask_probs, scores):
        keep = score > score_threshold
        num_proposals += int(keep.sum())
        if not bool(keep.any()):
            continue
        features, probs = features[keep], probs[keep].detach()
        if probs.shape[-2:] != features.shape[-2:]:
            probs = F.interpolate(probs, size=features.shape[-2:], mode="bilinear", align_corners=False)
        background = features.movedim(1, -1)[probs[:, 0] < mask_threshold]  # (P, C)
        if background.shape[0] == 0:
            continue
        mean_background = background.mean(0, keepdim=True)  # eq 5
        per_image.append((background - mean_background).abs().sum(1).mean())  # eq 6
    loss = torch.stack(per_image).mean() if per_image else roi_features[0].new_zeros(())
    return BackgroundConsistency(loss, num_proposals, len(roi_features) - len(per_image))
