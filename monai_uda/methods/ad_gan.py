"""AD-GAN / AD-GAN-INS training step (Yao et al., aligned disentangling training).

Domains: 0 = synthetic masks (``source_image``: a 1-channel mask in ``[-1, 1]``, semantic or
AD-GAN-INS ternary), 1 = real images (``target_image`` in ``[-1, 1]``). One AdaIN generator
(encoder E, decoder G) serves both domains through a domain label ``d``; the two-branch
PatchGAN D judges each domain with its own branch.

Losses (``i`` the input's domain, ``j`` the other one, ``c_i = E(x_i, d_i)``):

* eq 1, reconstruction  ``L_rec = |G(c_i, d_i) - x_i|_1``;
* eq 2, adversarial     ``L_adv`` on the translation ``x_ij = G(c_i, d_j)`` (least squares as the
  official code, BCE selectable);
* eq 3, content         ``L_ctr = |E(x_ij, d_j) - c_i|_1``;
* eq 4, cycle           ``L_cyc = |G(E(x_ij, d_j), d_i) - x_i|_1``.

Aligned disentangling training (ADT): the decoder is updated by ``L_rec`` only (the
cross-domain losses reach the encoder through a *frozen* decoder, i.e. the decoder called with
detached parameters), and D separates same-domain reconstructions ("real") from cross-domain
translations ("fake"), so both sides of D's decision come from the same decoder.

Every network input is forwarded once per iteration: D sees ``[reconstructions, translations]``
in one call and the generator and discriminator losses are back-propagated from that call to
their own parameters (``backward(inputs=...)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from monai_uda import flag
from monai_uda.engines.method import AdaptationMethod
from monai_uda.losses.adversarial import discriminator_loss, gan_loss
from monai_uda.networks.adain import IMAGE_DOMAIN, MASK_DOMAIN, AdaINGenerator, DomainTranslator
from monai_uda.networks.patchgan import PatchDiscriminator

__all__ = ["ADGAN", "DomainTranslator", "MASK_DOMAIN", "IMAGE_DOMAIN"]


class ADGAN(AdaptationMethod):
    """AD-GAN: unsupervised segmentation by translating real images to synthetic masks.

    Args:
        spatial_dims: 2 or 3.
        image_channels: channels of the real images (1 grey, 3 RGB).
        channels: generator widths; default ``(64, 128, 256)`` in 2D, half in 3D.
        disc_channels: discriminator widths; default ``(64, 128, 256, 512)`` in 2D, half in 3D.
        num_res_blocks: residual blocks in the encoder and the decoder.
        mlp_channels: hidden width of the style MLPs.
        lambda_rec, lambda_ctr, lambda_cyc, lambda_adv: loss weights (paper: 20, 1, 20, 1).
        gan_mode: ``"least_squares"`` (official code: on the raw discriminator output) or ``"bce"``
            (on logits); both through :mod:`monai_uda.losses.adversarial`.
        lr, weight_decay, betas: Adam settings for both optimisers.
        constant_iterations, decay_iterations: learning rate constant, then linear decay to 0
            (:meth:`lr_at`, which the config attaches as a schedule handler).
        use_rec, use_ctr, use_cyc: the paper's Table 3 loss ablations (``False`` drops the loss).
            Without ``L_rec`` nothing else would train the decoder, so it is not frozen then.
        encoder_adain: ``False``: plain instance norm in the encoder (Table 3 "w/o AdaIN").
        aligned: ``False``: no ADT (Table 3 "w/o ADT"): every loss updates the decoder and D
            compares real images with translations.
            The switches take a bool or a true/false word (as the command line gives it).
        amp: bfloat16 (CPU) / float16 (CUDA) autocast for the forward passes.
        channels_last: channels-last memory format for the networks and inputs.
    """

    inference_network_name = "generator"

    def __init__(
        self,
        spatial_dims: int = 2,
        image_channels: int = 1,
        channels: Sequence[int] | None = None,
        disc_channels: Sequence[int] | None = None,
        num_res_blocks: int = 4,
        mlp_channels: int = 256,
        lambda_rec: float = 20.0,
        lambda_ctr: float = 1.0,
        lambda_cyc: float = 20.0,
        lambda_adv: float = 1.0,
        gan_mode: str = "least_squares",
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        betas: Sequence[float] = (0.5, 0.999),
        constant_iterations: int = 5000,
        decay_iterations: int = 5000,
        use_rec: bool = True,
        use_ctr: bool = True,
        use_cyc: bool = True,
        encoder_adain: bool = True,
        aligned: bool = True,
        amp: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__(amp=amp)
        use_rec, use_ctr, use_cyc, encoder_adain, aligned = (
            flag(v) for v in (use_rec, use_ctr, use_cyc, encoder_adain, aligned)
        )
        if gan_mode not in ("least_squares", "bce"):
            raise ValueError(f"gan_mode must be 'least_squares' or 'bce', got {gan_mode!r}")
        if disc_channels is None:
            disc_channels = (64, 128, 256, 512) if spatial_dims == 2 else (32, 64, 128, 256)
        self.spatial_dims = spatial_dims
        self.image_channels = image_channels
        self.generator = AdaINGenerator(
            spatial_dims, image_channels, channels=channels, num_res_blocks=num_res_blocks,
            mlp_channels=mlp_channels, encoder_adain=encoder_adain,
        )  # fmt: skip
        self.discriminator = PatchDiscriminator(spatial_dims, image_channels, disc_channels, num_outputs=2)
        self.loss_weights = {"rec": lambda_rec, "ctr": lambda_ctr, "cyc": lambda_cyc, "adv": lambda_adv}
        self.use_rec, self.use_ctr, self.use_cyc = use_rec, use_ctr, use_cyc
        self.aligned = aligned
        self.freeze_decoder = aligned and use_rec
        # least squares on the raw discriminator output, as the official code's LSGAN loss
        self.gan_mode = "lsgan" if gan_mode == "least_squares" else gan_mode
        self.memory_format = None
        if channels_last:
            self.memory_format = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
            self.to(memory_format=self.memory_format)
        adam = {"lr": lr, "weight_decay": weight_decay, "betas": tuple(betas)}
        self.optimizers = {
            "generator": torch.optim.Adam(self.generator.parameters(), **adam),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), **adam),
        }
        self.lr, self.constant_iterations, self.decay_iterations = lr, constant_iterations, decay_iterations

    def lr_at(self, iteration: int, max_iterations: int) -> float:
        """The learning rate of ``iteration``: ``lr``, then linear decay to 0.

        ``lr`` holds for ``constant_iterations`` finished iterations. The official code steps a
        scheduler after every iteration, so iteration ``i`` (1-based) uses the factor of ``i - 1``
        finished ones. For a :class:`~monai_uda.engines.ScheduleHandler`.
        """
        return self.lr * (1.0 - max(0, iteration - 1 - self.constant_iterations) / max(self.decay_iterations, 1))

    # ------------------------------------------------------------------ forward pieces
    def _decode_frozen(self, content: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """Decoder with detached parameters: gradients reach the encoder, not the decoder (ADT)."""
        decoder = self.generator.decoder
        params = {name: p.detach() for name, p in decoder.named_parameters()}
        return functional_call(decoder, params, (content, self.generator.code(domain, content)))

    def _inputs(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        masks, images = batch["source_image"], batch["target_image"]
        if masks.shape[1] != images.shape[1]:
            masks = masks.expand(-1, images.shape[1], *masks.shape[2:])
        x = torch.cat([masks, images]).to(self.device)
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        domain = torch.cat(
            [
                torch.full((len(masks),), MASK_DOMAIN, device=x.device),
                torch.full((len(images),), IMAGE_DOMAIN, device=x.device),
            ]
        )
        return x, domain

    # ------------------------------------------------------------------ contract
    def step(self, engine: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        """One AD-GAN iteration: generator (E, G) and discriminator updates from one forward pass."""
        x, domain = self._inputs(batch)
        other = 1 - domain
        w = self.loss_weights
        with self.autocast():
            content = self.generator.encode(x, domain)
            if self.freeze_decoder:
                reconstruction = self.generator.decode(content, domain)
                translation = self._decode_frozen(content, other)
            else:
                both = self.generator.decode(torch.cat([content, content]), torch.cat([domain, other]))
                reconstruction, translation = both.chunk(2)
            decode_cross = self._decode_frozen if self.freeze_decoder else self.generator.decode
            if self.use_ctr or self.use_cyc:
                content_cross = self.generator.encode(translation, other)
            if self.use_cyc:
                cycle = decode_cross(content_cross, domain)
            real = reconstruction.detach() if self.aligned else x
            logits = self.discriminator(torch.cat([real, translation]), torch.cat([domain, other])).float()
        logits_real, logits_fake = logits.chunk(2)

        losses: dict[str, torch.Tensor] = {}
        if self.use_rec:
            losses["rec"] = F.l1_loss(reconstruction.float(), x)  # eq 1
        losses["adv"] = gan_loss(logits_fake, True, self.gan_mode)  # eq 2, E/G side
        if self.use_ctr:
            losses["ctr"] = F.l1_loss(content_cross.float(), content.float())  # eq 3
        if self.use_cyc:
            losses["cyc"] = F.l1_loss(cycle.float(), x)  # eq 4
        loss_g = sum(w[name] * value for name, value in losses.items())
        # eq 2, D side: same-domain reconstructions real, translations fake
        loss_d = discriminator_loss(logits_real, logits_fake, self.gan_mode)

        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        opt_g.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        self.backward(
            loss_g, "generator", inputs=[p for p in self.generator.parameters() if p.requires_grad], retain_graph=True
        )
        self.backward(loss_d, "discriminator", inputs=[p for p in self.discriminator.parameters() if p.requires_grad])
        self.step_optimizer("generator")
        self.step_optimizer("discriminator")
        lr = opt_g.param_groups[0]["lr"]  # set by the schedule handler (lr_at)
        logs: dict[str, torch.Tensor | float] = {f"loss_{name}": value.detach() for name, value in losses.items()}
        logs.update({"loss_g": loss_g.detach(), "loss_d": loss_d.detach(), "lr": lr})
        return logs

    # ------------------------------------------------------------------ inference helpers
    def translator(
        self, to_domain: str | float = "mask", from_domain: str | None = None, ternary: bool = False
    ) -> DomainTranslator:
        """The generator as a one-input network translating to ``to_domain`` (see :class:`DomainTranslator`)."""
        return DomainTranslator(self.generator, to_domain, from_domain, ternary)

    @torch.no_grad()
    def translate(
        self, images: torch.Tensor, to_domain: str | float = "mask", from_domain: str | None = None
    ) -> torch.Tensor:
        """Translate a batch: image -> mask (segmentation), mask -> image (synthesis) or to a float label.

        Args:
            images: ``(B, C, *spatial)`` in ``[-1, 1]``, spatial sizes divisible by 4.
            to_domain: ``"mask"``, ``"image"`` or a float domain label in ``[0, 1]``.
            from_domain: domain of ``images``; defaults as in :class:`DomainTranslator`.
        """
        was_training = self.training
        self.eval()
        try:
            with self.autocast():
                return self.translator(to_domain, from_domain)(images.to(self.device)).float()
        finally:
            self.train(was_training)
