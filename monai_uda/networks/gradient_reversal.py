"""Gradient reversal layer (Ganin & Lempitsky, ICML 2015), as used by CyC-PDAM's discriminators.

Forward it is the identity; backward it multiplies the incoming gradient by ``-alpha``, so a
domain discriminator placed after it is trained to *separate* the domains while the features
before it are trained to *confuse* it, within one optimiser step. CyC-PDAM's paper keeps
``alpha`` at 1 and weights the domain losses with eq 5's ramp; its released code ramps ``alpha``
instead (:class:`monai_uda.methods.cyc_pdam.PDAMStage`, ``alpha_da_on``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["GradientReversalFunction", "grad_reverse", "GradientReversal"]


class GradientReversalFunction(torch.autograd.Function):
    """``y = x``; ``dL/dx = -alpha * dL/dy``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.alpha = float(alpha)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output.neg() * ctx.alpha, None


def grad_reverse(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Identity whose backward pass scales the gradient by ``-alpha``."""
    return GradientReversalFunction.apply(x, alpha)


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse` with a settable ``alpha`` (no parameters).

    Args:
        alpha: gradient scale of the reversal (``0`` cuts the adversarial gradient).
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def set_alpha(self, alpha: float) -> None:
        """Change the reversal strength (e.g. every iteration from the eq-5 ramp)."""
        self.alpha = float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
