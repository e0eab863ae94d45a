"""Padding images that are smaller than the training patch.

MONAI's ``SpatialPad`` pads with one constant or with a numpy mode. Zero is background only in
fluorescence, mirroring would duplicate nuclei without duplicating their instance ids
correctly, and the per-line statistics of ``np.pad`` (``"median"``, ``"minimum"``) paint
streaks wherever a line crosses a nucleus. :class:`BackgroundPadd` pads every channel with
its own median instead: in sparse nuclei images that is the background colour of any
modality (black in fluorescence, pink in H&E, white once inverted).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, SpatialPad
from monai.utils import convert_to_tensor

__all__ = ["BackgroundPadd"]


class BackgroundPadd(MapTransform):
    """Pad images to at least ``spatial_size``, each channel with its median value.

    The image is centred as by ``SpatialPad(method="symmetric")``, so a label padded by
    ``SpatialPadd(label_key, spatial_size)`` (value 0) stays aligned with it.

    Args:
        keys: image keys.
        spatial_size: minimum spatial size; larger axes are left as they are.
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection, spatial_size: Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(int(s) for s in spatial_size)

    def _pad(self, image: Any) -> Any:
        if all(s >= p for s, p in zip(image.shape[1:], self.spatial_size)):
            return image
        medians = convert_to_tensor(image, track_meta=False).flatten(1).float().median(dim=1).values
        channels = [
            SpatialPad(self.spatial_size, method="symmetric", mode="constant", value=float(m))(image[c : c + 1])
            for c, m in enumerate(medians)
        ]
        return channels[0] if len(channels) == 1 else torch.cat(channels, dim=0)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._pad(d[key])
        return d
