"""GAN losses on raw discriminator logits: least squares (LSGAN) and binary cross-entropy.

Both criteria take the raw logits, as LSGAN (Mao et al., 2017) and CycleGAN define them.
:class:`monai.losses.PatchAdversarialLoss` computes the same least-squares loss only with
``no_activation_leastsq=True`` (by default it applies a LeakyReLU to the logits first), and its
``bce`` criterion is a sigmoid followed by ``BCELoss``, which saturates for large logits where
``binary_cross_entropy_with_logits`` stays exact; hence these few lines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["GAN_MODES", "gan_loss", "discriminator_loss"]

GAN_MODES = ("lsgan", "bce")


def gan_loss(pred: torch.Tensor | list[torch.Tensor], target_is_real: bool, mode: str = "lsgan") -> torch.Tensor:
    """Mean GAN loss of discriminator logits against an all-real (1) or all-fake (0) target.

    ``lsgan``: ``mean((pred - y)^2)`` (Mao et al., 2017); ``bce``:
    ``mean(-y log s(pred) - (1 - y) log(1 - s(pred)))`` with the sigmoid ``s``.

    Args:
        pred: logits of any shape (patch maps, per-instance scores), or a list of them
            (multi-scale discriminators: the losses are averaged).
        target_is_real: ``True`` for y = 1 (real / source), ``False`` for y = 0 (fake / target).
        mode: ``"lsgan"`` or ``"bce"``.
    """
    if mode not in GAN_MODES:
        raise ValueError(f"unknown GAN loss mode {mode!r}; choose one of {GAN_MODES}")
    if isinstance(pred, (list, tuple)):
        return torch.stack([gan_loss(p, target_is_real, mode) for p in pred]).mean()
    target = torch.full_like(pred, 1.0 if target_is_real else 0.0)
    if mode == "lsgan":
        return F.mse_loss(pred, target)
    return F.binary_cross_entropy_with_logits(pred, target)


def discriminator_loss(pred_real: torch.Tensor, pred_fake: torch.Tensor, mode: str = "lsgan") -> torch.Tensor:
    """``0.5 * (L(real, 1) + L(fake, 0))``: the halved discriminator objective of pix2pix/CycleGAN."""
    return 0.5 * (gan_loss(pred_real, True, mode) + gan_loss(pred_fake, False, mode))
