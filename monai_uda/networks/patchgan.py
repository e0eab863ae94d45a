"""Markovian PatchGAN discriminators (pix2pix / CycleGAN / AD-GAN), 2D and 3D.

MONAI's ``monai.networks.nets.PatchDiscriminator`` only doubles one base width per layer and
returns every intermediate feature map; this one takes an explicit width per layer, returns
the patch logits only and can have several output branches (AD-GAN's one branch per domain).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["PatchDiscriminator"]


class PatchDiscriminator(nn.Module):
    """PatchGAN: 4x4 convolutions, LeakyReLU(0.2), normalisation on all but the first layer.

    With ``channels=(64, 128, 256, 512)`` this is the 70x70 PatchGAN of pix2pix/CycleGAN: the
    first ``len(channels) - 1`` convolutions have stride 2, the last width convolution stride 1,
    then a stride-1 4x4 convolution gives ``num_outputs`` logits per patch.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the judged image.
        channels: width of every feature layer.
        num_outputs: output branches (e.g. one per domain for AD-GAN's two-branch discriminator).
        norm: ``"instance"``, ``"batch"`` or ``None``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int] = (64, 128, 256, 512),
        num_outputs: int = 1,
        norm: str | None = "instance",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not channels:
            raise ValueError("channels must list at least one width")
        self.num_outputs = num_outputs
        act = ("leakyrelu", {"negative_slope": 0.2, "inplace": True})
        layers: list[nn.Module] = []
        previous = in_channels
        for index, width in enumerate(channels):
            layers.append(
                Convolution(
                    spatial_dims,
                    previous,
                    width,
                    strides=2 if index < len(channels) - 1 else 1,
                    kernel_size=4,
                    padding=1,
                    act=act,
                    norm=None if index == 0 or norm is None else norm,
                    bias=index == 0 or norm != "batch",
                )
            )
            previous = width
        layers.append(
            Convolution(spatial_dims, previous, num_outputs, strides=1, kernel_size=4, padding=1, conv_only=True)
        )
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, branch: torch.Tensor | None = None) -> torch.Tensor:
        """Patch logits.

        Args:
            x: ``(B, in_channels, *spatial)``.
            branch: optional ``(B,)`` integer index of the output branch per sample (e.g. the
                domain); when given, only that branch's logits are returned.

        Returns:
            ``(B, num_outputs, *patches)`` or, with ``branch``, ``(B, 1, *patches)``.
        """
        logits = self.model(x)
        if branch is None:
            return logits
        index = branch.long().view(-1, 1, *([1] * (logits.ndim - 2))).expand(-1, 1, *logits.shape[2:])
        return torch.gather(logits, 1, index)
