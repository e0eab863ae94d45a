"""Streaming segmentation: windows -> network -> blender -> class slabs -> labeller -> instance slabs.

:class:`StreamingSegmentation` is the part the whole-slide and volume runners hold: it reads the
windows it is given, runs them through a :class:`~monai_uda.inference.network.SegmentationNetwork`
in batches, blends them (:class:`~monai_uda.inference.blending.StreamingBlender`), thresholds the
blended slabs and labels instances as they complete
(:class:`~monai_uda.inference.labeller.StreamingInstanceLabeller`). Neither the image, the
probability map nor the instance map is ever held whole.

With ``prefetch_slabs > 0`` (the default on a GPU) the network and blending run in a worker
thread, a few class-map slabs ahead of the labelling
(:func:`~monai_uda.inference.threads.in_background`), so post-processing overlaps the network; on
CPU they run in turn, since both would share the same cores.

MONAI's ``PatchInferer`` runs its splitter, network and merger to the end before anything can be
read from the merged output, while the labelling here must take each slab as soon as it is
finished, which is why this pipeline (on MONAI's window grid and importance map) is ours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from monai_uda.errors import UDAInputError
from monai_uda.inference.blending import StreamingBlender
from monai_uda.inference.labeller import StreamingInstanceLabeller
from monai_uda.inference.network import SegmentationNetwork
from monai_uda.inference.records import NucleiTable
from monai_uda.inference.threads import default_workers, in_background
from monai_uda.inference.windows import Slab
from monai_uda.system import trim_freed_memory

__all__ = ["StreamingSegmentation"]

#: ``read(start) -> (C, *roi)`` raw window at ``start``
ReadFn = Callable[[tuple[int, ...]], np.ndarray]
#: raw windows ``(B, C, *roi)`` -> network input
ScaleFn = Callable[[np.ndarray], torch.Tensor]


class StreamingSegmentation:
    """Network, blending and labelling of a stream of windows, slab by slab along axis 0.

    Args:
        model: the network stage (its ``inferer`` gives window size, batch size and blending).
        group_width: see :class:`~monai_uda.inference.labeller.StreamingInstanceLabeller`.
        prefetch_slabs: class-map slabs the network thread may run ahead of the labelling (each
            one window-stride high across the image); 0 runs network and labelling in turn in one
            thread; default 2 on a GPU, 0 on CPU.
        postprocess_workers: threads post-processing groups of nuclei at once (the labeller's
            ``workers``); default torch's thread count, at most 4, each holding one group's temporaries.
    """

    def __init__(
        self,
        model: SegmentationNetwork,
        group_width: int = 2048,
        prefetch_slabs: int | None = None,
        postprocess_workers: int | None = None,
    ) -> None:
        self.model = model
        self.group_width = group_width
        if postprocess_workers is not None and postprocess_workers < 1:
            raise UDAInputError(f"postprocess_workers must be >= 1 (1: no worker threads), got {postprocess_workers}")
        self.postprocess_workers = postprocess_workers or default_workers()
        if prefetch_slabs is not None and prefetch_slabs < 0:
            raise UDAInputError(f"prefetch_slabs must be >= 0 (0: no worker thread), got {prefetch_slabs}")
        # on CPU the network and the labelling share the cores: overlapping them would only add memory
        self.prefetch_slabs = prefetch_slabs if prefetch_slabs is not None else (0 if model.device.type == "cpu" else 2)

    def labeller(self, axis_names: Sequence[str], **kwargs: Any) -> StreamingInstanceLabeller:
        """A labeller post-processing with the model's route, ``group_width`` and ``postprocess_workers``."""
        return StreamingInstanceLabeller(
            self.model.to_instances,
            axis_names,
            group_width=self.group_width,
            workers=self.postprocess_workers,
            **kwargs,
        )

    def class_slabs(
        self, read: ReadFn, image_size: tuple[int, ...], windows: list[tuple[int, ...]], scale: ScaleFn
    ) -> Iterator[np.ndarray]:
        """Windows -> network -> blender -> class-map slabs, top to bottom."""
        model = self.model
        roi = tuple(model.inferer.roi_size)
        blender: StreamingBlender | None = None
        batch_size = int(model.inferer.sw_batch_size)
        with tqdm(total=len(windows), desc="windows", unit="window", leave=False, mininterval=5.0) as progress:
            for b in range(0, len(windows), batch_size):
                starts = windows[b : b + batch_size]
                outputs = model.forward(scale(np.stack([read(start) for start in starts])))
                if blender is None:
                    blender = StreamingBlender(
                        image_size,
                        roi,
                        outputs.shape[1],
                        mode=model.inferer.mode,
                        sigma_scale=model.inferer.sigma_scale,
                    )
                for start, output in zip(starts, outputs):
                    yield from map(self._classes_of, blender.add(start, output))
                progress.update(len(starts))
        if blender is None:  # every window skipped: all background
            blender = StreamingBlender(
                image_size, roi, 3 if model.postprocess == "ternary" else 1, mode=model.inferer.mode
            )
        yield from map(self._classes_of, blender.finish())

    def _classes_of(self, slab: Slab) -> np.ndarray:
        return self.model.classes(slab[1])  # the float slab is not kept while the next windows run

    def instance_slabs(
        self,
        read: ReadFn,
        image_size: tuple[int, ...],
        windows: list[tuple[int, ...]],
        scale: ScaleFn,
        labeller: StreamingInstanceLabeller,
        table: NucleiTable,
    ) -> Iterator[Slab]:
        """:meth:`class_slabs` -> labeller -> instance slabs ``(start, uint32 ids)``; nuclei records go to ``table``.

        With ``prefetch_slabs > 0`` the class slabs are made in a worker thread (up to
        ``prefetch_slabs`` ahead) while this thread labels and writes the previous ones, so the
        post-processing overlaps the network, which releases the GIL in its kernels; with 0 they
        are made here, in turn with the labelling.
        """
        pending: np.ndarray | None = None  # pushed once the next slab shows whether it is the last
        slabs = self.class_slabs(read, image_size, windows, scale)
        for classes in in_background(slabs, self.prefetch_slabs) if self.prefetch_slabs > 0 else slabs:
            if pending is not None:
                yield from _push(labeller, table, pending, last=False)
            pending = classes
        yield from _push(labeller, table, pending, last=True)


def _push(labeller: StreamingInstanceLabeller, table: NucleiTable, classes: np.ndarray, last: bool) -> Iterator[Slab]:
    slabs = labeller.push(classes, last=last, write=table.writerows)[0]
    # the labelling's slab-sized temporaries are given back before the next network batch, the peak of the
    # run; once per slab, not per batch, since pages given back are faulted in again when reused
    trim_freed_memory()
    yield from slabs
