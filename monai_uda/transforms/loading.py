"""Loading images and instance maps into MONAI ``MetaTensor`` objects.

:class:`LoadUDAImaged` is the first transform of every chain. It reads files through
:mod:`monai_uda.data.io` (the single reader of the library), so every image arrives
channel-first and float32 and every label as a ``(1, *spatial)`` int32 instance map, both
carrying the file name, spacing and (NIfTI) affine in their ``meta``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ensure_tuple

from monai_uda.data.io import read_image, read_label
from monai_uda.errors import UDAInputError

__all__ = ["LoadUDAImaged", "filename_of"]


def filename_of(array: Any) -> str | None:
    """The source file of ``array`` when it is a ``MetaTensor`` loaded from disk, else ``None``."""
    meta = getattr(array, "meta", None) or {}
    name = meta.get("filename_or_obj")
    return str(name) if name else None


def _to_meta_tensor(array: np.ndarray, meta: Mapping[str, Any]) -> MetaTensor:
    """Wrap ``array`` with MONAI's meta keys (``filename_or_obj``, ``affine``); ``None`` values dropped."""
    affine = meta.get("affine")
    kept = {k: v for k, v in meta.items() if v is not None and k not in ("affine", "filename")}
    kept["filename_or_obj"] = str(meta["filename"])
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if affine is None:
        return MetaTensor(tensor, meta=kept)
    return MetaTensor(tensor, affine=torch.as_tensor(affine, dtype=torch.float64), meta=kept)


class LoadUDAImaged(MapTransform):
    """Read the files named by ``keys`` (images) and ``label_keys`` (instance maps).

    Images become ``(C, *spatial)`` float32 and labels ``(1, *spatial)`` int32 ``MetaTensor``
    objects (0 = background). Values that are already arrays (``np.ndarray`` or tensors) pass
    through unchanged, so in-memory items can share a chain with file items.

    Args:
        keys: keys of image paths.
        label_keys: keys of label (instance-id map) paths.
        spatial_dims: 2 or 3 to reject images of the wrong dimensionality; ``None`` accepts both.
        allow_missing_keys: do not raise when a key is absent from the item.

    Raises:
        UDAInputError: unreadable files, wrong dimensionality, a value that is neither a path nor
            an array, or a label whose spatial shape differs from the first image's.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection = (),
        spatial_dims: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        label_keys = ensure_tuple(label_keys)
        super().__init__(ensure_tuple(keys) + label_keys, allow_missing_keys)
        self.label_keys = frozenset(label_keys)
        if spatial_dims not in (None, 2, 3):
            raise UDAInputError(f"spatial_dims must be 2, 3 or None, got {spatial_dims!r}")
        self.spatial_dims = spatial_dims

    def _load(self, key: Hashable, value: Any) -> Any:
        if isinstance(value, (np.ndarray, torch.Tensor)):
            return value
        if not isinstance(value, (str, Path)):
            raise UDAInputError(f"item {key!r} must be a file path or an array, got {type(value).__name__}")
        if key in self.label_keys:
            label = read_label(value, self.spatial_dims)
            if label.max(initial=0) > np.iinfo(np.int32).max:
                raise UDAInputError(f"instance ids above {np.iinfo(np.int32).max} are not supported", value)
            meta = {"filename": str(value), "spatial_shape": tuple(label.shape)}
            return _to_meta_tensor(label.astype(np.int32)[None], meta)
        image, meta = read_image(value, self.spatial_dims)
        return _to_meta_tensor(image, meta)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image_shape: tuple[int, ...] | None = None
        image_name: str | None = None
        for key in self.key_iterator(d):
            d[key] = self._load(key, d[key])
            if key not in self.label_keys and image_shape is None:
                image_shape, image_name = tuple(d[key].shape[1:]), filename_of(d[key]) or str(key)
        for key in self.key_iterator(d):
            if key in self.label_keys and image_shape is not None:
                label_shape = tuple(d[key].shape[-len(image_shape) :])
                if label_shape != image_shape:
                    raise UDAInputError(
                        f"label shape {label_shape} does not match image shape {image_shape} of {image_name}",
                        filename_of(d[key]) or key,
                    )
        return d
