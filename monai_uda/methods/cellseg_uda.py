"""CellSegUDA / CellSegSSDA (Haq & Huang, "Adversarial domain adaptation for cell
segmentation", MIDL 2020): one training iteration per call of :meth:`CellSegUDA.step`.

Networks: segmenter S (U-Net), reconstructor R (U-Net mapping S's target prediction back to
the target image) and discriminator D on the output space. Losses, in the paper's numbering:

* eq 1  L_seg   = soft Dice(S(x_s), y_s) on source images,
* eq 2  L_adv   = BCE(D(S(x_t)), source) -- S learns to make target predictions look like source ones,
* eq 3  L_recons = MSE(R(S(x_t)), x_t),
* eq 4  L_S     = L_seg + lambda_adv L_adv + lambda_recons L_recons (S and R are updated),
* eq 5  L_D     = BCE(D(S(x_s)), source) + BCE(D(S(x_t)), target) (D is updated, S's outputs detached),
* eq 6  SSDA: + soft Dice(S(x_t), y_t) on the labelled target images of the batch.

For SSDA the target domain may be partly labelled: a batch carries ``target_labelled`` (one bool per
item), eq 6 is the Dice of the labelled items alone (0 when the batch has none), and every target item,
labelled or not, feeds eqs 2, 3 and 5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from monai_uda.engines.method import AdaptationMethod
from monai_uda.errors import UDAInputError

__all__ = ["CellSegUDA", "MODES"]

#: the paper's table rows
MODES = ("source_only", "no_recons", "uda", "ssda", "target_only")


class CellSegUDA(AdaptationMethod):
    """CellSegUDA and its table rows as one method.

    Args:
        segmenter: S, image -> 1-channel logits.
        reconstructor: R, 1-channel probability -> image (``None`` allowed for modes without it).
        discriminator: D, 1-channel probability -> logit map (``None`` for ``source_only``/``target_only``).
        mode: ``"source_only"`` (Dice on source), ``"no_recons"`` (adversarial only: the
            DA-ADV-style baseline), ``"uda"`` (eq 4), ``"ssda"`` (eq 4 + eq 6), ``"target_only"``
            (Dice on labelled target images: the upper bound).
        lr_segmenter, lr_discriminator, lr_reconstructor: Adam learning rates (paper 1e-4, 1e-3, 1e-3).
        lambda_adv, lambda_recons: weights of eq 4 (paper 0.001, 0.01).
        betas: Adam betas for all three optimisers.
        amp: autocast the forward passes.
    """

    inference_network_name = "segmenter"

    def __init__(
        self,
        segmenter: nn.Module,
        reconstructor: nn.Module | None = None,
        discriminator: nn.Module | None = None,
        mode: str = "uda",
        lr_segmenter: float = 1e-4,
        lr_discriminator: float = 1e-3,
        lr_reconstructor: float = 1e-3,
        lambda_adv: float = 0.001,
        lambda_recons: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.99),
        amp: bool = False,
    ) -> None:
        super().__init__(amp=amp)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.mode = mode
        self.adversarial = mode in ("no_recons", "uda", "ssda")
        self.reconstruct = mode in ("uda", "ssda")
        if self.adversarial and discriminator is None:
            raise ValueError(f"mode {mode!r} needs a discriminator")
        if self.reconstruct and reconstructor is None:
            raise ValueError(f"mode {mode!r} needs a reconstructor")
        self.segmenter = segmenter
        self.optimizers["segmenter"] = torch.optim.Adam(segmenter.parameters(), lr=lr_segmenter, betas=betas)
        if self.reconstruct:
            self.reconstructor = reconstructor
            self.optimizers["reconstructor"] = torch.optim.Adam(
                reconstructor.parameters(), lr=lr_reconstructor, betas=betas
            )
        if self.adversarial:
            self.discriminator = discriminator
            self.optimizers["discriminator"] = torch.optim.Adam(
                discriminator.parameters(), lr=lr_discriminator, betas=betas
            )
        self.loss_weights = {"adv": lambda_adv, "recons": lambda_recons}
        self.dice = DiceLoss(sigmoid=True)

    def _dice(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.dice(logits.float(), (label > 0).float())

    def _bce(self, logits: torch.Tensor, is_source: bool) -> torch.Tensor:
        target = torch.full_like(logits, 1.0 if is_source else 0.0)
        return F.binary_cross_entropy_with_logits(logits.float(), target)

    def step(self, engine: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One iteration of CellSegUDA (eqs 1-6, see the module docstring)."""
        losses: dict[str, torch.Tensor] = {}
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

        if self.mode == "target_only":
            with self.autocast():
                loss = self._dice(self.segmenter(batch["target_image"]), batch["target_label"])  # eq 1 on target
            self.backward(loss, "segmenter")
            self.step_optimizer("segmenter")
            return {"seg": loss.detach()}

        x_s, x_t = batch["source_image"], batch["target_image"]
        if self.mode == "ssda" and "target_labelled" not in batch:
            raise UDAInputError(
                "mode 'ssda' needs labelled target items in each batch (target_label_fraction null: the "
                "datalist's labelled target items, or a share above 0)"
            )
        with self.autocast():
            logits_s = self.segmenter(x_s)
            total = losses["seg"] = self._dice(logits_s, batch["source_label"])  # eq 1
            if self.mode != "source_only":
                logits_t = self.segmenter(x_t)
                prob_s, prob_t = torch.sigmoid(logits_s), torch.sigmoid(logits_t)
            if self.adversarial:
                self.set_requires_grad(self.discriminator, False)
                losses["adv"] = self._bce(self.discriminator(prob_t), is_source=True)  # eq 2
                total = total + self.loss_weights["adv"] * losses["adv"]
            if self.reconstruct:
                recon = self.reconstructor(prob_t)
                losses["recons"] = F.mse_loss(recon.float(), x_t.float())  # eq 3
                total = total + self.loss_weights["recons"] * losses["recons"]
            if self.mode == "ssda":
                labelled = batch["target_labelled"].reshape(-1).bool()
                if labelled.any():  # eq 6, on whichever items of the batch carry labels
                    losses["seg_target"] = self._dice(logits_t[labelled], batch["target_label"][labelled])
                    total = total + losses["seg_target"]
                else:
                    losses["seg_target"] = torch.zeros((), device=x_t.device)
        self.backward(total, "segmenter", *(["reconstructor"] if self.reconstruct else []))  # eq 4
        self.step_optimizer("segmenter")
        if self.reconstruct:
            self.step_optimizer("reconstructor")

        if self.adversarial:  # eq 5
            self.set_requires_grad(self.discriminator, True)
            with self.autocast():
                loss_d = 0.5 * (
                    self._bce(self.discriminator(prob_s.detach()), is_source=True)
                    + self._bce(self.discriminator(prob_t.detach()), is_source=False)
                )
            self.backward(loss_d, "discriminator")
            self.step_optimizer("discriminator")
            losses["disc"] = loss_d
        losses["total"] = total
        return {k: v.detach() for k, v in losses.items()}
