"""The pieces of a bundle's validation that MONAI does not provide: its items, transforms and AD-GAN's adapter.

A bundle whose datalist holds a ``"validation"`` list of labelled target images validates with
:class:`DiceValidation`, a handler its ``train.yaml`` lists among the training handlers: a MONAI
``SupervisedEvaluator`` (whole images through a ``SlidingWindowInferer``, ``MeanDice`` of the
foreground against ``label > 0``) run every ``interval`` iterations by MONAI's
``ValidationHandler``, the best networks kept as ``model_best.pt``. Its parts:

* :func:`validation_items`: the labelled items to validate on, or none, which disables validation;
* :func:`validation_transforms`: the images prepared as inference prepares them (the same
  channels, inversion and percentile scaling) together with their instance labels;
* :class:`MaskForeground`: AD-GAN's generator as a network with one foreground score, positive
  where its inference labels foreground, and :class:`DetectionForeground`, a Mask R-CNN's merged
  instances as the same score, so that every bundle shares one post-processing (``score >= 0``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset, DistributedSampler
from monai.engines import SupervisedEvaluator
from monai.handlers import MeanDice, StatsHandler, ValidationHandler, from_engine
from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import AsDiscreted, Compose, EnsureTyped
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads

from monai_uda import flag
from monai_uda.data.datalist import get_split
from monai_uda.engines.checkpoint import save_atomic
from monai_uda.inference.detection import detect_tiled, detect_volume, mask_rcnn_detector
from monai_uda.networks.adain import AdaINGenerator, DomainTranslator
from monai_uda.transforms import LoadUDAImaged, inference_transforms

__all__ = [
    "BestModelSaver", "DetectionForeground", "DiceValidation", "MaskForeground", "validation_items",
    "validation_transforms",
]


def validation_items(datalist: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The datalist's ``"validation"`` items, each checked to have a ``"label"``; empty when there are none.

    Args:
        datalist: as returned by :func:`monai_uda.data.datalist.load_datalist`.

    Raises:
        UDAInputError: a validation item without a ``"label"``.
    """
    if not datalist.get("validation"):
        return []
    return get_split(datalist, "validation", require_labels=True)


def validation_transforms(
    spatial_dims: int, channels: int, invert: Any = False, value_range: Sequence[float] = (0.0, 1.0)
) -> Compose:
    """Whole validation images prepared as :func:`monai_uda.transforms.inference_transforms` does, with labels.

    The image and its instance label are read together (so that their shapes are checked against
    each other); the inference chain then passes the read image through unchanged and scales it.

    Args:
        spatial_dims: 2 or 3.
        channels: channel count of the network.
        invert: invert the image (a bool or a true/false word), as the target domain at inference.
        value_range: the intensity range the network was trained on.
    """
    return Compose(
        [
            LoadUDAImaged("image", label_keys="label", spatial_dims=spatial_dims),
            inference_transforms(spatial_dims, channels, invert, value_range),
            EnsureTyped("label", dtype=torch.int32, track_meta=False),
        ]
    )


