"""Inference: sliding-window segmentation of image folders, whole slides and whole volumes; tiled detection of
image folders and whole slides; instance post-processing; AD-GAN mask -> image synthesis.

A pipeline of small parts: reader (:mod:`.readers`, :mod:`.tissue`, :mod:`.scaling`) -> windows
(:mod:`.windows`) -> network (:mod:`.network`, :mod:`.detection`) -> blender (:mod:`.blending`) ->
labeller (:mod:`.labeller`, :mod:`.postprocess`, :mod:`.records`) -> writers (:mod:`.writers`).
The runners compose them: :class:`FolderSegmenter` (:mod:`.segment`), :class:`SlideSegmenter`
(:mod:`.wsi`, with :mod:`.slides` and :mod:`.streaming`), :class:`VolumeSegmenter` (:mod:`.volume`),
:class:`FolderDetector`, :class:`SlideDetector` (:mod:`.wsi_detection`) and
:class:`FolderSynthesizer` (:mod:`.synthesis`).
"""

from __future__ import annotations

from monai_uda.inference.detection import FolderDetector
from monai_uda.inference.folder import check_outputs
from monai_uda.inference.network import recorded, recorded_diameter, to_probabilities
from monai_uda.inference.overlay import overlay_instances, save_overlay
from monai_uda.inference.postprocess import (
    binary_to_instances,
    relabel_sequential,
    remove_small,
    ternary_to_instances,
    typical_diameter,
)
from monai_uda.inference.segment import FolderSegmenter
from monai_uda.inference.synthesis import FolderSynthesizer, label_to_mask_domain
from monai_uda.inference.volume import VolumeSegmenter
from monai_uda.inference.wsi import SlideSegmenter
from monai_uda.inference.wsi_detection import SlideDetector

__all__ = [
    "FolderDetector",
    "FolderSegmenter",
    "FolderSynthesizer",
    "SlideDetector",
    "SlideSegmenter",
    "VolumeSegmenter",
    "binary_to_instances",
    "check_outputs",
    "label_to_mask_domain",
    "overlay_instances",
    "recorded",
    "recorded_diameter",
    "relabel_sequential",
    "remove_small",
    "save_overlay",
    "ternary_to_instances",
    "to_probabilities",
    "typical_diameter",
]
