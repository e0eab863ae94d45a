"""Label-free checkpoint selection: score the networks on target images without their labels.

A bundle whose datalist has no labelled ``"validation"`` list cannot validate with
:class:`~monai_uda.engines.validation.DiceValidation`. :class:`LabelFreeSelection` is its
counterpart: every ``interval`` iterations the segmenter runs on a fixed subset of the datalist's
``"target"`` images (whole images by sliding window, prepared as inference prepares them, or their
centre ``crop`` to bound the cost; only their ``"image"`` is ever read) and is scored by a criterion
that needs no target labels:

* ``agreement`` (default): the soft Dice between the prediction of an image and those of its flipped
  and quarter-turned copies mapped back (:func:`augmentation_views`), averaged over both classes,
  foreground and background (:func:`class_agreement`). A segmenter that has adapted to the target
  should segment a nucleus the same way whatever its orientation. Both classes, because a network
  that labels everything foreground (or everything background) agrees with itself perfectly on
  that class: the class it leaves empty scores 0, so such a network scores at most 0.5, below any
  that segments (found on the close-domain benchmark, where a foreground-only agreement kept an
  all-foreground network of iteration 50). ``selection.json`` also records the foreground fraction.
* ``entropy``: minus the mean binary entropy (bits) of the foreground probability: confident
  predictions score higher.

A Mask R-CNN is scored the same way through
:class:`~monai_uda.engines.validation.DetectionForeground` (its instances tiled and merged as its
inference does, their union as the foreground): that foreground is binary (``foreground_score:
binary``), so only ``agreement`` applies, and a detector that finds nothing in any view scores 0.

The score is logged, appended to ``<output_dir>/selection.json`` and the best networks are kept as
``model_best.pt`` by :class:`~monai_uda.engines.validation.BestModelSaver`.
:func:`rank_correlation` tells how well such a score ranks checkpoints against their true accuracy.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite import distributed as idist
from ignite.engine import Engine, Events
from monai.inferers import Inferer
from monai.networks import eval_mode
from monai.transforms import CenterSpatialCrop
from monai.utils import convert_to_tensor
from scipy import stats
from torch import nn

from monai_uda import flag
from monai_uda.data.datalist import get_split
from monai_uda.engines.checkpoint import save_atomic
from monai_uda.engines.validation import BestModelSaver, validation_items
from monai_uda.errors import UDAInputError
from monai_uda.files import write_json

__all__ = [
    "SCORES", "LabelFreeSelection", "augmentation_views", "binary_entropy", "class_agreement", "foreground_probability",
    "rank_correlation", "score_image", "scored_checkpoints", "selection_items", "soft_dice",
]

#: the label-free criteria, each higher-is-better
SCORES = ("agreement", "entropy")
#: how a network's foreground score becomes a probability (see :func:`foreground_probability`)
FOREGROUND_SCORES = ("logit", "unit", "binary")

View = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def augmentation_views(spatial_dims: int) -> list[View]:
    """The input views of the agreement score as ``(apply, map back)`` pairs on ``(B, C, *spatial)`` tensors.

    The identity first, then a flip of each spatial axis (its own inverse) and a quarter turn in the
    last two axes (undone by a quarter turn back): the orientations a nucleus has no preference for.
    """
    views: list[View] = [(_identity, _identity)]
    for axis in range(2, 2 + spatial_dims):
        flip = partial(torch.flip, dims=(axis,))
        views.append((flip, flip))
    views.append((partial(torch.rot90, k=1, dims=(-2, -1)), partial(torch.rot90, k=-1, dims=(-2, -1))))
    return views


def foreground_probability(scores: torch.Tensor, kind: str = "logit") -> torch.Tensor:
    """A network's foreground score (``>= 0`` on foreground) as a probability in ``[0, 1]``.

    Args:
        scores: the network's output.
        kind: ``"logit"``: a segmenter's logits, ``sigmoid(s)``; ``"unit"``: a score whose certain
            values are ``-1`` and ``1`` (AD-GAN's mask domain), ``(s + 1) / 2`` clipped to ``[0, 1]``;
            ``"binary"``: a decision only (a detector's merged instances), 1 where ``s >= 0``, else 0.
    """
    if kind == "logit":
        return torch.sigmoid(scores)
    if kind == "binary":
        return (scores >= 0).float()
    return ((scores + 1.0) / 2.0).clamp(0.0, 1.0)


def soft_dice(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> float:
    """``2 sum(a b) / (sum(a) + sum(b))`` of two probability maps; 1 when both are empty."""
    return float((2.0 * (a * b).sum() + eps) / (a.sum() + b.sum() + eps))


def class_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """The mean over foreground and background of the soft Dice of two foreground probability maps.

    ``2 sum(x y) / (sum(x) + sum(y))`` per class, without :func:`soft_dice`'s smoothing: a class that neither
    map has scores 0, not 1 (predicting one class everywhere is no evidence of agreement on the other), and
    a faint class (``p`` everywhere) agrees with itself by ``p`` only. Any map that is the same value
    everywhere, e.g. one class everywhere, scores 0.5 with itself.
    """
    dice = []
    for x, y in ((a, b), (1.0 - a, 1.0 - b)):
        total = float(x.sum() + y.sum())
        dice.append(2.0 * float((x * y).sum()) / total if total > 0 else 0.0)
    return float(np.mean(dice))


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """``-p log2 p - (1 - p) log2 (1 - p)`` per pixel: 0 when certain, 1 bit at ``p = 0.5``."""
    p = p.double().clamp(1e-12, 1.0 - 1e-12)
    return -(p * torch.log2(p) + (1.0 - p) * torch.log2(1.0 - p))


def score_image(
    network: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    inferer: Inferer,
    score: str = "agreement",
    kind: str = "logit",
) -> tuple[float, float]:
    """One image's label-free score and the fraction of it predicted foreground.

    Args:
        network: one foreground score per pixel, ``>= 0`` on foreground.
        image: ``(1, C, *spatial)``.
        inferer: how the network sees a whole image (a sliding window).
        score: ``"agreement"``: mean :func:`class_agreement` between the prediction of the image and those
            of each other view of :func:`augmentation_views`, mapped back; ``"entropy"``: minus the mean
            :func:`binary_entropy` of the prediction.
        kind: the network's score, as :func:`foreground_probability` takes it (``"binary"``: a detector
            that finds nothing in any view agrees on the background only, 0.5).
    """
    views = augmentation_views(image.ndim - 2) if score == "agreement" else [(_identity, _identity)]
    probabilities = []
    for apply, back in views:
        scores = convert_to_tensor(inferer(apply(image), network), track_meta=False)
        probabilities.append(back(foreground_probability(scores, kind)))
    first = probabilities[0]
    if score == "agreement":
        value = float(np.mean([class_agreement(first, other) for other in probabilities[1:]]))
    else:
        value = -float(binary_entropy(first).mean())
    return value, float((first >= 0.5).float().mean())


def selection_items(datalist: Mapping[str, list[dict[str, Any]]], images: int) -> list[dict[str, Any]]:
    """At most ``images`` target items, evenly spaced over the ``"target"`` list, each with its ``"image"`` only.

    Any ``"label"`` of a target item is dropped here, so selection can never read it.
    """
    items = get_split(datalist, "target")
    picked = np.unique(np.linspace(0, len(items) - 1, num=min(images, len(items))).round().astype(int))
    return [{"image": items[i]["image"]} for i in picked]


def rank_correlation(scores: Sequence[float], true_values: Sequence[float]) -> float:
    """Spearman's rank correlation of checkpoint scores with their true accuracy (e.g. AJI).

    1: the score orders the checkpoints as the true values do; -1: in reverse; ties get their mean
    rank. NaN with fewer than two checkpoints or when either side is constant (no ranking to compare).

    Raises:
        ValueError: the sequences differ in length.
    """
    x, y = np.asarray(scores, dtype=float), np.asarray(true_values, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"expected two sequences of the same length, got {x.shape} and {y.shape}")
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y)[0])


def scored_checkpoints(output_dir: str | Path) -> dict[int, Path]:
    """``iteration -> scored/model_iteration=N.pt`` for the scorings of ``selection.json`` whose networks were kept."""
    output_dir = Path(output_dir)
    path = output_dir / "selection.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    found = {int(e["iteration"]): output_dir / "scored" / f"model_iteration={int(e['iteration'])}.pt" for e in entries}
    return {iteration: file for iteration, file in found.items() if file.is_file()}


class LabelFreeSelection:
    """Score the segmenter on target images every ``interval`` iterations, without labels; keep the best.

    An Ignite handler for a stage's handler list, the counterpart of
    :class:`~monai_uda.engines.validation.DiceValidation` for a datalist without a labelled
    ``"validation"`` list: with one (or ``enabled`` false) it attaches nothing. Each scoring logs one
    INFO line, appends ``{"iteration", "score", "foreground", "seconds"}`` to ``<output_dir>/selection.json``
    (written whole, atomically; ``seconds``: wall time since the engine's ``Events.STARTED`` when the networks
    were scored, plus on resume the last earlier scoring's, so time after it before the interruption is lost),
    keeps the best networks as ``model_best.pt`` (``model.pt``'s layout)
    and, with ``keep_scored_models``, the networks of every scoring as
    ``<output_dir>/scored/model_iteration=N.pt``. Scoring draws no random numbers and returns the
    network to training mode.

    Args:
        datalist: as returned by :func:`monai_uda.data.datalist.load_datalist`.
        network: the network to score: one foreground score per pixel, ``>= 0`` on foreground (a
            detector: :class:`~monai_uda.engines.validation.DetectionForeground` with ``foreground_score``
            ``binary`` and a ``SimpleInferer``).
        save_dict: the networks ``model_best.pt`` holds (as ``model.pt`` does).
        output_dir: where ``selection.json``, ``model_best.pt`` and ``scored/`` go.
        device: the training's device.
        transform: reads a target image as inference does (:func:`monai_uda.transforms.inference_transforms`
            with the target domain's inversion and the training's intensity range).
        inferer: how the network sees a whole image, e.g. a Gaussian-blended sliding window over the
            training patch as ``inference.yaml`` declares it.
        interval: iterations between scorings.
        enabled: false turns selection off (a bool or a word).
        score: the criterion, one of :data:`SCORES`.
        images: at most this many target images (:func:`selection_items`).
        crop: score the centre ``crop`` of each image (smaller axes whole; fewer axes than the image: its
            last axes, e.g. a 2D patch of every slice of a volume); ``None``: whole images. A detector's
            scoring costs tiles x views per image: a crop of one training patch keeps it to one tile.
        foreground_score: the network's score, one of :data:`FOREGROUND_SCORES`.
        keep_scored_models: also write the networks of every scoring (a bool or a word).
        resume: the training resumes: earlier scorings of ``selection.json`` are kept and the best of
            them must be beaten to replace ``model_best.pt``.
        main_process: ``False`` on the other ranks of a multi-GPU run: they score their share of the
            images but neither log nor write.
        distributed: each rank scores its share of the images; the mean is taken over all of them.

    Raises:
        UDAInputError: an unknown ``score`` or ``foreground_score``, ``entropy`` of a ``binary`` foreground
            (always 0: nothing to rank), or ``images`` below 1.
    """

    def __init__(
        self,
        datalist: Mapping[str, list[dict[str, Any]]],
        network: nn.Module,
        save_dict: Mapping[str, nn.Module],
        output_dir: str,
        device: torch.device | str,
        transform: Callable[[dict[str, Any]], dict[str, Any]],
        inferer: Inferer,
        interval: int = 500,
        enabled: Any = True,
        score: str = "agreement",
        images: int = 8,
        foreground_score: str = "logit",
        keep_scored_models: Any = False,
        resume: Any = False,
        main_process: Any = True,
        distributed: Any = False,
        crop: Sequence[int] | None = None,
    ) -> None:
        _check_choice("selection_score", score, SCORES)
        _check_choice("foreground_score", foreground_score, FOREGROUND_SCORES)
        if score == "entropy" and foreground_score == "binary":
            raise UDAInputError("selection_score entropy needs foreground probabilities, but this network's "
                                "foreground is binary (a detector's merged instances): use agreement")
        if isinstance(images, bool) or not isinstance(images, int) or images < 1:
            raise UDAInputError(f"selection_images must be a whole number of at least 1, got {images!r}")
        self.enabled = flag(enabled) and not validation_items(datalist)
        self.items = selection_items(datalist, images) if self.enabled else []
        if flag(distributed):
            self.items = self.items[idist.get_rank()::idist.get_world_size()]
        self.transform, self.inferer = transform, inferer
        self.crop = None if crop is None else [int(c) for c in crop]
        self.network, self.device, self.score, self.kind = network, torch.device(device), score, foreground_score
        self.interval, self.keep, self.resume = int(interval), flag(keep_scored_models), flag(resume)
        self.main_process, self.distributed = flag(main_process), flag(distributed)
        self.output_dir = Path(output_dir)
        self.saver = BestModelSaver(save_dict, output_dir)
        self.history: list[dict[str, float]] | None = None
        self._images: list[torch.Tensor] | None = None
        self._started, self._offset = time.perf_counter(), 0.0

    def attach(self, engine: Engine) -> None:
        """Score every ``interval`` iterations of ``engine``; nothing when disabled or validating with labels."""
        if self.enabled:
            engine.add_event_handler(Events.STARTED, lambda _: setattr(self, "_started", time.perf_counter()))
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        seconds = time.perf_counter() - self._started
        score, foreground, count = self.measure()
        if self.main_process:
            self._record(engine, engine.state.iteration, score, foreground, count, seconds)

    def measure(self) -> tuple[float, float, int]:
        """The networks' mean score and foreground fraction over the images (all ranks'), and their number."""
        if self._images is None:  # this rank's share, read once (inference_transforms draws no random numbers)
            self._images = [self.transform(dict(item))["image"] for item in self.items]
            if self.crop is not None:
                self._images = [_center_crop(image, self.crop) for image in self._images]
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        with eval_mode(self.network):
            for image in self._images:
                value, foreground = score_image(self.network, image[None].to(self.device), self.inferer,
                                                self.score, self.kind)
                totals += torch.tensor([value, foreground, 1.0], dtype=torch.float64, device=self.device)
        if self.distributed:
            totals = idist.all_reduce(totals)
        count = int(totals[2])
        score, foreground = (totals[:2] / max(count, 1)).tolist()
        return score, foreground, count

    def _record(
        self, engine: Engine, iteration: int, score: float, foreground: float, count: int, seconds: float = 0.0
    ) -> None:
        """Append the scoring to ``selection.json``, keep the networks as asked, log one line."""
        if self.history is None:
            self.history = self._earlier(iteration)
            self._offset = float(self.history[-1].get("seconds", 0.0)) if self.history else 0.0  # resumed
        self.history.append({"iteration": iteration, "score": score, "foreground": foreground,
                             "seconds": round(self._offset + seconds, 2)})
        write_json(self.output_dir / "selection.json", self.history, what="selection scores")
        if self.keep:
            (self.output_dir / "scored").mkdir(parents=True, exist_ok=True)
            save_atomic(self.saver.state_dicts(), self.output_dir / "scored" / f"model_iteration={iteration}.pt")
        best = self.saver.update(score)
        verdict = f"the best so far, saved to {self.saver.path}" if best else f"the best is {self.saver.best:.4f}"
        engine.logger.info(f"label-free selection ({self.score}) at iteration {iteration}: {score:.4f} on "
                           f"{count} target images, foreground fraction {foreground:.3f}; {verdict}")

    def _earlier(self, iteration: int) -> list[dict[str, float]]:
        """On resume, the scorings ``selection.json`` holds from before ``iteration``; their best is the one to beat."""
        path = self.output_dir / "selection.json"
        if not (self.resume and path.is_file()):
            return []
        earlier = [e for e in json.loads(path.read_text()) if int(e["iteration"]) < iteration]
        if earlier and self.saver.path.is_file():
            self.saver.best = max(float(e["score"]) for e in earlier)
        return earlier


def _center_crop(image: torch.Tensor, crop: Sequence[int]) -> torch.Tensor:
    """The centre ``crop`` of a ``(C, *spatial)`` image; leading spatial axes beyond ``crop``'s are kept whole."""
    roi = [-1] * (image.ndim - 1 - len(crop)) + list(crop)  # MONAI: a non-positive size keeps the axis
    return convert_to_tensor(CenterSpatialCrop(roi)(image), track_meta=False)


def _check_choice(key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UDAInputError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
