"""The pieces of a bundle's validation that MONAI does not provide: its items, transforms and AD-GAN's adapter.

A bundle whose datalist holds a ``"validation"`` list of labelled target images declares in its
``train.yaml`` a MONAI ``SupervisedEvaluator`` (whole images through a ``SlidingWindowInferer``,
``MeanDice`` of the foreground against ``label > 0``), run every ``val_interval`` iterations by
MONAI's ``ValidationHandler``. What it needs from here:

* :func:`validation_items`: the labelled items to validate on, or none, which disables the handler;
* :func:`validation_transforms`: the images prepared as inference prepares them (the same
  channels, inversion and percentile scaling) together with their instance labels;
* :class:`MaskForeground`: AD-GAN's generator as a network with one foreground score, positive
  where its inference labels foreground, so that both bundles share one post-processing
  (``score >= 0``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.transforms import Compose, EnsureTyped
from torch import nn

from monai_uda.data.datalist import get_split
from monai_uda.networks.adain import AdaINGenerator, DomainTranslator
from monai_uda.transforms import LoadUDAImaged, inference_transforms

__all__ = ["MaskForeground", "validation_items", "validation_transforms"]


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
