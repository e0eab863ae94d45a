"""Channel policy and intensity scaling shared by every method.

Source and target domains often differ in channel count (grey fluorescence vs. RGB H&E) and
polarity (bright nuclei on a dark background vs. dark nuclei on a bright one). Every network
of a bundle has a fixed number of input channels, so images are brought to that count here;
``invert`` additionally turns fluorescence into a bright-field look, as CyC-PDAM does before
its image-to-image translation.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, ScaleIntensityRangePercentilesd, Transform
from monai.utils import convert_to_tensor
from monai.utils.type_conversion import convert_to_dst_type

from monai_uda import flag
from monai_uda.errors import UDAInputError
from monai_uda.transforms.loading import filename_of

__all__ = ["LUMINANCE_WEIGHTS", "ChannelPolicy", "ChannelPolicyd", "scale_intensity_percentiles"]

LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of R, G and B used for RGB -> grey."""

PERCENTILES = (1.0, 99.8)
"""Lower and upper percentiles mapped to the ends of the value range."""


class ChannelPolicy(Transform):
    """Bring a channel-first image to ``channels`` channels and optionally invert it.

    * grey -> RGB: the channel is repeated three times;
    * RGB -> grey: luminance ``0.299 R + 0.587 G + 0.114 B``;
    * same count: unchanged (any count, e.g. 2-channel data for a 2-channel network);
    * ``invert``: ``x -> max + min - x`` over the whole image (all channels together, so colours
      keep their order). After percentile scaling with clipping the image spans the value range
      exactly, so this is ``1 - x`` for ``(0, 1)`` and ``-x`` for ``(-1, 1)``: the "``max - x``"
      of CyC-PDAM, written so that a symmetric range stays the same range.

    Apply it *after* intensity scaling. Integer input comes out as float32.

    Args:
        channels: channel count the networks expect (>= 1).
        invert: turn bright-on-dark into dark-on-bright.

    Raises:
        UDAInputError: when the image cannot be converted (e.g. 2 or 5 channels for a 1- or
            3-channel network), naming the file when the image carries its meta data.
    """

    def __init__(self, channels: int, invert: bool = False) -> None:
        if not isinstance(channels, int) or channels < 1:
            raise UDAInputError(f"channels must be a positive integer, got {channels!r}")
        self.channels = channels
        self.invert = flag(invert)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        tensor = convert_to_tensor(img, track_meta=False)
        if not tensor.is_floating_point():
            tensor = tensor.float()
        count = tensor.shape[0]
        if count != self.channels:
            if count == 1 and self.channels == 3:
                tensor = tensor.repeat_interleave(3, dim=0)
            elif count == 3 and self.channels == 1:
                weights = torch.tensor(LUMINANCE_WEIGHTS, dtype=tensor.dtype).reshape(3, *([1] * (tensor.ndim - 1)))
                tensor = (tensor * weights).sum(dim=0, keepdim=True)
            else:
                raise UDAInputError(
                    f"image has {count} channels; expected 1 (grey) or 3 (RGB) to make {self.channels}",
                    filename_of(img),
                )
        if self.invert:
            tensor = tensor.max() + tensor.min() - tensor
        out, *_ = convert_to_dst_type(tensor, img, dtype=tensor.dtype)
        return out


class ChannelPolicyd(MapTransform):
    """Dictionary version of :class:`ChannelPolicy`.

    Args:
        keys: image keys.
        channels: channel count the networks expect.
        invert: turn bright-on-dark into dark-on-bright.
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(
        self, keys: KeysCollection, channels: int, invert: bool = False, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.policy = ChannelPolicy(channels, invert)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.policy(d[key])
        return d


def scale_intensity_percentiles(
    keys: KeysCollection, value_range: Sequence[float] = (0.0, 1.0), allow_missing_keys: bool = False
) -> ScaleIntensityRangePercentilesd:
    """MONAI percentile scaling: the 1st..99.8th percentile -> ``value_range``, clipped.

    The percentiles are taken over all channels together (colour balance is kept) and work the
    same for uint8, uint16 and float images.

    Args:
        keys: image keys.
        value_range: ``(low, high)`` output range; ``(0, 1)`` for most networks, ``(-1, 1)`` for
            tanh generators (AD-GAN).

    Raises:
        UDAInputError: a range that is not two increasing numbers.
    """
    if len(value_range) != 2 or not float(value_range[0]) < float(value_range[1]):
        raise UDAInputError(f"value_range must be (low, high) with low < high, got {tuple(value_range)}")
    return ScaleIntensityRangePercentilesd(
        keys,
        lower=PERCENTILES[0],
        upper=PERCENTILES[1],
        b_min=float(value_range[0]),
        b_max=float(value_range[1]),
        clip=True,
        allow_missing_keys=allow_missing_keys,
    )