class MaskForeground(nn.Module):
    """AD-GAN's image -> mask translation as one foreground score per pixel, ``>= 0`` on foreground.

    AD-GAN's mask is ``> 0`` on nuclei; AD-GAN-INS (``ternary``) segments by the nearest of the
    levels background / edge / interior, so its foreground score is the better of edge and
    interior minus background (the argmax of its inference is not background).

    Args:
        generator: the trained :class:`~monai_uda.networks.adain.AdaINGenerator`.
        ternary: AD-GAN-INS (a bool or a true/false word).
    """

    def __init__(self, generator: AdaINGenerator, ternary: Any = False) -> None:
        super().__init__()
        self.translator = DomainTranslator(generator, to_domain="mask", ternary=ternary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.translator(x)
        if scores.shape[1] == 1:
            return scores
        return torch.maximum(scores[:, 1:2], scores[:, 2:3]) - scores[:, 0:1]


class DetectionForeground(nn.Module):
    """A Mask R-CNN's instances, tiled and merged as its inference does, as a foreground score ``+-0.5``.

    While it validates, the detector's box heads keep only detections above ``score_threshold``, at
    most ``detections_per_tile``, as the inference configs build them: a detector in training keeps
    torchvision's low training-time threshold, whose many weak boxes would each run the mask head.

    Args:
        detector: a torchvision-style detector (``eval()`` forward returns ``masks``/``scores``).
        tile_size: the inference tile (the training patch). tile_overlap, score_threshold,
            mask_threshold, min_size: as the bundle's ``inference.yaml`` passes them to
            :func:`~monai_uda.inference.detection.detect_tiled`.
        detections_per_tile: the most detections a tile keeps.
    """

    def __init__(
        self,
        detector: nn.Module,
        tile_size: int | Sequence[int],
        tile_overlap: int = 64,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        min_size: int = 10,
        detections_per_tile: int = 100,
    ) -> None:
        super().__init__()
        self.detector = detector
        self.box_limits = {"score_thresh": score_threshold, "detections_per_img": detections_per_tile}
        self.tiled = {"tile_size": tile_size, "overlap": tile_overlap, "score_threshold": score_threshold,
                      "mask_threshold": mask_threshold, "min_size": min_size}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = [m for m in self.detector.modules() if isinstance(m, RoIHeads)]
        kept = [{name: getattr(h, name) for name in self.box_limits} for h in heads]
        for head in heads:
            vars(head).update(self.box_limits)
        try:
            detect = mask_rcnn_detector(self.detector, x.device)
            merge = detect_volume if x.ndim == 5 else detect_tiled  # 3D: slice-wise, linked across z
            foreground = [torch.as_tensor(merge(image, detect, **self.tiled) > 0) for image in x]
        finally:
            for head, values in zip(heads, kept):
                vars(head).update(values)
        return torch.stack(foreground)[:, None].to(x.device, torch.float32) - 0.5


class BestModelSaver:
    """After each validation, ``<output_dir>/model_best.pt`` when the key metric is the best so far.

    The file has ``model.pt``'s layout (network name -> ``state_dict``, one network or several:
    MONAI's ``CheckpointSaver`` would store a single network's ``state_dict`` without its name), so
    ``inference.yaml`` loads either with the same ``ckpt_key``. Written atomically.

    Args:
        networks: name -> network, as the method's ``networks()``.
        output_dir: the folder of ``model.pt``.
    """

    def __init__(self, networks: Mapping[str, nn.Module], output_dir: str) -> None:
        self.networks = dict(networks)
        self.path = Path(output_dir) / "model_best.pt"
        self.best = -math.inf

    def attach(self, evaluator: Engine) -> None:
        evaluator.add_event_handler(Events.COMPLETED, self)

    def __call__(self, evaluator: Engine) -> None:
        name = evaluator.state.key_metric_name
        score = float(evaluator.state.metrics[name])
        if self.update(score):
            evaluator.logger.info(f"{name} {score:.4f}: the best so far, saved to {self.path}")

    def state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """The networks in ``model.pt``'s layout: name -> ``state_dict``."""
        return {name: net.state_dict() for name, net in self.networks.items()}

    def update(self, score: float) -> bool:
        """Write ``model_best.pt`` when ``score`` (higher is better) beats every earlier one; whether it did."""
        if not score > self.best:
            return False
        self.best = score
        save_atomic(self.state_dicts(), self.path)
        return True


class DiceValidation:
    """Foreground Dice on the datalist's validation list every ``interval`` iterations; the best kept.

    An Ignite handler for a stage's handler list. Without validation items it attaches nothing,
    so the training runs as it would without it. The evaluator's data loader has its own random
    generator: validating draws nothing from the training's random numbers, and MONAI's
    evaluator returns the networks to training mode afterwards.

    Args:
        datalist: as returned by :func:`monai_uda.data.datalist.load_datalist`.
        network: the network to validate: one foreground score per pixel, ``>= 0`` on foreground.
        save_dict: the networks ``model_best.pt`` holds (as ``model.pt`` does).
        output_dir: where ``model_best.pt`` goes.
        device: the training's device.
        spatial_dims: 2 or 3. channels: the network's input channels.
        roi_size: the sliding window (the training patch), for the default inferer.
        invert: invert the images as the target domain is inverted at inference (a bool or a word).
        value_range: the intensity range the network was trained on.
        interval: iterations between validations.
        sw_batch_size: windows per forward pass. overlap: window overlap.
        num_workers: data loader workers.
        main_process: ``False`` on the other ranks of a multi-GPU run: they validate their share but
            neither log nor write ``model_best.pt``.
        distributed: each rank validates its share of the items (MONAI's metrics gather them).
        inferer: how the network sees a whole image; default: a Gaussian-blended sliding window over
            ``roi_size`` (detectors tile and merge themselves: ``SimpleInferer``).
    """

    def __init__(
        self,
        datalist: Mapping[str, list[dict[str, Any]]],
        network: nn.Module,
        save_dict: Mapping[str, nn.Module],
        output_dir: str,
        device: torch.device | str,
        spatial_dims: int,
        channels: int,
        roi_size: Sequence[int] | None = None,
        invert: Any = False,
        value_range: Sequence[float] = (0.0, 1.0),
        interval: int = 500,
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        num_workers: int = 0,
        main_process: Any = True,
        distributed: Any = False,
        inferer: Inferer | None = None,
    ) -> None:
        self.items = validation_items(datalist)
        self.interval = int(interval)
        dataset = Dataset(self.items, validation_transforms(spatial_dims, channels, invert, value_range))
        sampler = DistributedSampler(dataset, shuffle=False) if flag(distributed) and self.items else None
        loader = DataLoader(dataset, batch_size=1, num_workers=num_workers, sampler=sampler,
                            generator=torch.Generator())
        handlers: list[Any] = []
        if flag(main_process):
            handlers = [
                StatsHandler(tag_name="val", iteration_log=False),
                BestModelSaver(save_dict, output_dir),
            ]
        self.evaluator = SupervisedEvaluator(
            device=device,
            val_data_loader=loader,
            network=network,
            inferer=inferer or SlidingWindowInferer(roi_size, sw_batch_size=sw_batch_size, overlap=overlap,
                                                    mode="gaussian"),
            postprocessing=AsDiscreted(keys=["pred", "label"], threshold=[0.0, 0.5]),  # score >= 0, label > 0
            key_val_metric={"val_mean_dice": MeanDice(include_background=True,
                                                      output_transform=from_engine(["pred", "label"]))},
            val_handlers=handlers,
        )

    def attach(self, engine: Any) -> None:
        """Run the evaluator every ``interval`` iterations of ``engine``; nothing without validation items."""
        if self.items:
            ValidationHandler(self.interval, validator=self.evaluator, epoch_level=False).attach(engine)
