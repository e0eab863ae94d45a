"""AD-GAN's unified generator: an auto-encoder whose every convolution is followed by AdaIN.

Yao et al., AD-GAN: one encoder and one decoder serve both domains (real images and synthetic
masks); the domain is chosen by a one-hot *domain label* that an MLP (2 -> 256 -> 256 -> n_s)
turns into the mean and standard deviation of every adaptive instance normalisation (AdaIN)
layer. Encoding with the source label and decoding with the target label translates.

Encoder: 7x7 conv -> two stride-2 4x4 convs -> residual blocks; decoder: residual blocks ->
two stride-2 transposed convs -> 7x7 conv -> tanh. ``spatial_dims`` 2 or 3.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from monai_uda import flag

__all__ = ["AdaIN", "AdaINGenerator", "DomainTranslator", "IMAGE_DOMAIN", "MASK_DOMAIN", "StyledStack", "domain_code"]


def domain_code(domain: torch.Tensor | float | int, batch_size: int, num_domains: int = 2, device=None) -> torch.Tensor:
    """Domain label -> ``(B, num_domains)`` code for the style MLP.

    Args:
        domain: ``(B,)`` integer domain ids (one-hot), ``(B, num_domains)`` codes (used as
            given), or one number for the whole batch; with two domains a float ``t`` in
            ``[0, 1]`` gives the interpolated label ``(1 - t, t)`` (AD-GAN's domain-label
            interpolation).
        batch_size: batch size when ``domain`` is a single number.
        num_domains: number of domains.
        device: device of the returned code.
    """
    domain = torch.as_tensor(domain, device=device)
    if domain.ndim == 2:
        return domain.float()
    if domain.ndim == 0:
        domain = domain.expand(batch_size)
    if domain.is_floating_point() and num_domains == 2:
        t = domain.float().unsqueeze(1)
        return torch.cat([1.0 - t, t], dim=1)
    return F.one_hot(domain.long(), num_domains).float()


class AdaIN(nn.Module):
    """Adaptive instance normalisation: ``(1 + gamma) * IN(x) + beta``.

    ``gamma`` and ``beta`` (the style's standard deviation offset and mean) come per sample from
    the style MLP; with ``style=None`` the layer is a plain (non-affine) instance norm, which is
    the "no AdaIN in the encoder" ablation.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.style_size = 2 * num_features
        self.eps = eps

    def forward(self, x: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        if style is None:
            return F.instance_norm(x, eps=self.eps)
        # instance norm of (B, C) is batch norm of (1, B * C): one fused kernel applies the
        # per-sample scale and shift too (no separate multiply and add)
        gamma, beta = style.chunk(2, dim=1)
        batch, channels = x.shape[:2]
        out = F.batch_norm(
            x.reshape(1, batch * channels, *x.shape[2:]), None, None,
            (1.0 + gamma).reshape(-1), beta.reshape(-1), training=True, eps=self.eps,
        )  # fmt: skip
        return out.view_as(x)


class _ConvAdaIN(nn.Module):
    """Convolution (or transposed convolution) -> AdaIN -> ReLU."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, **conv) -> None:
        super().__init__()
        self.conv = Convolution(
            spatial_dims, in_channels, out_channels, kernel_size=kernel_size, conv_only=True, **conv
        )
        self.norm = AdaIN(out_channels)
        self.style_size = self.norm.style_size

    def forward(self, x: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x), style))


class _AdaINResBlock(nn.Module):
    """``x + AdaIN(conv(ReLU(AdaIN(conv(x)))))`` with 3x3 convolutions."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.block = _ConvAdaIN(spatial_dims, channels, channels, 3)
        self.conv = Convolution(spatial_dims, channels, channels, kernel_size=3, conv_only=True)
        self.norm = AdaIN(channels)
        self.style_size = self.block.style_size + self.norm.style_size

    def forward(self, x: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        first, second = (None, None) if style is None else style.split(self.block.style_size, dim=1)
        return x + self.norm(self.conv(self.block(x, first)), second)


class _OutputConv(nn.Module):
    """Final 7x7 convolution -> tanh (no normalisation, no style)."""

    style_size = 0

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = Convolution(spatial_dims, in_channels, out_channels, kernel_size=7, conv_only=True)

    def forward(self, x: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        return torch.tanh(self.conv(x))


class StyledStack(nn.Module):
    """Layers whose AdaIN parameters come from one MLP on the domain code.

    Args:
        layers: modules with ``style_size`` and ``forward(x, style)``.
        num_domains: length of the domain code.
        mlp_channels: hidden width of the style MLP (2 -> 256 -> 256 -> n_s in the paper).
        conditioned: ``False`` drops the MLP; every AdaIN becomes a plain instance norm.
    """

    def __init__(
        self, layers: Sequence[nn.Module], num_domains: int, mlp_channels: int = 256, conditioned: bool = True
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.style_sizes = [layer.style_size for layer in self.layers]
        self.mlp = (
            nn.Sequential(
                nn.Linear(num_domains, mlp_channels),
                nn.ReLU(inplace=True),
                nn.Linear(mlp_channels, mlp_channels),
                nn.ReLU(inplace=True),
                nn.Linear(mlp_channels, sum(self.style_sizes)),
            )
            if conditioned
            else None
        )

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        styles = [None] * len(self.layers) if self.mlp is None else self.mlp(code).split(self.style_sizes, dim=1)
        for layer, style in zip(self.layers, styles):
            x = layer(x, style if layer.style_size else None)
        return x


class AdaINGenerator(nn.Module):
    """AD-GAN's domain-conditioned auto-encoder (encoder and decoder with AdaIN).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the images it reads (masks are repeated to this many).
        out_channels: channels it writes; defaults to ``in_channels``.
        channels: widths ``(c1, c2, c3)`` of the 7x7 conv and the two stride-2 convs; defaults
            to the paper's ``(64, 128, 256)`` in 2D and half of it in 3D.
        num_res_blocks: residual blocks in the encoder and in the decoder (4 in the paper).
        num_domains: number of domains (2: synthetic masks and real images).
        mlp_channels: hidden width of the style MLPs.
        encoder_adain: ``False`` is the paper's "w/o AdaIN in the encoder" ablation (plain
            instance norm, the content code is then computed without the domain label).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int | None = None,
        channels: Sequence[int] | None = None,
        num_res_blocks: int = 4,
        num_domains: int = 2,
        mlp_channels: int = 256,
        encoder_adain: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        c1, c2, c3 = channels if channels is not None else ((64, 128, 256) if spatial_dims == 2 else (32, 64, 128))
        out_channels = in_channels if out_channels is None else out_channels
        self.spatial_dims = spatial_dims
        self.num_domains = num_domains
        down = {"strides": 2, "padding": 1}
        up = {"strides": 2, "is_transposed": True}
        self.encoder = StyledStack(
            [
                _ConvAdaIN(spatial_dims, in_channels, c1, 7),
                _ConvAdaIN(spatial_dims, c1, c2, 4, **down),
                _ConvAdaIN(spatial_dims, c2, c3, 4, **down),
                *[_AdaINResBlock(spatial_dims, c3) for _ in range(num_res_blocks)],
            ],
            num_domains,
            mlp_channels,
            conditioned=flag(encoder_adain),
        )
        self.decoder = StyledStack(
            [
                *[_AdaINResBlock(spatial_dims, c3) for _ in range(num_res_blocks)],
                _ConvAdaIN(spatial_dims, c3, c2, 3, **up),
                _ConvAdaIN(spatial_dims, c2, c1, 3, **up),
                _OutputConv(spatial_dims, c1, out_channels),
            ],
            num_domains,
            mlp_channels,
        )

    def code(self, domain: torch.Tensor | float | int, like: torch.Tensor) -> torch.Tensor:
        """Domain code for a batch shaped like ``like`` (see :func:`domain_code`)."""
        return domain_code(domain, like.shape[0], self.num_domains, device=like.device)

    def encode(self, x: torch.Tensor, domain: torch.Tensor | float | int) -> torch.Tensor:
        """Content code of ``x`` read as an image of ``domain`` (spatial size / 4)."""
        return self.encoder(x, self.code(domain, x))

    def decode(self, content: torch.Tensor, domain: torch.Tensor | float | int) -> torch.Tensor:
        """Image of ``domain`` in ``[-1, 1]`` from a content code."""
        return self.decoder(content, self.code(domain, content))

    def forward(
        self, x: torch.Tensor, source_domain: torch.Tensor | float | int, target_domain: torch.Tensor | float | int
    ) -> torch.Tensor:
        """Translate ``x`` from ``source_domain`` to ``target_domain`` (equal ids reconstruct)."""
        return self.decode(self.encode(x, source_domain), target_domain)


MASK_DOMAIN = 0
IMAGE_DOMAIN = 1
_DOMAINS = {"mask": MASK_DOMAIN, "image": IMAGE_DOMAIN}


def _domain_id(domain: str | float) -> float | int:
    if isinstance(domain, str):
        if domain not in _DOMAINS:
            raise ValueError(f"domain must be 'mask', 'image' or a float label in [0, 1], got {domain!r}")
        return _DOMAINS[domain]
    return float(domain)


class DomainTranslator(nn.Module):
    """``x -> G(E(x, d_from), d_to)`` as a plain network for sliding-window inference.

    Masks have one channel: mask inputs are repeated to the generator's channels and mask
    outputs are the mean over channels.

    Args:
        generator: a trained :class:`~monai_uda.networks.adain.AdaINGenerator`.
        to_domain: ``"mask"`` (segmentation), ``"image"`` (synthesis) or a float label in
            ``[0, 1]`` (0 mask, 1 image: domain-label interpolation).
        from_domain: domain of the inputs; defaults to the other domain, ``"image"`` for floats.
        ternary: for AD-GAN-INS masks (levels -1 background, 0 edge, 1 interior), return three
            scores ``-|x - level|`` per pixel instead of ``x``: their argmax is the nearest level,
            the ``[background, edge, interior]`` layout of the ternary post-processing.
    """

    LEVELS = (-1.0, 0.0, 1.0)

    def __init__(
        self,
        generator: AdaINGenerator,
        to_domain: str | float = "mask",
        from_domain: str | None = None,
        ternary: bool = False,
    ) -> None:
        super().__init__()
        self.generator = generator
        self.ternary = flag(ternary)
        self.to_domain = _domain_id(to_domain)
        if from_domain is None:
            from_domain = "mask" if to_domain == "image" else "image"
        self.from_domain = _domain_id(from_domain)
        self.in_channels = generator.encoder.layers[0].conv.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.from_domain == MASK_DOMAIN and x.shape[1] != self.in_channels:
            x = x.expand(-1, self.in_channels, *x.shape[2:])
        out = self.generator(x, int(self.from_domain), self.to_domain)
        if self.to_domain != MASK_DOMAIN:
            return out
        mask = out.mean(dim=1, keepdim=True)
        return torch.cat([-(mask - level).abs() for level in self.LEVELS], dim=1) if self.ternary else mask
