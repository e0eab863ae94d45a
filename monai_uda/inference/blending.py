"""Blend window outputs of a sliding-window inference slab by slab along the first spatial axis.

:class:`StreamingBlender` adds window outputs weighted by MONAI"s importance map
(:func:`monai.data.utils.compute_importance_map`) into a rolling buffer one window high along
axis 0 and hands out every slab no later window can touch. Windows arrive in MONAI"s order
(:func:`~monai_uda.inference.windows.window_starts`), so each pixel sums the same terms in the
same order and the result equals :class:`~monai.inferers.SlidingWindowInferer`"s.

MONAI"s ``PatchInferer`` mergers (``AvgMerger``, ``ZarrAvgMerger``) hold or write the whole output
before it can be read back, while the labelling downstream needs finished rows as soon as no later
window touches them, which is why the blender is ours.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from monai.data.utils import compute_importance_map

from monai_uda.inference.windows import Slab

__all__ = ["StreamingBlender"]


def _move_rows_up(buffer: np.ndarray, start: int, stop: int) -> None:
    """Move ``buffer[start:stop]`` to ``buffer[:stop - start]`` in place.

    Blocks of ``start`` rows are copied top to bottom, so source and destination never overlap
    and numpy needs no temporary copy of the rows moved.
    """
    for dst in range(0, stop - start, max(start, 1)):
        n = min(start, stop - start - dst)
        buffer[dst : dst + n] = buffer[start + dst : start + dst + n]


class StreamingBlender:
    """Blend window outputs of a sliding-window inference slab by slab along axis 0.

    Args:
        image_size: spatial size of the whole image.
        roi_size: window size.
        channels: output channels of the network.
        mode: ``"gaussian"`` or ``"constant"`` importance map
            (:func:`monai.data.utils.compute_importance_map`, as the inferer).
        sigma_scale: Gaussian sigma relative to the window size (the inferer's default 0.125).

    Windows must be added in the order of :func:`window_starts`. Windows may be skipped:
    pixels no added window covers come out as NaN.

    Only the weighted sum is buffered (``C x roi_size[0]`` rows across the image); the sum of the
    weights is made for the rows handed out, from the windows added over them (in the order they
    were added, so the values are those of summing as they come), when a slab is finished, so
    the buffer holds one slab-sized array less while the network runs.
    """

    def __init__(
        self,
        image_size: Sequence[int],
        roi_size: Sequence[int],
        channels: int,
        mode: str = "gaussian",
        sigma_scale: float = 0.125,
    ) -> None:
        self.image_size = tuple(int(s) for s in image_size)
        self.roi_size = tuple(int(r) for r in roi_size)
        weight = compute_importance_map(
            self.roi_size, mode=mode, sigma_scale=sigma_scale, device="cpu", dtype=torch.float32
        )
        self.weight = weight.numpy()
        self.acc = np.zeros((channels, self.roi_size[0], *self.image_size[1:]), dtype=np.float32)
        self.added: list[tuple[int, ...]] = []  # starts of the windows added over the buffer's rows
        self.origin = 0

    def add(self, start: Sequence[int], output: np.ndarray | torch.Tensor) -> Iterator[Slab]:
        """Add one window output ``(C, *roi_size)`` at ``start``; returns the slabs it finished (float32 arrays)."""
        finished = self._advance(int(start[0])) if start[0] > self.origin else iter(())
        rest = self._rest(start)
        output = (
            output.detach().float().cpu().numpy()
            if isinstance(output, torch.Tensor)
            else np.asarray(output, np.float32)
        )
        self.acc[(slice(None), slice(None), *rest)] += output * self.weight
        self.added.append(tuple(int(s) for s in start))
        return finished

    def _rest(self, start: Sequence[int]) -> tuple[slice, ...]:
        """The window at ``start`` along axes 1.. (all rows of the buffer cover them)."""
        return tuple(slice(s, s + r) for s, r in zip(start[1:], self.roi_size[1:]))

    def _weight_sum(self, rows: int) -> np.ndarray:
        """Sum of the importance weights of the added windows over the buffer's first ``rows`` rows."""
        total = np.zeros((rows, *self.image_size[1:]), dtype=np.float32)
        for start in self.added:
            top = max(start[0], self.origin)
            bottom = min(start[0] + self.roi_size[0], self.origin + rows)
            if bottom > top:
                total[(slice(top - self.origin, bottom - self.origin), *self._rest(start))] += self.weight[
                    top - start[0] : bottom - start[0]
                ]
        return total

    def _advance(self, new_origin: int) -> Iterator[Slab]:
        """Hand out rows ``[origin, new_origin)``: the buffer's, then uncovered (NaN) slabs for skipped window rows."""
        rows = new_origin - self.origin
        head = min(rows, self.roi_size[0])
        with np.errstate(invalid="ignore", divide="ignore"):
            # 0 / 0 = NaN where no window was added
            slabs = [(self.origin, self.acc[:, :head] / self._weight_sum(head))]
        gaps = range(self.origin + head, new_origin, self.roi_size[0])
        shape = (self.acc.shape[0], *self.image_size[1:])
        # uncovered slabs are made one at a time as they are consumed (a blank stretch may be most of the image)
        gap_slabs = (
            (g, np.full((shape[0], min(self.roi_size[0], new_origin - g), *shape[1:]), np.nan, np.float32))
            for g in gaps
        )
        for channel in self.acc:
            _move_rows_up(channel, head, self.roi_size[0])
        keep = self.roi_size[0] - head
        self.acc[:, keep:] = 0.0
        self.origin = new_origin
        self.added = [start for start in self.added if start[0] + self.roi_size[0] > new_origin]
        return itertools.chain(_handed_out(slabs), gap_slabs)

    def finish(self) -> Iterator[Slab]:
        """The last slabs, up to the end of axis 0."""
        return self._advance(self.image_size[0])


def _handed_out(slabs: list[Slab]) -> Iterator[Slab]:
    """Yield and forget the slabs of a list: the consumer holds the only reference to each once it has it."""
    slabs.reverse()
    while slabs:
        yield slabs.pop()
