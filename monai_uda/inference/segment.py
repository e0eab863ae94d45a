"""Segment every image of a folder (2D images or 3D volumes) with a trained network.

:class:`FolderSegmenter` is what the ``inference.yaml`` of every bundle instantiates. It composes
the folder (:class:`~monai_uda.inference.folder.ImageFolder`), the reader with the preprocessing
of training (:func:`~monai_uda.inference.readers.read_preprocessed`), the network stage
(:class:`~monai_uda.inference.network.SegmentationNetwork`: checkpoint, MONAI's
:class:`~monai.inferers.SlidingWindowInferer` for images of any size, also smaller than the
window, probabilities, post-processing into instances) and the writers
(:func:`~monai_uda.inference.writers.write_image_outputs`, with the input's spacing/affine).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_uda.inference.folder import ImageFolder, folder_output_names
from monai_uda.inference.network import SegmentationNetwork
from monai_uda.inference.readers import read_preprocessed
from monai_uda.inference.writers import volume_geometry, write_image_outputs
from monai_uda.transforms import inference_transforms

__all__ = ["FolderSegmenter", "segment_image"]


def segment_image(
    folder: ImageFolder, transforms: Callable[[dict[str, Any]], dict[str, Any]], path: str | Path,
    instances_of: Callable[[torch.Tensor, Path], np.ndarray],
) -> dict[str, Any]:
    """Read one image of ``folder`` with ``transforms``, label it with ``instances_of(image (C, *spatial), path)``
    and write its outputs; returns its record (``stem``, ``image``, output paths, ``n_instances``, ``seconds``)."""
    path = Path(path)
    start = time.perf_counter()
    image = read_preprocessed(transforms, path)
    instances = instances_of(image.as_tensor(), path)
    paths = folder.output_paths(path)
    write_meta: dict[str, Any] = {}
    if image.ndim == 4:  # a 3D image: the geometry of the outputs
        affine = image.affine.numpy() if image.meta.get("format") in (".nii", ".nii.gz") else None
        write_meta = volume_geometry(affine, image.meta.get("spacing"))
    n_instances = write_image_outputs(paths, image, instances, write_meta)
    record = folder.record(path, paths)
    record.update(n_instances=n_instances, seconds=time.perf_counter() - start)
    return record


class FolderSegmenter:
    """Segment all images in ``input_dir`` and write masks, instance maps and overlays to ``output_dir``.

    For every input ``<stem>.<ext>`` it writes ``<stem>_mask`` (2D: PNG ``uint8`` 0/255; 3D:
    NIfTI), ``<stem>_instances`` (2D: TIFF ``uint16``/``uint32``; 3D: NIfTI, with the input's
    affine or spacing) and, for 2D with ``overlay``, ``<stem>_overlay.png``. Inputs sharing a stem
    (``x.png``, ``x.tif``) get distinct names (:func:`~monai_uda.inference.folder.output_stems`). An input file is never
    overwritten, nor one output by another (checked before anything is written); outputs of earlier
    runs with the same names in ``output_dir`` are replaced (atomically, through symlinks, see
    :mod:`monai_uda.files`), any other file there is left alone.

    Args:
        network: the segmentation network (``spatial_dims`` and ``channels`` must match it).
        input_dir: folder of images (see :func:`monai_uda.data.io.list_images`).
        output_dir: folder for the results (created).
        spatial_dims: 2 for images, 3 for volumes; inputs of the other kind are refused.
        channels: input channels of the network; grey images are repeated to 3 channels and RGB
            images turned to luminance when needed, other mismatches are refused.
        invert: invert intensities (e.g. bright-field images for a fluorescence-trained model).
        value_range: intensity range the network was trained on (percentile scaling).
            Preprocessing is :func:`monai_uda.transforms.inference_transforms`, the one of training.
        mask_ext: suffix of the mask files; default ``.png`` (2D) / ``.nii.gz`` (3D).
        instance_ext: suffix of the instance files; default ``.tif`` (2D) / ``.nii.gz`` (3D).
        overlay: also write ``<stem>_overlay.png`` (2D only): instance boundaries over the image as
            the network saw it (after channel policy and ``invert``).
        network_kwargs: ``roi_size``, ``sw_batch_size``, ``overlap``, ``mode``, ``device``,
            ``ckpt_path``, ``ckpt_key``, ``output_activation``, ``threshold``, ``postprocess``,
            ``min_size``, ``diameter``, ``reference_diameter``, ``amp``, ``padding_mode``: see
            :class:`~monai_uda.inference.network.SegmentationNetwork`.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        input_dir: str,
        output_dir: str,
        spatial_dims: int = 2,
        channels: int = 1,
        invert: bool = False,
        value_range: Sequence[float] = (0.0, 1.0),
        mask_ext: str | None = None,
        instance_ext: str | None = None,
        overlay: bool = True,
        **network_kwargs: Any,
    ) -> None:
        self.model = SegmentationNetwork(network, spatial_dims, **network_kwargs)
        self.spatial_dims = spatial_dims
        self.transforms = inference_transforms(spatial_dims, channels, invert, value_range)
        self.overlay = overlay and spatial_dims == 2
        self.folder = ImageFolder(
            input_dir,
            output_dir,
            folder_output_names(
                mask_ext or (".png" if spatial_dims == 2 else ".nii.gz"),
                instance_ext or (".tif" if spatial_dims == 2 else ".nii.gz"),
                overlay=self.overlay,
            ),
        )

    def segment_file(self, path: str | Path) -> dict[str, Any]:
        """Segment one image and write its outputs; returns the record described in :meth:`run`."""
        model = self.model
        return segment_image(
            self.folder, self.transforms, path, lambda image, p: model.instances(model.probabilities(image[None], p))
        )

    def run(self) -> list[dict[str, Any]]:
        """Segment every image of ``input_dir``.

        Returns:
            One record per input: ``stem``, ``image``, the written ``mask``, ``instances`` (and
            ``overlay``) paths, ``n_instances`` and ``seconds``.

        Raises:
            UDAInputError: empty input folder, output clashing with an input, unwritable output
                folder, or an input that cannot be read or does not fit the network.
        """
        return self.folder.run(self.segment_file)
