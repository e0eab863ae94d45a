"""CycleGAN pieces (Zhu et al., ICCV 2017) for CyC-PDAM's appearance adaptation, 2D and 3D.

* :class:`ResnetGenerator` -- the ResNet generator: 7x7 stem, two stride-2 downsamplings,
  ``num_blocks`` residual blocks (9 for 256-pixel patches, 6 for 128), two transposed-conv
  upsamplings and a 7x7 tanh output; reflection padding and instance normalisation.
* :class:`ImagePool` -- the history buffer of generated images (Shrivastava et al., 2017)
  that the discriminators are trained on (size 50 in CycleGAN).

The discriminators are :class:`monai_uda.networks.patchgan.PatchDiscriminator` (70x70 PatchGAN).
"""

from __future__ import annotations

import random
from typing import Any

import torch
from monai.networks.layers.factories import Act, Conv, Dropout, Norm
from torch import nn

__all__ = ["ResnetBlock", "ResnetGenerator", "ImagePool"]


def _conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Module:
    """Convolution with reflection padding ("same" size for stride 1)."""
    conv_type = Conv[Conv.CONV, spatial_dims]
    return conv_type(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, padding_mode="reflect"
    )


def _norm(spatial_dims: int, channels: int, norm: str) -> nn.Module:
    if norm == "instance":
        return Norm[Norm.INSTANCE, spatial_dims](channels, affine=False)
    if norm == "batch":
        return Norm[Norm.BATCH, spatial_dims](channels)
    raise ValueError(f"norm must be 'instance' or 'batch', got {norm!r}")


class ResnetBlock(nn.Module):
    """``x + conv-norm-relu-(dropout)-conv-norm(x)`` with reflection padding."""

    def __init__(self, spatial_dims: int, channels: int, norm: str = "instance", dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            _conv(spatial_dims, channels, channels, 3),
            _norm(spatial_dims, channels, norm),
            Act[Act.RELU](inplace=True),
        ]
        if dropout > 0:
            layers.append(Dropout[Dropout.DROPOUT, spatial_dims](dropout))
        layers += [_conv(spatial_dims, channels, channels, 3), _norm(spatial_dims, channels, norm)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator; input and output in [-1, 1] (tanh output).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input domain (1 for fluorescence, 3 for RGB).
        out_channels: channels of the output domain.
        channels: width of the first layer (``ngf``, 64 in CycleGAN), doubled per downsampling.
        num_blocks: residual blocks (9 for 256-pixel training patches, 6 for 128).
        num_downsamplings: stride-2 stages (2 in CycleGAN); spatial sizes must be divisible
            by ``2 ** num_downsamplings``.
        norm: ``"instance"`` (CycleGAN) or ``"batch"``.
        dropout: dropout inside the residual blocks (0 in CycleGAN).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: int = 64,
        num_blocks: int = 9,
        num_downsamplings: int = 2,
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.divisor = 2**num_downsamplings
        relu = Act[Act.RELU]
        layers: list[nn.Module] = [
            _conv(spatial_dims, in_channels, channels, 7),
            _norm(spatial_dims, channels, norm),
            relu(inplace=True),
        ]
        width = channels
        for _ in range(num_downsamplings):
            layers += [
                _conv(spatial_dims, width, width * 2, 3, stride=2),
                _norm(spatial_dims, width * 2, norm),
                relu(inplace=True),
            ]
            width *= 2
        layers += [ResnetBlock(spatial_dims, width, norm, dropout) for _ in range(num_blocks)]
        up_type = Conv[Conv.CONVTRANS, spatial_dims]
        for _ in range(num_downsamplings):
            layers += [
                up_type(width, width // 2, 3, stride=2, padding=1, output_padding=1),
                _norm(spatial_dims, width // 2, norm),
                relu(inplace=True),
            ]
            width //= 2
        layers += [_conv(spatial_dims, width, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` in [-1, 1] -> ``(B, out_channels, *spatial)`` in [-1, 1]."""
        if x.ndim != self.spatial_dims + 2 or any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(
                f"expected a (B, C, *{self.spatial_dims} spatial) input with sizes divisible by {self.divisor}, "
                f"got {tuple(x.shape)}"
            )
        return self.model(x)


class ImagePool:
    """History of generated images: the discriminator sees a mix of new and older fakes.

    With probability 0.5 a new image replaces a random stored one, which is returned instead
    (once the pool is full); otherwise the new image is returned. ``pool_size=0`` disables it.
    :meth:`state_dict` holds the stored images and the random generator's state, so a resumed
    run draws the same images as an uninterrupted one.

    Args:
        pool_size: images kept (CycleGAN: 50).
        seed: seed of the pool's own random generator (reproducible runs).
    """

    def __init__(self, pool_size: int = 50, seed: int = 0) -> None:
        self.pool_size = pool_size
        self.images: list[torch.Tensor] = []
        self._random = random.Random(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Return a batch of the same shape, each item new or from the history (detached)."""
        images = images.detach()
        if self.pool_size == 0:
            return images
        out = []
        for image in images:
            if len(self.images) < self.pool_size:
                self.images.append(image.clone())
                out.append(image)
            elif self._random.random() < 0.5:
                index = self._random.randrange(self.pool_size)
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        """Stored images and the generator state (tensors, ints and tuples: ``weights_only`` loads it)."""
        return {"images": list(self.images), "random": self._random.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; more images than ``pool_size`` is a ``ValueError``."""
        if len(state["images"]) > self.pool_size:
            raise ValueError(
                f"image pool state holds {len(state['images'])} images, more than pool_size {self.pool_size}"
            )
        self.images = [image.clone() for image in state["images"]]
        self._random.setstate(state["random"])
