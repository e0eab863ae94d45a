"""Output-space discriminator of CellSegUDA (Haq & Huang, MIDL 2020), after AdaptSegNet."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["OutputSpaceDiscriminator"]


class OutputSpaceDiscriminator(nn.Sequential):
    """Fully convolutional discriminator on segmentation probability maps.

    Five ``kernel_size`` (4) stride-2 convolutions with widths ``channels`` + ``(1,)``
    (paper: 64-128-256-512-1), LeakyReLU(0.2) after all but the last, no normalisation.
    The output is a map of real/fake logits (one per receptive field).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the probability map (1 for binary segmentation).
        channels: widths of the hidden convolutions.
        kernel_size: convolution kernel size.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        channels: Sequence[int] = (64, 128, 256, 512),
        kernel_size: int = 4,
    ) -> None:
        layers: list[nn.Module] = []
        widths = [in_channels, *channels]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers.append(
                Convolution(
                    spatial_dims,
                    cin,
                    cout,
                    strides=2,
                    kernel_size=kernel_size,
                    padding=1,
                    act=("leakyrelu", {"negative_slope": 0.2}),
                    norm=None,
                    bias=True,
                )
            )
        layers.append(
            Convolution(spatial_dims, widths[-1], 1, strides=2, kernel_size=kernel_size, padding=1, conv_only=True)
        )
        super().__init__(*layers)
