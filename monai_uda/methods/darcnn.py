"""DARCNN (Hsu et al., "DARCNN: Domain Adaptive Region-based Convolutional Neural Network for
Unsupervised Instance Segmentation in Biomedical Images", CVPR 2021): one iteration per call.

Stage 1, :class:`DARCNNStage1` -- feature adaptation with the domain separation Mask R-CNN
(:class:`~monai_uda.networks.domain_separation.DomainSeparationMaskRCNN`):

* L_source  = Mask R-CNN losses (RPN, box, mask) of the source branch E_c + E_p^s + M^s,
* eq 2  L_sim    = MMD(P(E_c(x_s)), P(E_c(x_t))) with P a 1x1 convolution with one filter,
* eq 3  L_diff   = orthogonality(E_c, E_p^s on x_s) + orthogonality(E_c, E_p^t on x_t),
* eqs 4-6 L_target = background consistency of h_p^t inside confident proposals of M^t,
* eq 1  L = L_source + alpha L_sim + beta L_diff + gamma L_target (alpha ramps up over 0.1 epoch).

The defaults are the paper's form; the variants the bundle keeps as options (fused features in
L_target, an adversarial wide P, a target branch that follows the source branch) are named
where they are set.

Stage 2, :class:`DARCNNStage2` -- augmented pseudo-labelling: a frozen copy of the stage-1
target branch labels augmented target images, the instances scoring above z become targets
and only the target branch (E_c, E_p^t, RPN, M^t) trains on them; the source branch is frozen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from monai_uda import flag
from monai_uda.data.pseudo_labels import PseudoLabelAugment, filter_detections, instance_targets
from monai_uda.engines.method import AdaptationMethod
from monai_uda.errors import UDAInputError
from monai_uda.losses.domain import DEFAULT_BANDWIDTHS, background_consistency_loss, mmd_loss, orthogonality_loss
from monai_uda.networks.domain_separation import L_TARGET_FEATURES, DomainSeparationMaskRCNN

logger = logging.getLogger(__name__)

EMPTY_PSEUDO_LABEL_STEPS = 20
"""Consecutive stage-2 iterations without one pseudo-label after which :class:`DARCNNStage2` warns (once):
the detector is then learning background only."""

__all__ = ["alpha_ramp", "warmup_iterations", "DARCNNStage1", "DARCNNStage2"]


def alpha_ramp(iteration: int, warmup_iterations: int, start: float, end: float) -> float:
    """Linear warm-up of the L_sim weight (eq 1's alpha) from ``start`` to ``end`` over ``warmup_iterations``.

    ``iteration`` is 1-based: iteration 1 uses ``start`` and the weight is ``end`` from iteration
    ``warmup_iterations + 1`` on, so a ramp of one iteration still begins at ``start`` (paper: from
    0 to 1 over the first 0.1 epoch, see :func:`warmup_iterations`). ``warmup_iterations`` 0: no ramp.
    """
    if warmup_iterations <= 0:
        return float(end)
    progress = min(max(iteration - 1, 0) / warmup_iterations, 1.0)
    return float(start + (end - start) * progress)


def warmup_iterations(epochs: float, source_size: int, batch_size: int) -> int:
    """Iterations of ``epochs`` passes over the source set: ``ceil(epochs * source_size / batch_size)``.

    The paper ramps alpha over 0.1 epoch; counted in iterations (one source batch each) and at
    least 1, so that a small source set still gets a ramp. ``epochs`` 0 gives 0 (no ramp).

    Raises:
        UDAInputError: negative ``epochs`` or a batch size below 1.
    """
    if epochs < 0 or batch_size < 1:
        raise UDAInputError(f"alpha_warmup_epochs must be >= 0 and batch_size >= 1, got {epochs} and {batch_size}")
    if epochs == 0:
        return 0
    return max(1, math.ceil(epochs * source_size / batch_size))


@torch.no_grad()
def _follow(follower: nn.Module, leader: nn.Module, momentum: float, copy_buffers: bool = True) -> None:
    """Exponential moving average ``follower <- m follower + (1 - m) leader``.

    Buffers (batch-norm statistics) are copied when ``copy_buffers``, otherwise the follower keeps
    its own (an encoder that sees the other domain's images keeps that domain's statistics).
    """
    for p_f, p_l in zip(follower.parameters(), leader.parameters()):
        p_f.lerp_(p_l, 1.0 - momentum)
    if copy_buffers:
        for b_f, b_l in zip(follower.buffers(), leader.buffers()):
            b_f.copy_(b_l)


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel (paper lr 1e-4).

    One pass over the detector's parameters instead of a loop of small element-wise operations:
    faster optimiser steps, same update rule.
    """
    return torch.optim.Adam(params, lr=lr, fused=True)


class DARCNNStage1(AdaptationMethod):
    """DARCNN stage 1: domain separation with L_sim, L_diff and L_target (eq 1).

    The target head M^t receives no supervised signal in stage 1 and L_target (eqs 4-6) reads the
    target-private features h_p^t in M^t's confident proposals, so it trains E_p^t alone
    (``l_target_features="private"``, the paper). ``"fused"`` (a variant) reads the heads' input
    ``(h_c + h_p^t) / 2`` instead, so that E_c receives L_target's gradient too.

    P, the projection of L_sim, trains as the detector says (``detector.projection_training``):
    ``"joint"`` (paper) minimises eq 1 with every other weight; ``"adversarial"`` (a variant)
    *maximises* L_sim (its gradient is negated before the optimiser step) while E_c minimises it.

    The paper starts both branches from one COCO-pretrained Mask R-CNN, so the target branch
    E_c + E_p^t + M^t is a working detector from the start and M^t, E_p^t keep that start
    (momenta 1, the paper). Trained from scratch, that branch finds no confident nuclei on target
    images, which leaves L_target and stage 2 without proposals; the variant lets M^t follow M^s as
    an exponential moving average (``target_head_momentum``, e.g. 0.99) and E_p^t follow E_p^s
    likewise on top of its own L_diff/L_target updates (``target_encoder_momentum``, e.g. 0.9: the
    pull must outweigh its own Adam steps of about ``lr`` per weight, so its weights settle about
    ``lr / (1 - momentum)`` from E_p^s). 0 copies the source part every iteration.

    Args:
        detector: the domain separation Mask R-CNN (both domains).
        lr: Adam learning rate (paper 1e-4).
        alpha, alpha_start, alpha_warmup_iterations: L_sim weight ramp (paper 0 -> 1 over 0.1 epoch,
            :func:`warmup_iterations`), ``loss_weights["sim"]``, set before each iteration by the schedule
            handler the config attaches (:meth:`sim_weight_at`); its first iteration's value until then.
        beta: L_diff weight (paper 1). gamma: L_target weight (paper 0.1).
        score_threshold: k, proposal score above which L_target uses a proposal (paper 0.5).
        mask_threshold: i, mask probability below which a position is background (paper 0.5).
        l_target_features: ``"private"`` (paper) or ``"fused"`` (see above).
        diff_channel_fraction: channels L_diff constrains (paper: half).
        bandwidths: Gaussian kernel bandwidths of L_sim.
        target_head_momentum: EMA momentum of M^t following M^s (paper 1: none; see above).
        target_encoder_momentum: EMA momentum of E_p^t following E_p^s (paper 1: none; its own
            normalisation statistics are kept).
        feature_levels: FPN levels entering L_sim and L_diff (``None``: all).
        amp: autocast the forward passes.

    Raises:
        UDAInputError: an unknown ``l_target_features`` or a momentum outside [0, 1].
    """

    inference_network_name = "detector"

    def __init__(
        self,
        detector: DomainSeparationMaskRCNN,
        lr: float = 1e-4,
        alpha: float = 1.0,
        alpha_start: float = 0.0,
        alpha_warmup_iterations: int = 100,
        beta: float = 1.0,
        gamma: float = 0.1,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        l_target_features: str = "private",
        diff_channel_fraction: float = 0.5,
        bandwidths: tuple[float, ...] = DEFAULT_BANDWIDTHS,
        target_head_momentum: float = 1.0,
        target_encoder_momentum: float = 1.0,
        feature_levels: tuple[str, ...] | None = None,
        amp: bool = False,
    ) -> None:
        super().__init__(amp=amp)
        if set(detector.domains) != {"source", "target"}:
            raise ValueError(f"stage 1 needs a source and a target branch, got {detector.domains}")
        if l_target_features not in L_TARGET_FEATURES:
            raise UDAInputError(f"l_target_features must be one of {L_TARGET_FEATURES}, got {l_target_features!r}")
        momenta = (("target_head_momentum", target_head_momentum), ("target_encoder_momentum", target_encoder_momentum))
        for name, value in momenta:
            if not 0.0 <= value <= 1.0:
                raise UDAInputError(f"{name} must be in [0, 1], got {value}")
        self.detector = detector
        self.alpha, self.alpha_start, self.alpha_warmup_iterations = alpha, alpha_start, alpha_warmup_iterations
        self.loss_weights = {
            "sim": alpha_ramp(1, alpha_warmup_iterations, alpha_start, alpha),
            "diff": beta,
            "target": gamma,
        }
        self.score_threshold, self.mask_threshold = score_threshold, mask_threshold
        self.l_target_features = l_target_features
        self.adversarial_projection = detector.projection_training == "adversarial"
        self.diff_channel_fraction = diff_channel_fraction
        self.bandwidths = tuple(bandwidths)
        self.target_head_momentum, self.target_encoder_momentum = target_head_momentum, target_encoder_momentum
        self.feature_levels = None if feature_levels is None else tuple(feature_levels)
        head_t = set(map(id, detector.heads["target"].parameters()))
        trained = [p for p in detector.parameters() if id(p) not in head_t]
        self.optimizers["detector"] = _adam(trained, lr)

    def sim_weight_at(self, iteration: int, max_iterations: int) -> float:
        """The L_sim weight of ``iteration`` (:func:`alpha_ramp`).

        The schedule of a :class:`~monai_uda.engines.ScheduleHandler` of ``"sim"``.
        """
        return alpha_ramp(iteration, self.alpha_warmup_iterations, self.alpha_start, self.alpha)

    def _levels(self, features: Mapping[str, torch.Tensor]) -> list[str]:
        return list(features) if self.feature_levels is None else [k for k in self.feature_levels if k in features]

    def _feature_losses(
        self,
        shared_s: Mapping[str, torch.Tensor],
        private_s: Mapping[str, torch.Tensor],
        shared_t: Mapping[str, torch.Tensor],
        private_t: Mapping[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """L_sim (eq 2) and L_diff (eq 3, source and target) over the feature levels of the encodings."""
        net = self.detector
        levels = self._levels(shared_s)
        # P's orthogonal parametrisation: computed (and back-propagated) once, not per level
        with parametrize.cached():
            loss_sim = torch.stack(  # eq 2
                [
                    mmd_loss(net.project(shared_s[k]).float(), net.project(shared_t[k]).float(), self.bandwidths)
                    for k in levels
                ]
            ).mean()
        loss_diff = torch.stack(  # eq 3, source and target
            [
                orthogonality_loss(shared[k].float(), private[k].float(), self.diff_channel_fraction)
                for shared, private in ((shared_s, private_s), (shared_t, private_t))
                for k in levels
            ]
        ).sum() / len(levels)
        return loss_sim, loss_diff

    def step(self, engine: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        """One iteration of DARCNN stage 1 (eq 1, see the module docstring)."""
        net = self.detector
        alpha = self.loss_weights["sim"]  # set by the schedule handler (sim_weight_at)
        optimizer = self.optimizers["detector"]
        optimizer.zero_grad(set_to_none=True)
        targets = [instance_targets(label) for label in batch["source_label"]]
        with self.autocast():
            images_s, targets = net.preprocess(list(batch["source_image"]), targets)
            images_t, _ = net.preprocess(list(batch["target_image"]))
            shared_s, private_s = net.encode(images_s, "source")
            shared_t, private_t = net.encode(images_t, "target")

            proposals, rpn_losses = net.propose(images_s, shared_s, targets)  # L_source
            fused_s = net.fuse(shared_s, private_s)
            _, head_losses = net.heads["source"](fused_s, proposals, images_s.image_sizes, targets)
            loss_source = sum(rpn_losses.values()) + sum(head_losses.values())
            loss_sim, loss_diff = self._feature_losses(shared_s, private_s, shared_t, private_t)

            detections, roi_features = net.detect_with_features(
                images_t, shared_t, private_t, "target", self.l_target_features
            )
            background = background_consistency_loss(  # eqs 4-6
                [f.float() for f in roi_features],
                [d["masks"] for d in detections],
                [d["scores"] for d in detections],
                self.score_threshold,
                self.mask_threshold,
            )
            total = loss_source + alpha * loss_sim + self.loss_weights["diff"] * loss_diff
            total = total + self.loss_weights["target"] * background.loss  # eq 1
        self.backward(total, "detector")
        if self.adversarial_projection:  # the variant's P maximises L_sim
            for p in net.sim_projection.parameters():
                if p.grad is not None:
                    p.grad.neg_()
        self.step_optimizer("detector")
        warmup = 1.0 - 1.0 / (engine.state.iteration + 1)  # plain average over the first iterations
        if self.target_head_momentum < 1.0 and self.last_micro_batch:
            _follow(net.heads["target"], net.heads["source"], min(self.target_head_momentum, warmup))
        if self.target_encoder_momentum < 1.0 and self.last_micro_batch:
            momentum = min(self.target_encoder_momentum, warmup)
            _follow(net.private_encoders["target"], net.private_encoders["source"], momentum, copy_buffers=False)
        losses: dict[str, torch.Tensor | float] = {
            f"source_{k.removeprefix('loss_')}": v.detach() for k, v in {**rpn_losses, **head_losses}.items()
        }
        losses.update(
            source=loss_source.detach(),
            sim=loss_sim.detach(),
            diff=loss_diff.detach(),
            target=background.loss.detach(),
            total=total.detach(),
            alpha=alpha,
            confident_proposals=float(background.num_proposals),
            images_without_background=float(background.num_empty_images),
        )
        return losses


class DARCNNStage2(AdaptationMethod):
    """DARCNN stage 2: train the target branch on augmented pseudo-labels.

    ``teacher`` is a frozen copy of the target branch (E_c, E_p^t, RPN, M^t) taken from
    ``detector`` at the first stage-2 iteration, i.e. the stage-1 model; it detects instances on
    augmented target images, those scoring above z (``score_threshold``) are the pseudo-labels,
    and E_c, E_p^t, the RPN and M^t train on the *original* target images with them (Mask R-CNN
    losses). The source branch (E_p^s, M^s) and the L_sim projection are frozen. The number of
    detections per image is the detector's ``box_detections_per_img`` (paper 50 or 100).

    Args:
        detector: the stage-1 network (shared with :class:`DARCNNStage1` in a two-stage config).
        lr: Adam learning rate (paper 1e-4).
        score_threshold: z (paper 0.5).
        mask_threshold: probability above which a pseudo-label mask pixel is foreground.
        blur_sigma, contrast, brightness: the augmentation (:class:`PseudoLabelAugment`;
            paper 1, 1.5, -150/255); all ``None`` = pseudo-labels without augmentation.
        augment: ``False`` (or a false word): no augmentation whatever the three values.
        amp: autocast the forward passes.
    """

    inference_network_name = "detector"

    def __init__(
        self,
        detector: DomainSeparationMaskRCNN,
        lr: float = 1e-4,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        blur_sigma: float | None = 1.0,
        contrast: float | None = 1.5,
        brightness: float | None = -150.0 / 255.0,
        augment: Any = True,
        amp: bool = False,
    ) -> None:
        super().__init__(amp=amp)
        if not flag(augment):
            blur_sigma = contrast = brightness = None
        self.detector = detector
        self.teacher = detector.branch_copy("target")
        self.teacher.register_buffer("synced", torch.zeros((), dtype=torch.bool))  # checkpointed with the teacher
        self.set_requires_grad(self.teacher, False)
        self.augment = PseudoLabelAugment(blur_sigma, contrast, brightness)
        self.score_threshold, self.mask_threshold = score_threshold, mask_threshold
        self.empty_steps = 0  # consecutive iterations whose teacher found nothing above z
        self.frozen = [detector.private_encoders["source"], detector.heads["source"], detector.sim_projection]
        trained = [detector.shared_encoder, detector.private_encoders["target"], detector.rpn, detector.heads["target"]]
        self.optimizers["detector"] = _adam([p for m in trained for p in m.parameters()], lr)

    def networks(self) -> dict[str, nn.Module]:
        """Only the detector: the teacher is a frozen copy of its stage-1 target branch, not a result.

        ``model.pt`` (:class:`~monai_uda.engines.FinalModelSaver`) thus holds ``"detector"``
        alone; resumable checkpoints keep the teacher, see :meth:`checkpoint_objects`.
        """
        return {"detector": super().networks()["detector"]}

    def checkpoint_objects(self) -> dict[str, Any]:
        """The detector, the teacher (with its ``synced`` flag) and the optimiser."""
        return {**super().checkpoint_objects(), "teacher": self.teacher}

    @torch.no_grad()
    def pseudo_labels(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The teacher's instances above z on the augmented ``(B, C, H, W)`` target images."""
        self.teacher.eval()
        with self.autocast():
            detections = self.teacher(list(self.augment(images)))
        return [
            filter_detections({k: v.float() for k, v in d.items()}, self.score_threshold, self.mask_threshold)
            for d in detections
        ]

    def step(self, engine: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        """One iteration of DARCNN stage 2."""
        if not bool(self.teacher.synced):  # first stage-2 iteration: freeze the stage-1 target branch
            self.teacher.load_state_dict(self.detector.state_dict(), strict=False)  # drops the source branch
            self.teacher.synced.fill_(True)
        self.set_requires_grad(self.frozen, False)
        targets = self.pseudo_labels(batch["target_image"])
        optimizer = self.optimizers["detector"]
        optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            losses = self.detector(
                list(batch["target_image"]), [{k: v for k, v in t.items() if k != "scores"} for t in targets], "target"
            )
            total = sum(losses.values())
        self.backward(total, "detector")
        self.step_optimizer("detector")
        out: dict[str, torch.Tensor | float] = {
            f"pseudo_{k.removeprefix('loss_')}": v.detach() for k, v in losses.items()
        }
        out.update(total=total.detach(), pseudo_instances=float(sum(len(t["boxes"]) for t in targets)))
        self.empty_steps = 0 if out["pseudo_instances"] else self.empty_steps + 1
        if self.empty_steps == EMPTY_PSEUDO_LABEL_STEPS:
            logger.warning(
                "DARCNN stage 2: the stage-1 teacher found no instance above z = %g in %d iterations in a row: "
                "the detector is learning background only. Train stage 1 longer or lower pseudo_score_threshold.",
                self.score_threshold, EMPTY_PSEUDO_LABEL_STEPS,
            )
        return out
