"""CyC-PDAM (Liu et al., "Unsupervised Instance Segmentation in Microscopy Images via Panoptic
Domain Adaptation and Task Re-weighting", CVPR 2020): one iteration per call.

Stage 1, :class:`CycleGANStage` -- appearance adaptation with CycleGAN (Zhu et al., 2017):
least-squares GAN losses, cycle loss weight 10, optional identity loss, image pools of 50,
Adam(0.5, 0.999) with lr 1e-4 constant for the first half and linearly decayed to 0 after.
Its source-to-target generator then synthesizes the labelled source images in target style
and :mod:`monai_uda.data.inpainting` removes the unlabelled nuclei (eqs 1-2).

Stage 2, :class:`PDAMStage` -- the panoptic domain-adaptive Mask R-CNN
(:class:`~monai_uda.networks.pdam.PDAMDetector`), one source and one target image per step:

* image-, semantic- and instance-level discriminators behind gradient reversal (a plain sign
  flip), BCE with source = 1 and target = 0;
* eq 3 task re-weighting: the RPN, semantic and box/mask losses are scaled by
  ``min((1 - p_s) / p_s, beta)`` (:func:`task_weight`) of the image-, semantic- and
  instance-level discriminators' source probabilities p_s (averaged), beta = 2;
* eq 4 total loss: the re-weighted detection and semantic losses plus ``alpha_da`` times the
  three discriminator losses, ``alpha_da`` ramping with eq 5 (:func:`alpha_da`) from 0 at the
  first iteration to ~1 at the last, so the discriminators and the adversarial gradient start
  together from nothing. ``alpha_da_on="reversal"`` is the authors' released code instead: the
  domain losses at full weight and the ramp scaling only the reversed gradient;
* SGD (lr 0.002, momentum 0.9, weight decay 0.001), 500-iteration linear warm-up, lr x0.1 at
  3/4 of training.

The ablations of the paper's Table 4 are switches: "w/o NI" (no inpainting, data stage),
"w/o TR" (``reweight=False``), "w/o SEM" (detector without semantic branch) and the
CyCADA-with-Mask-R-CNN baseline (image + instance adaptation only); see :data:`PDAM_VARIANTS`.
``source_only`` is the plain Mask R-CNN (no semantic branch, no discriminators): trained on the
labelled source alone it is the detector the adaptation starts from.

Multi-GPU (``multi_gpu_train.yaml``): neither stage is DDP-wrapped. CycleGAN runs each
generator twice per iteration with the discriminators frozen in between and synthesizes with
the bare generator; PDAM's step calls the detector's parts (``run_domain``, the
discriminators' logits), not its ``forward``, which a ``DistributedDataParallel`` wrapper
cannot follow. Both stages instead average every optimised gradient over the ranks before
each optimiser step (:func:`~monai_uda.engines.distributed.average_gradients`), which is what DDP would do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from monai_uda.data.pseudo_labels import instance_targets
from monai_uda.engines.method import AdaptationMethod
from monai_uda.errors import UDAInputError
from monai_uda.losses.adversarial import discriminator_loss, gan_loss
from monai_uda.networks.cyclegan import ImagePool, ResnetGenerator
from monai_uda.networks.patchgan import PatchDiscriminator
from monai_uda.networks.pdam import PDAMDetector

__all__ = [
    "ALPHA_DA_ON",
    "alpha_da",
    "task_weight",
    "cyclegan_lr",
    "pdam_lr",
    "PDAM_VARIANTS",
    "pdam_variant",
    "CycleGANStage",
    "PDAMStage",
]

#: detector switches (``PDAMDetector`` kwargs) and method switches of the paper's Table 4 rows
PDAM_VARIANTS: dict[str, dict[str, dict[str, bool]]] = {
    "pdam": {"detector": {}, "method": {}},
    "wo_tr": {"detector": {}, "method": {"reweight": False}},
    "wo_sem": {"detector": {"semantic": False}, "method": {}},
    "cycada": {"detector": {"semantic": False}, "method": {"reweight": False}},
    "source_only": {
        "detector": {"semantic": False, "image_level": False, "instance_level": False},
        "method": {"reweight": False},
    },
}


def pdam_variant(name: str) -> dict[str, dict[str, bool]]:
    """Switches of one Table 4 row: ``{"detector": PDAMDetector kwargs, "method": PDAMStage kwargs}``.

    Raises:
        UDAInputError: unknown variant name.
    """
    if name not in PDAM_VARIANTS:
        raise UDAInputError(
            f"unknown CyC-PDAM variant {name!r}; choose one of {sorted(PDAM_VARIANTS)} (w/o NI: inpaint false)"
        )
    return PDAM_VARIANTS[name]


#: where eq 5's ``alpha_da`` acts: on the domain losses (eq 4, paper) or on the gradient reversal (release)
ALPHA_DA_ON = ("loss", "reversal")


def alpha_da(progress: float) -> float:
    """Eq 5: ``alpha_da = 2 / (1 + exp(-10 t)) - 1`` for training progress ``t`` in [0, 1]."""
    t = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-10.0 * t)) - 1.0


def task_weight(source_logits: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Eq 3: ``min(mean((1 - p_s) / p_s), beta)`` with ``p_s = sigmoid(logit)``, detached.

    ``(1 - p_s) / p_s = exp(-logit)``: source samples the discriminator finds target-like
    (small p_s) weigh more, up to ``beta``; those it confidently calls source weigh less.
    Returns 1 for an empty input (no instances to judge).
    """
    if source_logits.numel() == 0:
        return torch.ones((), device=source_logits.device)
    return torch.exp(-source_logits.detach().float()).mean().clamp(max=beta)


