"""Whole-volume streaming inference: affine/spacing kept, 3D nuclei labelled once, same mask as in memory."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from skimage.draw import ellipsoid

from monai_uda.errors import UDAInputError
from monai_uda.inference.readers import VolumeReader
from monai_uda.inference.segment import FolderSegmenter
from monai_uda.inference.volume import VolumeSegmenter
from monai_uda.inference.writers import MemmapVolumeWriter

AFFINE = np.array([[0.0, 0.5, 0.0, -10.0], [0.8, 0.0, 0.0, 4.0], [0.0, 0.0, 2.0, 7.5], [0.0, 0.0, 0.0, 1.0]])
CENTRES = [(8, 8, 8), (24, 20, 10), (16, 30, 14), (35, 9, 16)]  # (24, ...) crosses the slab rows at 24


def _brightness_net() -> torch.nn.Module:
    """Voxel-wise 'segmenter': logit = 10 * x - 5 (bright nuclei are foreground)."""
    net = torch.nn.Conv3d(1, 1, 1)
    with torch.no_grad():
        net.weight.fill_(10.0)
        net.bias.fill_(-5.0)
    return net


def _volume(shape: tuple[int, int, int] = (44, 40, 24), radius: int = 4) -> np.ndarray:
    volume = np.full(shape, 20, dtype=np.uint8)
    ball = ellipsoid(radius, radius, radius)[1:-1, 1:-1, 1:-1]
    for centre in CENTRES:
        corner = [c - radius for c in centre]
        region = tuple(slice(c, c + n) for c, n in zip(corner, ball.shape))
        volume[region][ball] = 200
    return volume


def test_nifti_affine_kept_and_nuclei_labelled_once(tmp_path):
    (tmp_path / "in").mkdir()
    volume = _volume()
    nib.save(nib.Nifti1Image(volume, AFFINE), str(tmp_path / "in" / "vol.nii.gz"))
    kwargs = dict(channels=1, roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.25, min_size=5)
    record = VolumeSegmenter(_brightness_net(), str(tmp_path / "in"), str(tmp_path / "out"), **kwargs).run()[0]
    instances_img = nib.load(record["instances"])
    np.testing.assert_allclose(instances_img.affine, AFFINE)
    instances = np.asarray(instances_img.dataobj)
    assert instances.dtype == np.uint32 and instances.shape == volume.shape
    assert record["n_instances"] == len(CENTRES) == instances.max()
    ids = [int(instances[c]) for c in CENTRES]
    assert sorted(ids) == [1, 2, 3, 4]
    for centre, nucleus in zip(CENTRES, ids):
        np.testing.assert_array_equal(np.argwhere(instances == nucleus).mean(0), centre)  # whole ball, one id
    mask = np.asarray(nib.load(record["mask"]).dataobj)
    np.testing.assert_array_equal(mask, (volume > 100).astype(np.uint8))
    with open(record["table"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(float(r["centroid_i"]), float(r["centroid_j"]), float(r["centroid_k"])) for r in rows} == {
        tuple(map(float, c)) for c in CENTRES
    }
    # the in-memory path gives the same mask
    FolderSegmenter(_brightness_net(), str(tmp_path / "in"), str(tmp_path / "mem"), spatial_dims=3, **kwargs).run()
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "mem" / "vol_mask.nii.gz").dataobj), mask)


def test_tiff_stack_spacing_and_npy_outputs(tmp_path):
    (tmp_path / "in").mkdir()
    volume = _volume()
    tifffile.imwrite(tmp_path / "in" / "stack.tif", volume, imagej=True, metadata={"spacing": 2.5, "axes": "ZYX"})
    seg = VolumeSegmenter(
        _brightness_net(), str(tmp_path / "in"), str(tmp_path / "out"), channels=1, roi_size=(16, 16, 16), min_size=5,
        instance_ext=".nii.gz", mask_ext=".npy",
    )
    record = seg.run()[0]
    assert nib.load(record["instances"]).header.get_zooms() == (2.5, 1.0, 1.0)
    assert np.load(record["mask"]).sum() == (volume > 100).sum()
    with open(record["table"], newline="") as handle:
        assert next(csv.DictReader(handle)).keys() >= {"centroid_z", "centroid_y", "centroid_x", "bbox_z0", "bbox_x1"}


def test_memmap_writer_and_reader_round_trip(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.uint32).reshape(4, 5, 6)
    writer = MemmapVolumeWriter(tmp_path / "o.nii", data.shape, np.dtype(np.uint32), spacing=(2.0, 1.0, 0.5))
    writer.write(0, data[:3])
    writer.write(3, data[3:])
    writer.close()
    image = nib.load(tmp_path / "o.nii")
    np.testing.assert_array_equal(np.asarray(image.dataobj), data)
    assert image.header.get_zooms() == (2.0, 1.0, 0.5)
    reader = VolumeReader(tmp_path / "o.nii")
    np.testing.assert_array_equal(reader.read((1, 2, 3), (2, 3, 3))[0], data[1:3, 2:5, 3:6])
    with pytest.raises(UDAInputError, match="must be .nii"):
        MemmapVolumeWriter(tmp_path / "o.png", data.shape, np.dtype(np.uint8))
