"""AD-GAN mask -> image synthesis into a paired training folder (FolderSynthesizer)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage
from skimage.draw import disk
from skimage.segmentation import find_boundaries

from monai_uda.data.datalist import get_split, load_datalist
from monai_uda.data.io import read_image, read_label
from monai_uda.errors import UDAInputError
from monai_uda.inference import FolderSynthesizer, label_to_mask_domain
from monai_uda.networks.adain import AdaINGenerator

# the tiny AD-GAN widths of tests/bundles/test_ad_gan.py (TINY_NET)
TINY_NET = {"channels": (4, 8, 8), "num_res_blocks": 1, "mlp_channels": 8}


@pytest.fixture
def generator():
    """Untrained tiny 2D generator factory: ``generator(channels)``; weights fixed by seed."""

    def make(image_channels: int = 1, spatial_dims: int = 2) -> AdaINGenerator:
        torch.manual_seed(0)
        return AdaINGenerator(spatial_dims, image_channels, **TINY_NET)

    return make


def _discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: int = 8) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint16)
    for index, centre in enumerate(centres, start=1):
        label[disk(centre, radius, shape=shape)] = index
    return label


def _synthesizer(generator, out, **kwargs) -> FolderSynthesizer:
    kwargs.setdefault("roi_size", (32, 32))
    return FolderSynthesizer(generator, str(out), **kwargs)


def test_mask_dir_2d_grey_and_rgb_pairs_and_datalist(generator, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    instances = _discs((40, 72), [(12, 12), (20, 40), (28, 60)])  # not a multiple of the window
    tifffile.imwrite(masks / "a.tif", instances)
    # binary, < window
    Image.fromarray(((_discs((24, 24), [(12, 12)]) > 0) * 255).astype(np.uint8)).save(masks / "b.png")
    for channels in (1, 3):
        out = tmp_path / f"out{channels}"
        records = _synthesizer(generator(channels), out, mask_dir=str(masks)).run()
        assert [r["stem"] for r in records] == ["a", "b"] and [r["n_instances"] for r in records] == [3, 1]
        image_a = np.asarray(Image.open(out / "a_image.png"))
        assert image_a.dtype == np.uint8
        assert image_a.shape == ((40, 72) if channels == 1 else (40, 72, 3))
        assert np.asarray(Image.open(out / "b_image.png")).shape[:2] == (24, 24)
        np.testing.assert_array_equal(read_label(out / "a_label.tif"), instances)
        np.testing.assert_array_equal(
            read_label(out / "b_label.tif"), (read_label(masks / "b.png") > 0).astype(np.uint16)
        )
        datalist = load_datalist(out)
        items = get_split(datalist, "source", require_labels=True)
        assert [i["image"] for i in items] == [str(out / "a_image.png"), str(out / "b_image.png")]
        assert all(json.loads((out / "datalist.json").read_text())["source"][0][k] == f"a_{k}.{e}"
                   for k, e in (("image", "png"), ("label", "tif")))  # relative paths
        image, _ = read_image(items[0]["image"], spatial_dims=2)
        assert image.shape == (channels, 40, 72)
    assert sorted(p.name for p in masks.iterdir()) == ["a.tif", "b.png"]  # inputs untouched


def test_synthetic_masks_seeded_and_domain_label_changes_output(generator, tmp_path):
    common = {"num_masks": 2, "mask_shape": (32, 48), "axis_range": (4, 7), "count_range": (3, 6), "seed": 3}
    one = _synthesizer(generator(), tmp_path / "one", **common).run()
    again = _synthesizer(generator(), tmp_path / "again", **common).run()
    zero = _synthesizer(generator(), tmp_path / "zero", domain_label=0.0, **common).run()
    half = _synthesizer(generator(), tmp_path / "half", domain_label=0.5, **common).run()
    assert [r["stem"] for r in one] == ["synthetic_0000", "synthetic_0001"]
    labels = [read_label(r["label"]) for r in one]
    assert all(lab.shape == (32, 48) and lab.max() >= 3 for lab in labels)
    np.testing.assert_array_equal(labels[0], read_label(again[0]["label"]))  # same seed, same masks
    images = {name: np.asarray(Image.open(records[0]["image"]), dtype=np.float32) for name, records in
              (("one", one), ("again", again), ("zero", zero), ("half", half))}
    np.testing.assert_array_equal(images["one"], images["again"])
    assert np.abs(images["one"] - images["zero"]).mean() > 1.0
    assert np.abs(images["half"] - images["one"]).mean() > 0.0 and np.abs(images["half"] - images["zero"]).mean() > 0.0
    assert len(get_split(load_datalist(tmp_path / "half"), "source", require_labels=True)) == 2


def test_ternary_mask_domain_levels_and_edges_at_borders():
    label = _discs((64, 64), [(20, 20), (44, 44)], radius=10)
    label[40:52, 8:20] = 3  # touching square pair: the edge class must separate them
    label[40:52, 20:32] = 4
    instances, domain = label_to_mask_domain(label, ternary=True)
    assert set(np.unique(domain).tolist()) == {-1.0, 0.0, 1.0}
    np.testing.assert_array_equal(domain == -1.0, instances == 0)
    edge, interior = domain == 0.0, domain == 1.0
    assert edge[find_boundaries(instances, mode="inner")].all()  # every object border pixel is edge
    for index in range(1, int(instances.max()) + 1):
        inside = instances == index
        depth = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
        assert depth[edge & inside].max() <= 0.3 * depth.max()  # edges only in the outer 30%
        assert interior[inside & (depth > 0.3 * depth.max())].all()
    assert not (ndimage.binary_dilation(interior & (instances == 3)) & interior & (instances == 4)).any()
    _, semantic = label_to_mask_domain(label)
    assert set(np.unique(semantic).tolist()) == {-1.0, 1.0}


def test_binary_mask_is_split_into_components():
    binary = (_discs((40, 40), [(10, 10), (30, 30)], radius=6) > 0).astype(np.uint8) * 255
    instances, domain = label_to_mask_domain(binary)
    assert instances.dtype == np.uint16 and instances.max() == 2
    assert set(np.unique(domain).tolist()) == {-1.0, 1.0}


def test_ternary_synthesizer_writes_images(generator, tmp_path):
    records = _synthesizer(generator(), tmp_path / "out", num_masks=1, ternary=True, mask_shape=(32, 32),
                           axis_range=(4, 6), count_range=(2, 4)).run()
    assert np.asarray(Image.open(records[0]["image"])).shape == (32, 32)


def test_3d_mask_dir_nifti_affine_kept(generator, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    zz, yy, xx = np.mgrid[:12, :20, :24]
    label = (((zz - 6) ** 2 + (yy - 10) ** 2 + (xx - 8) ** 2) <= 16).astype(np.uint8)
    label[((zz - 6) ** 2 + (yy - 10) ** 2 + (xx - 18) ** 2) <= 9] = 2
    affine = np.diag([2.0, 0.5, 0.5, 1.0])
    nib.save(nib.Nifti1Image(label, affine), str(masks / "vol.nii.gz"))
    records = FolderSynthesizer(generator(spatial_dims=3), str(tmp_path / "out"), mask_dir=str(masks), spatial_dims=3,
                                roi_size=(8, 16, 16)).run()
    image = nib.load(records[0]["image"])
    assert records[0]["image"].endswith("vol_image.nii.gz") and image.get_data_dtype() == np.float32
    assert image.shape == (12, 20, 24) and np.allclose(image.affine, affine)
    data = np.asarray(image.dataobj)
    assert 0.0 <= data.min() and data.max() <= 1.0
    written = nib.load(records[0]["label"])
    assert records[0]["label"].endswith("vol_label.nii.gz") and np.allclose(written.affine, affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), label)
    assert get_split(load_datalist(tmp_path / "out"), "source", require_labels=True)[0]["label"] == records[0]["label"]


def test_bad_inputs(generator, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UDAInputError, match="no masks found"):
        _synthesizer(generator(), tmp_path / "out", mask_dir=str(empty)).run()
    for bad in (1.5, -0.1, "half"):
        with pytest.raises(UDAInputError, match=r"domain_label must be a number in \[0, 1\]"):
            _synthesizer(generator(), tmp_path / "out", domain_label=bad)
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    tifffile.imwrite(volumes / "v.tif", np.ones((6, 16, 16), dtype=np.uint16))
    with pytest.raises(UDAInputError, match="expected a 2D mask, got 3D"):
        _synthesizer(generator(), tmp_path / "out", mask_dir=str(volumes)).run()
    with pytest.raises(UDAInputError, match="num_masks"):
        _synthesizer(generator(), tmp_path / "out", num_masks=0)
    clash = tmp_path / "clash"
    clash.mkdir()
    tifffile.imwrite(clash / "x.tif", _discs((32, 32), [(16, 16)]))
    tifffile.imwrite(clash / "x_label.tif", _discs((32, 32), [(10, 10)]))  # would be x's written label
    with pytest.raises(UDAInputError, match="would overwrite an input mask"):
        _synthesizer(generator(), clash, mask_dir=str(clash)).run()
    assert read_label(clash / "x_label.tif")[10, 10] == 1
