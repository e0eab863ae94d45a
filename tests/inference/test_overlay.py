from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from monai_uda.inference.overlay import overlay_instances, save_overlay


def _square() -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((3, 8, 8), dtype=np.float32)
    image[:, 2:6, 2:6] = 100.0
    instances = np.zeros((8, 8), dtype=np.uint16)
    instances[2:6, 2:6] = 7
    return image, instances


def test_boundary_drawn_in_colour_over_scaled_image():
    image, instances = _square()
    out = overlay_instances(image, instances, color=(255, 0, 0))
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    ring = np.zeros((8, 8), dtype=bool)
    ring[2:6, 2:6] = True
    ring[3:5, 3:5] = False  # inner boundary of the 4x4 square = its 12-pixel outline
    np.testing.assert_array_equal(out[ring], np.tile([255, 0, 0], (12, 1)))
    np.testing.assert_array_equal(out[3:5, 3:5], np.full((2, 2, 3), 255))  # bright square interior (scaled to 255)
    assert not out[~(ring | (out.sum(-1) == 765))].any()  # background stays black


def test_grey_image_and_constant_image():
    image, instances = _square()
    grey = overlay_instances(image[0], instances)
    np.testing.assert_array_equal(grey[2, 2], [255, 255, 0])
    np.testing.assert_array_equal(grey[3, 3], [255, 255, 255])
    flat = overlay_instances(np.full((8, 8), 5.0), instances)
    np.testing.assert_array_equal(flat[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(flat[2, 2], [255, 255, 0])


def test_shape_mismatch_raises():
    image, _ = _square()
    with pytest.raises(ValueError, match="do not match"):
        overlay_instances(image, np.zeros((4, 4), dtype=np.uint8))


def test_save_overlay_writes_png(tmp_path):
    image, instances = _square()
    path = save_overlay(tmp_path / "a_overlay.png", image, instances)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), overlay_instances(image, instances))