def cyclegan_lr(iteration: int, max_iterations: int, base_lr: float) -> float:
    """CycleGAN schedule: ``base_lr`` for the first half, then linear decay to 0 at the end."""
    half = max_iterations / 2.0
    if iteration <= half:
        return float(base_lr)
    return float(base_lr) * max(0.0, (max_iterations - iteration) / max(max_iterations - half, 1.0))


def pdam_lr(
    iteration: int,
    max_iterations: int,
    base_lr: float,
    warmup_iterations: int = 500,
    warmup_factor: float = 1.0 / 3.0,
    decay_at: float = 0.75,
    gamma: float = 0.1,
) -> float:
    """PDAM schedule: linear warm-up from ``warmup_factor * base_lr``, x``gamma`` after ``decay_at``."""
    lr = float(base_lr) * (gamma if iteration > decay_at * max_iterations else 1.0)
    if iteration < warmup_iterations:
        progress = iteration / warmup_iterations
        lr *= warmup_factor * (1.0 - progress) + progress
    return lr


class CycleGANStage(AdaptationMethod):
    """CyC-PDAM stage 1: CycleGAN between the source (e.g. fluorescence) and target styles.

    Args:
        spatial_dims: 2 or 3.
        source_channels: channels of the source images; target_channels: of the target images.
        channels: generator base width (64). num_blocks: residual blocks (9 for 256 patches).
        discriminator_channels: PatchGAN widths ((64, 128, 256, 512) = 70x70 PatchGAN).
        lr: Adam learning rate (1e-4), constant then linearly decayed (:func:`cyclegan_lr`; the
            config attaches :meth:`lr_at` as a schedule handler).
        lambda_cycle: cycle-consistency weight (10).
        lambda_identity: identity weight relative to ``lambda_cycle`` (0 = off; CycleGAN's 0.5);
            needs ``source_channels == target_channels``.
        pool_size: image pool size (50).
        invert_source: invert the source intensities first (bright fluorescence nuclei become
            dark, like hematoxylin-stained ones).
        gan_mode: ``"lsgan"`` (paper) or ``"bce"``.
        amp: autocast the forward passes.
    """

    inference_network_name = "generator_s2t"

    def __init__(
        self,
        spatial_dims: int = 2,
        source_channels: int = 3,
        target_channels: int = 3,
        channels: int = 64,
        num_blocks: int = 9,
        discriminator_channels: Sequence[int] = (64, 128, 256, 512),
        lr: float = 1e-4,
        lambda_cycle: float = 10.0,
        lambda_identity: float = 0.0,
        pool_size: int = 50,
        invert_source: bool = False,
        gan_mode: str = "lsgan",
        amp: bool = False,
    ) -> None:
        super().__init__(amp=amp)
        if lambda_identity > 0 and source_channels != target_channels:
            raise ValueError("the identity loss needs source and target images with the same channels")
        self.generator_s2t = ResnetGenerator(spatial_dims, source_channels, target_channels, channels, num_blocks)
        self.generator_t2s = ResnetGenerator(spatial_dims, target_channels, source_channels, channels, num_blocks)
        self.discriminator_t = PatchDiscriminator(spatial_dims, target_channels, discriminator_channels)
        self.discriminator_s = PatchDiscriminator(spatial_dims, source_channels, discriminator_channels)
        self.lr, self.gan_mode, self.invert_source = lr, gan_mode, invert_source
        self.loss_weights = {"cycle": lambda_cycle, "identity": lambda_identity}
        self.pools = {"source": ImagePool(pool_size, seed=0), "target": ImagePool(pool_size, seed=1)}
        generators = [*self.generator_s2t.parameters(), *self.generator_t2s.parameters()]
        discriminators = [*self.discriminator_t.parameters(), *self.discriminator_s.parameters()]
        self.optimizers["generators"] = torch.optim.Adam(generators, lr=lr, betas=(0.5, 0.999))
        self.optimizers["discriminators"] = torch.optim.Adam(discriminators, lr=lr, betas=(0.5, 0.999))

    def lr_at(self, iteration: int, max_iterations: int) -> float:
        """The learning rate of ``iteration`` (:func:`cyclegan_lr`).

        For a :class:`~monai_uda.engines.ScheduleHandler`.
        """
        return cyclegan_lr(iteration, max_iterations, self.lr)

    def checkpoint_objects(self) -> dict[str, Any]:
        """Networks, optimisers and both image pools (``pool_source``, ``pool_target``)."""
        return {**super().checkpoint_objects(), **{f"pool_{domain}": pool for domain, pool in self.pools.items()}}

    def _source_in(self, image: torch.Tensor) -> torch.Tensor:
        """[0, 1] source image (optionally inverted) -> generator range [-1, 1]."""
        return (1.0 - image if self.invert_source else image) * 2.0 - 1.0

    def step(self, engine: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        """One CycleGAN iteration: generators first, then both discriminators on pooled fakes."""
        lr = self.optimizers["generators"].param_groups[0]["lr"]  # set by the schedule handler (lr_at)
        real_s = self._source_in(batch["source_image"])
        real_t = batch["target_image"] * 2.0 - 1.0
        discriminators = [self.discriminator_t, self.discriminator_s]

        self.set_requires_grad(discriminators, False)
        opt_g = self.optimizers["generators"]
        opt_g.zero_grad(set_to_none=True)
        with self.autocast():
            fake_t = self.generator_s2t(real_s)
            fake_s = self.generator_t2s(real_t)
            adv_t = gan_loss(self.discriminator_t(fake_t), True, self.gan_mode)
            adv = adv_t + gan_loss(self.discriminator_s(fake_s), True, self.gan_mode)
            cycle = F.l1_loss(self.generator_t2s(fake_t), real_s) + F.l1_loss(self.generator_s2t(fake_s), real_t)
            loss_g = adv + self.loss_weights["cycle"] * cycle
            identity = torch.zeros((), device=real_s.device)
            if self.loss_weights["identity"] > 0:
                identity = F.l1_loss(self.generator_s2t(real_t), real_t) + F.l1_loss(self.generator_t2s(real_s), real_s)
                loss_g = loss_g + self.loss_weights["identity"] * self.loss_weights["cycle"] * identity
        self.backward(loss_g, "generators")
        self.step_optimizer("generators")

        self.set_requires_grad(discriminators, True)
        opt_d = self.optimizers["discriminators"]
        opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            loss_d_t = discriminator_loss(
                self.discriminator_t(real_t), self.discriminator_t(self.pools["target"].query(fake_t)), self.gan_mode
            )
            loss_d_s = discriminator_loss(
                self.discriminator_s(real_s), self.discriminator_s(self.pools["source"].query(fake_s)), self.gan_mode
            )
        self.backward(loss_d_t + loss_d_s, "discriminators")
        self.step_optimizer("discriminators")
        return {
            "generator_adv": adv.detach(),
            "cycle": cycle.detach(),
            "identity": identity.detach(),
            "discriminator_t": loss_d_t.detach(),
            "discriminator_s": loss_d_s.detach(),
            "lr": lr,
        }

    @torch.no_grad()
    def translate(self, image: np.ndarray) -> np.ndarray:
        """Source -> target style for one channel-first image in [0, 1] (any size; padded to /4)."""
        generator = self.generator_s2t
        was_training = generator.training
        generator.eval()
        x = self._source_in(torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32, device=self.device)[None])
        spatial = x.shape[2:]
        pad: list[int] = []
        for size in reversed(spatial):
            extra = (-size) % generator.divisor
            pad += [0, extra]
        mode = "reflect" if all(s > 1 for s in spatial) else "replicate"
        y = generator(F.pad(x, pad, mode=mode) if any(pad) else x)
        y = y[(..., *[slice(0, s) for s in spatial])]
        generator.train(was_training)
        return ((y[0].float().cpu().numpy() + 1.0) / 2.0).clip(0.0, 1.0)


class PDAMStage(AdaptationMethod):
    """CyC-PDAM stage 2: PDAM training on synthesized source + unlabelled target (eqs 3-5).

    Args:
        detector: the PDAM network (its built branches decide which discriminators run).
        lr: SGD base learning rate (0.002); momentum (0.9); weight_decay (0.001).
        warmup_iterations: linear warm-up length (500); decay_at: fraction of training after
            which the lr is multiplied by 0.1 (0.75). See :func:`pdam_lr`; the config attaches
            :meth:`lr_at` and :meth:`alpha_da_at` (eq 5) as schedule handlers.
        beta: eq 3 cap of the task weights (2).
        reweight: apply eq 3 ("w/o TR" = False).
        adversarial_weight: constant weight of the discriminator losses in eq 4 (1), on top of
            ``alpha_da``.
        alpha_da_on: where the scheduled ``alpha_da`` acts. ``"loss"`` (paper, eq 4): it
            multiplies the domain losses, so the discriminators and the features they adapt both
            receive ``alpha_da`` times their gradient, and the reversal is a plain sign flip.
            ``"reversal"`` (the authors' released code): the domain losses keep full weight, so the
            discriminators train at full strength from the first iteration, and ``alpha_da``
            scales only the reversed gradient reaching the features.
        grad_clip: optional gradient-norm clip (``None`` = off, as in the paper).
        amp: autocast the forward passes.
    """

    inference_network_name = "detector"

    def __init__(
        self,
        detector: PDAMDetector,
        lr: float = 0.002,
        momentum: float = 0.9,
        weight_decay: float = 0.001,
        warmup_iterations: int = 500,
        decay_at: float = 0.75,
        beta: float = 2.0,
        reweight: bool = True,
        adversarial_weight: float = 1.0,
        alpha_da_on: str = "loss",
        grad_clip: float | None = None,
        amp: bool = False,
    ) -> None:
        super().__init__(amp=amp)
        if alpha_da_on not in ALPHA_DA_ON:
            raise UDAInputError(f"alpha_da_on must be one of {list(ALPHA_DA_ON)}, got {alpha_da_on!r}")
        self.detector = detector
        self.alpha_da_on = alpha_da_on
        self.alpha_da = 1.0  # set every iteration by the alpha_da_at schedule handler
        detector.set_grl_alpha(1.0)
        self.lr, self.warmup_iterations, self.decay_at = lr, warmup_iterations, decay_at
        self.beta, self.reweight, self.grad_clip = beta, reweight, grad_clip
        self.loss_weights = {"adversarial": adversarial_weight}
        params = [p for p in detector.parameters() if p.requires_grad]
        self.optimizers["detector"] = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def lr_at(self, iteration: int, max_iterations: int) -> float:
        """The learning rate of ``iteration`` (:func:`pdam_lr`), for a :class:`~monai_uda.engines.ScheduleHandler`."""
        return pdam_lr(iteration, max_iterations, self.lr, self.warmup_iterations, decay_at=self.decay_at)

    @staticmethod
    def alpha_da_at(iteration: int, max_iterations: int) -> float:
        """Eq 5's ``alpha_da`` at ``iteration`` (progress ``(iteration - 1) / (max_iterations - 1)``)."""
        return alpha_da((iteration - 1) / max(max_iterations - 1, 1))

    def set_scheduled(self, name: str, value: float, optimizers: Sequence[str] | None = None) -> None:
        """``"alpha_da"`` weights the domain losses or the reversal (``alpha_da_on``); others as the base class."""
        if name != "alpha_da":
            super().set_scheduled(name, value, optimizers)
        elif self.alpha_da_on == "loss":
            self.alpha_da = float(value)
        else:
            self.detector.set_grl_alpha(value)

    def _adversarial(
        self, source_logits: torch.Tensor, target_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Domain loss (source = 1, target = 0, averaged) and the eq-3 weight of one discriminator."""
        losses = [
            gan_loss(logits, is_source, "bce")
            for logits, is_source in ((source_logits, True), (target_logits, False))
            if logits.numel()
        ]
        loss = torch.stack(losses).mean() if losses else source_logits.sum() * 0.0
        weight = task_weight(source_logits, self.beta) if self.reweight else torch.ones((), device=loss.device)
        return loss, weight

    def step(self, engine: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        """One PDAM iteration (eqs 3-5, see the module docstring)."""
        net = self.detector
        optimizer = self.optimizers["detector"]
        # lr and alpha_da (loss weight or reversal strength): set by the schedule handlers (lr_at, alpha_da_at)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        targets = [instance_targets(label) for label in batch["source_label"]]
        one = torch.ones((), device=batch["source_image"].device)
        zero = torch.zeros((), device=one.device)
        with self.autocast():
            source = net.run_domain(list(batch["source_image"]), targets)
            parts = (net.image_discriminator, net.semantic_head, net.instance_discriminator)
            # the source_only variant has no domain part: no target pass
            target = net.run_domain(list(batch["target_image"])) if any(m is not None for m in parts) else source
            loss_img, w_img = (
                self._adversarial(net.image_logits(source), net.image_logits(target))
                if net.image_discriminator
                else (zero, one)
            )
            loss_sem_adv, w_sem, loss_semseg = zero, one, zero
            if net.semantic_head is not None:
                loss_sem_adv, w_sem = self._adversarial(net.entropy_logits(source), net.entropy_logits(target))
                loss_semseg = F.cross_entropy(
                    source.semantic_logits.float(), net.semantic_labels(source), ignore_index=-100
                )
            loss_ins, w_ins = (
                self._adversarial(net.instance_logits(source), net.instance_logits(target))
                if net.instance_discriminator
                else (zero, one)
            )
            rpn = sum(v for k, v in source.losses.items() if k in ("loss_objectness", "loss_rpn_box_reg"))
            heads = sum(v for k, v in source.losses.items() if k not in ("loss_objectness", "loss_rpn_box_reg"))
            detection = w_img * rpn + w_ins * heads + w_sem * loss_semseg  # eq 3
            adversarial = loss_img + loss_sem_adv + loss_ins
            total = detection + self.alpha_da * self.loss_weights["adversarial"] * adversarial  # eq 4
        self.backward(total, "detector")
        self.step_optimizer("detector", self.grad_clip)
        out: dict[str, torch.Tensor | float] = {k.removeprefix("loss_"): v.detach() for k, v in source.losses.items()}
        out.update(
            semseg=loss_semseg.detach(),
            da_image=loss_img.detach(),
            da_semantic=loss_sem_adv.detach(),
            da_instance=loss_ins.detach(),
            weight_image=w_img,
            weight_semantic=w_sem,
            weight_instance=w_ins,
            total=total.detach(),
            alpha_da=self.alpha_da if self.alpha_da_on == "loss" else net.grl.alpha,
            grl_alpha=net.grl.alpha,
            lr=lr,
        )
        return out
