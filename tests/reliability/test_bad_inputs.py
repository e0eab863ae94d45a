"""Bad input through ``monai-uda`` (train, infer, prepare, evaluate): one ``error:`` line naming file and reason,
or correct handling checked on values. Never a traceback, never a silently wrong result.

Kinds covered (issue 7): missing / unreadable / truncated image, wrong channel count, 16-bit and float images,
RGBA, NaN pixels, image smaller than the patch, mask/image size mismatch, label map with gaps and with negative
ids, empty datalist, datalist naming a folder, a domain with zero images, XML with malformed
polygons, checkpoints from another bundle / of the wrong shape / holding pickled objects, 3D image given to a
2D config and the reverse, unwritable output directory, disk full during writing; plus invalid JSON, an
unlabelled source item, an empty or missing input folder and ``--resume`` without a checkpoint.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from monai.networks.nets import UNet
from PIL import Image

from monai_uda.data.io import read_image, read_label
from monai_uda.transforms import inference_transforms, train_transforms


def _edit_datalist(folder: Path, change: Callable[[dict], object]) -> None:
    datalist = json.loads((folder / "datalist.json").read_text())
    change(datalist)
    (folder / "datalist.json").write_text(json.dumps(datalist))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _five_channels(folder: Path) -> None:
    tifffile.imwrite(folder / "target" / "t5.tif", np.arange(48 * 48 * 5, dtype=np.uint16).reshape(48, 48, 5))
    _edit_datalist(folder, lambda d: d["target"].append({"image": "target/t5.tif"}))


# (what is broken, how to break the dataset folder, file named in the error, reason in the error)
TRAIN_CASES = {
    "missing image": (
        lambda f: _edit_datalist(f, lambda d: d["source"][0].update(image="source/gone.tif")),
        "datalist.json", "'source' item 0 image 'source/gone.tif' does not exist",
    ),
    "unreadable image": (
        lambda f: (f / "target" / "t1.png").write_bytes(b"this is not a PNG"),
        "t1.png", "cannot read image (UnidentifiedImageError",
    ),
    "truncated image": (lambda f: _truncate(f / "source" / "s1.tif"), "s1.tif", "cannot read image"),
    "wrong channel count": (
        _five_channels, "t5.tif", "got shape (48, 48, 5): a 3D volume or an unsupported channel count",
    ),
    "NaN pixels": (
        lambda f: tifffile.imwrite(f / "source" / "s0.tif", np.where(np.eye(48) > 0, np.nan, 1.0).astype(np.float32)),
        "s0.tif", "image contains NaN or infinite pixels",
    ),
    "mask/image size mismatch": (
        lambda f: tifffile.imwrite(f / "source" / "s1_label.tif", np.zeros((40, 48), np.uint16)),
        "s1_label.tif", "label shape (40, 48) does not match image shape (48, 48)",
    ),
    "negative label ids": (
        lambda f: tifffile.imwrite(f / "source" / "s0_label.tif", -np.eye(48, dtype=np.int32)),
        "s0_label.tif", "label map has negative ids (min -1)",
    ),
    "empty datalist": (
        lambda f: (f / "datalist.json").write_text('{"source": [], "target": []}'),
        "datalist.json", "empty datalist",
    ),
    "datalist naming a folder": (
        lambda f: _edit_datalist(f, lambda d: d["source"][0].update(image="source")),
        "datalist.json", "'source' item 0 image 'source' is not a regular file",
    ),
    "domain with zero images": (
        lambda f: _edit_datalist(f, lambda d: d.update(target=[])),
        "datalist.json", "domain 'target' has zero images",
    ),
    "invalid JSON": (
        lambda f: (f / "datalist.json").write_text('{"source": [{"image": '),
        "datalist.json", "invalid JSON (line 1",
    ),
    "unlabelled source item": (
        lambda f: _edit_datalist(f, lambda d: d["source"][1].pop("label")),
        "datalist.json", "domain 'source' item 1",
    ),
    "3D image given to a 2D config": (
        lambda f: tifffile.imwrite(f / "source" / "s0.tif", np.zeros((12, 48, 48), np.uint8)),
        "s0.tif", "expected a 2D image (grey, RGB or RGBA), got shape (12, 48, 48)",
    ),
}


@pytest.mark.parametrize("kind", list(TRAIN_CASES))
def test_train_reports_bad_dataset_in_one_line(kind: str, dataset: Path, tmp_path: Path, kit):
    breaker, file_name, reason = TRAIN_CASES[kind]
    breaker(dataset)
    code, stderr = kit.run(
        "train", "--dataset_dir", dataset, "--output_dir", tmp_path / "run", *kit.tiny_args(max_iterations=1)
    )
    line = kit.error_line(stderr)
    assert code == 2
    assert line.startswith("error: ") and f"{file_name}: " in line and reason in line, line
    assert not (tmp_path / "run" / "model.pt").exists()


def test_2d_dataset_given_to_3d_config(dataset: Path, tmp_path: Path, kit):
    code, stderr = kit.run(
        "train", "--spatial_dims", 3, "--dataset_dir", dataset, "--output_dir", tmp_path / "run", "--widths=[4,8]",
        "--disc_widths=[4,4,4]", "--source_patch=[8,16,16]", "--target_patch=[8,16,16]", "--max_iterations", 1,
    )
    line = kit.error_line(stderr)
    assert code == 2 and "s0.tif: expected a 3D image, got 2D (shape (48, 48))" in line, line


def test_resume_without_checkpoint(dataset: Path, tmp_path: Path, kit):
    code, stderr = kit.run(
        "train", "--dataset_dir", dataset, "--output_dir", tmp_path / "run", *kit.tiny_args(max_iterations=1),
        "--resume", "true",
    )
    assert code == 2 and kit.error_line(stderr).endswith("run: --resume true but no checkpoint to resume from")


@pytest.mark.parametrize("kind", ["other network sizes", "another bundle"])
def test_resume_from_a_checkpoint_that_does_not_fit(kind: str, dataset: Path, tmp_path: Path, kit):
    out = tmp_path / "run"
    if kind == "other network sizes":
        assert kit.run(
            "train", "--dataset_dir", dataset, "--output_dir", out, *kit.tiny_args(max_iterations=1, ckpt_interval=1)
        )[0] == 0
        reason = "size mismatch for model.0.conv.unit0.conv.weight"
    else:  # an AD-GAN-like checkpoint: other networks, no trainer state
        out.mkdir()
        torch.save({"generator": kit.tiny_segmenter().state_dict()}, out / "checkpoint_iteration=1.pt")
        reason = "Key 'trainer' from x is not found in y: dict_keys(['generator'])"
    code, stderr = kit.run(
        "train", "--dataset_dir", dataset, "--output_dir", out, *kit.tiny_args(max_iterations=2, ckpt_interval=1),
        "--widths=[8,16,32]", "--resume", "true",
    )
    line = kit.error_line(stderr)
    if kind == "other network sizes":  # the run recorded its config (run_config.json): refused before loading
        assert code == 2 and line.endswith(
            "run: cannot resume: widths is [8, 16, 32] but the run that wrote this folder used "
            "[4, 8, 16] (see run_config.json); resume with --widths [4, 8, 16], or start a new run "
            "with --overwrite true or another --output_dir"
        ), line
        (out / "run_config.json").unlink()  # a folder without a record: the loader's check
        code, stderr = kit.run(
            "train", "--dataset_dir", dataset, "--output_dir", out, *kit.tiny_args(max_iterations=2, ckpt_interval=1),
            "--widths=[8,16,32]", "--resume", "true",
        )
        line = kit.error_line(stderr)
    assert (
        code == 2
        and "checkpoint_iteration=1.pt: cannot resume: the checkpoint does not fit this configuration (" in line
    ), line
    assert reason in line and "another bundle or with other network sizes?" in line, line


@pytest.mark.parametrize("bundle", ["cellseg_uda", "ad_gan", "cyc_pdam", "darcnn"])
def test_every_resume_goes_through_the_one_line_loader(bundle: str):
    """A checkpoint that does not fit is one ``error:`` line in every bundle (cyc_pdam and darcnn used MONAI's
    plain loader)."""
    import yaml

    def loaders(node):  # the stages resume through Stage.resume_loader, a ResumeCheckpointLoader
        if isinstance(node, dict):
            target = node.get("_target_", "")
            if isinstance(target, str) and (target.endswith("CheckpointLoader") or target == "monai_uda.engines.Stage"):
                yield target
            for value in node.values():
                yield from loaders(value)
        elif isinstance(node, list):
            for value in node:
                yield from loaders(value)

    config = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "bundles" / bundle / "configs" / "train.yaml").read_text(
            encoding="utf-8"
        )
    )
    found = list(loaders(config))
    assert found and set(found) == {"monai_uda.engines.Stage"}, found


def test_false_means_false_on_the_command_line(dataset: Path, tmp_path: Path, kit):
    """fire keeps ``false`` as the string "false", which Python treats as true: ``--resume false`` resumed."""
    code, stderr = kit.run(
        "train", "--dataset_dir", dataset, "--output_dir", tmp_path / "run", *kit.tiny_args(max_iterations=1),
        "--resume", "false",
    )
    assert code == 0, stderr[-2000:]
    assert (tmp_path / "run" / "model.pt").is_file()


# ------------------------------------------------------------------------------------------------ inference


def _input_dir(tmp_path: Path, name: str = "x.png") -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(folder / name)
    return folder


def test_infer_truncated_and_missing_inputs(tmp_path: Path, model_file: Path, kit):
    images = _input_dir(tmp_path)
    _truncate(images / "x.png")
    code, stderr = kit.run(*kit.infer_args(images, tmp_path / "out", model_file))
    assert code == 2 and "x.png: cannot read image (OSError: image file is truncated" in kit.error_line(stderr)
    code, stderr = kit.run(*kit.infer_args(tmp_path / "nowhere", tmp_path / "out", model_file))
    assert code == 2 and kit.error_line(stderr).endswith("nowhere: folder does not exist")
    (tmp_path / "empty").mkdir()
    code, stderr = kit.run(*kit.infer_args(tmp_path / "empty", tmp_path / "out", model_file))
    assert code == 2 and kit.error_line(stderr).endswith("empty: no images found")


def test_infer_volume_with_2d_config(tmp_path: Path, model_file: Path, kit):
    images = tmp_path / "in"
    images.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((20, 24, 8), np.float32), np.eye(4)), str(images / "vol.nii.gz"))
    code, stderr = kit.run(*kit.infer_args(images, tmp_path / "out", model_file))
    assert code == 2 and "vol.nii.gz: expected a 2D image, got 3D" in kit.error_line(stderr)


def test_infer_2d_rgb_image_with_3d_config(tmp_path: Path, kit):
    """Read as a volume, an RGB PNG would be one 40-slice-deep volume of 40x3 pixels: it is refused instead."""
    torch.save(
        {"segmenter": UNet(3, 1, 1, channels=[4, 8], strides=[2], num_res_units=1).state_dict()},
        tmp_path / "model3d.pt",
    )
    images = _input_dir(tmp_path)
    code, stderr = kit.run("infer", "--spatial_dims", 3, "--input_dir", images, "--output_dir", tmp_path / "out",
                           "--ckpt_path", tmp_path / "model3d.pt", "--widths=[4,8]", "--target_patch=[16,16,16]")
    line = kit.error_line(stderr)
    assert code == 2 and "x.png: expected a 3D volume, got a 2D image with 3 channel(s) (shape (40, 40, 3))" in line, (
        line
    )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


class _Touch:
    """A pickle that creates a file when unpickled: what an attacker's checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("kind", ["another bundle", "wrong shape", "pickled object", "truncated", "not a checkpoint"])
def test_infer_bad_checkpoint(kind: str, tmp_path: Path, model_file: Path, kit):
    images, ckpt, marker = _input_dir(tmp_path), tmp_path / "bad.pt", tmp_path / "PWNED"
    if kind == "another bundle":  # an AD-GAN model file: it holds a generator, no segmenter
        torch.save({"generator": kit.tiny_segmenter().state_dict()}, ckpt)
        reason = "checkpoint has no network 'segmenter' (it has: generator)"
    elif kind == "wrong shape":
        torch.save({"segmenter": kit.tiny_segmenter([8, 16, 32]).state_dict()}, ckpt)
        reason = (
            "checkpoint does not fit the network "
            "('model.0.conv.unit0.conv.weight' has shape (8, 3, 3, 3), network expects (4, 3, 3, 3)"
        )
    elif kind == "pickled object":
        torch.save({"segmenter": _Touch(marker)}, ckpt)
        reason = "refused to load: the checkpoint holds Python objects"
    elif kind == "truncated":
        ckpt.write_bytes(model_file.read_bytes()[:3000])
        reason = "cannot read checkpoint: truncated, corrupt or not a PyTorch file"
    else:
        ckpt.write_text("segmenter weights")
        reason = "not a checkpoint (not a file written by torch.save)"
    code, stderr = kit.run(*kit.infer_args(images, tmp_path / "out", ckpt))
    line = kit.error_line(stderr)
    assert code == 2 and f"bad.pt: {reason}" in line, line
    assert not marker.exists()  # weights_only=True: the pickled code never ran


def test_infer_output_folder_not_writable(tmp_path: Path, model_file: Path, kit):
    images = _input_dir(tmp_path)
    (tmp_path / "a_file").write_text("")
    code, stderr = kit.run(*kit.infer_args(images, tmp_path / "a_file" / "out", model_file))
    line = kit.error_line(stderr)
    assert code == 2 and "a_file/out: output folder is not writable" in line, line


def test_infer_disk_full_leaves_no_partial_file(tmp_path: Path, model_file: Path, kit, monkeypatch):
    images = _input_dir(tmp_path)

    def full_disk(path, *args, **kwargs):
        Path(path).write_bytes(b"II*\x00 half a TIFF")  # what a real writer leaves when the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full_disk)
    out = tmp_path / "out"
    code, stderr = kit.run(*kit.infer_args(images, out, model_file))
    line = kit.error_line(stderr)
    assert code == 2 and "x_instances.tif: cannot write output (No space left on device)" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["x_mask.png"]  # written before the disk filled; no half file


# ------------------------------------------------------------------------------------------------ prepare


_REGION = '<Region Id="{id}"><Vertices>{vertices}</Vertices></Region>'


def _vertex(x: object, y: object) -> str:
    return f'<Vertex X="{x}" Y="{y}"/>'


def _monuseg(tmp_path: Path, xml: str) -> Path:
    src = tmp_path / "monuseg"
    (src / "test" / "images").mkdir(parents=True)
    (src / "test" / "annotations").mkdir(parents=True)
    tifffile.imwrite(src / "test" / "images" / "a.tif", np.full((40, 40, 3), 180, np.uint8))
    (src / "test" / "annotations" / "a.xml").write_text(xml)
    return src


def test_prepare_monuseg_malformed_polygons(tmp_path: Path, kit):
    square = "".join(_vertex(x, y) for x, y in [(10, 10), (20, 10), (20, 20), (10, 20)])
    regions = [
        _REGION.format(id=1, vertices=square),
        _REGION.format(id=2, vertices=_vertex(5, 5) + _vertex(8, 8)),
        _REGION.format(id=3, vertices=_vertex("abc", 3) + _vertex(4, 4) + _vertex(6, 9)),
        _REGION.format(id=4, vertices="".join(_vertex(x, y) for x, y in [(100, 100), (120, 100), (110, 120)])),
    ]
    src = _monuseg(
        tmp_path, f"<Annotations><Annotation><Regions>{''.join(regions)}</Regions></Annotation></Annotations>"
    )
    code, stderr = kit.run("prepare", "monuseg", src, tmp_path / "out")
    assert code == 0 and "Traceback" not in stderr
    # after tqdm's redraw
    warnings = [line[line.index("warning:"):] for line in stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 3 and all("a.xml: region" in w for w in warnings), stderr
    assert (
        "region 2: 2 vertices" in warnings[0] and "region 3: vertex 0: non-numeric coordinates X='abc'" in warnings[1]
    )
    assert "region 4: zero area after clipping to the 40x40 image" in warnings[2]
    label = read_label(tmp_path / "out" / "labels" / "a.tif")
    assert set(np.unique(label)) == {0, 1}  # only the well-formed square, id 1
    assert label[15, 15] == 1 and label[5, 5] == 0 and 100 <= int((label == 1).sum()) <= 121

    code, stderr = kit.run("prepare", "monuseg", src, tmp_path / "strict", "--strict", "true")
    assert code == 2 and kit.error_line(stderr).endswith("a.xml: region 2: 2 vertices")
    code, stderr = kit.run("prepare", "monuseg", src, tmp_path / "lenient", "--strict", "false")
    assert code == 0 and "error:" not in stderr


def test_prepare_monuseg_broken_xml(tmp_path: Path, kit):
    src = _monuseg(tmp_path, "<Annotations><Regions><Region Id='1'>")
    code, stderr = kit.run("prepare", "monuseg", src, tmp_path / "out")
    assert code == 2 and "a.xml: malformed XML (no element found" in kit.error_line(stderr)


# ------------------------------------------------------------------------------------------------ handled


def test_16bit_float_and_rgba_images_are_read_like_8bit(tmp_path: Path, kit):
    rgb8 = kit.he_like(kit.nuclei((48, 48), 4, seed=3), 3)
    alpha = np.random.default_rng(0).integers(0, 256, (48, 48, 1), dtype=np.uint8)
    Image.fromarray(rgb8).save(tmp_path / "rgb8.png")
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb8.astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "rgbf.tif", rgb8.astype(np.float32) * 0.0123 - 1.5)
    Image.fromarray(np.concatenate([rgb8, alpha], axis=-1)).save(tmp_path / "rgba.png")

    image16, _ = read_image(tmp_path / "rgb16.tif", 2)  # full 16-bit range kept, not cut to 8 bits
    assert image16.shape == (3, 48, 48) and image16.max() == rgb8.max() * 257.0
    assert read_image(tmp_path / "rgba.png", 2)[0].shape == (3, 48, 48)  # alpha dropped

    chain = inference_transforms(2, channels=3)
    reference = chain({"image": str(tmp_path / "rgb8.png")})["image"]
    assert float(reference.std()) > 0.1  # a real image, not a constant
    for name in ("rgb16.tif", "rgbf.tif", "rgba.png"):
        other = chain({"image": str(tmp_path / name)})["image"]
        np.testing.assert_allclose(other.numpy(), reference.numpy(), atol=1e-5, err_msg=name)


def test_tiff_under_another_name_is_read_by_content(tmp_path: Path):
    """Pillow would read a 5-sample TIFF named ``.png`` as a (48, 5) image; tifffile reads all of it."""
    stack = np.arange(48 * 40 * 5, dtype=np.uint16).reshape(48, 40, 5)
    tifffile.imwrite(tmp_path / "misnamed.png", stack)
    with pytest.raises(ValueError, match=r"misnamed.png: .*got shape \(48, 40, 5\)"):
        read_image(tmp_path / "misnamed.png", 2)
    tifffile.imwrite(tmp_path / "rgb.png", stack[..., :3])
    image, _ = read_image(tmp_path / "rgb.png", 2)
    np.testing.assert_array_equal(image, np.moveaxis(stack[..., :3], -1, 0).astype(np.float32))


def test_image_smaller_than_patch_trains_and_segments(tmp_path: Path, model_file: Path, kit):
    data = kit.make_dataset(tmp_path / "small", size=20)
    chain = train_transforms(2, [32, 32], channels=3)
    item = chain({"image": str(data / "source" / "s0.tif"), "label": str(data / "source" / "s0_label.tif")})
    label = read_label(data / "source" / "s0_label.tif")
    assert tuple(item["image"].shape) == (3, 32, 32) and tuple(item["label"].shape) == (1, 32, 32)
    assert int((item["label"] > 0).sum()) == int((label > 0).sum())  # padded, nothing cropped away
    for nucleus in np.unique(label)[1:]:  # every nucleus keeps its id and size
        assert int((item["label"] == int(nucleus)).sum()) == int((label == nucleus).sum())

    code, stderr = kit.run(
        "train", "--dataset_dir", data, "--output_dir", tmp_path / "run", *kit.tiny_args(max_iterations=2)
    )
    assert code == 0, stderr[-2000:]
    code, stderr = kit.run(*kit.infer_args(data / "test", tmp_path / "pred", tmp_path / "run" / "model.pt"))
    assert code == 0, stderr[-2000:]
    assert read_label(tmp_path / "pred" / "x_instances.tif").shape == (20, 20)


def test_label_map_with_gaps_is_kept_and_scored(tmp_path: Path, kit):
    gapped = np.zeros((32, 32), np.uint16)
    gapped[2:8, 2:8], gapped[12:20, 12:20], gapped[24:30, 3:9] = 3, 7, 20
    tifffile.imwrite(tmp_path / "g.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(tmp_path / "g_label.tif", gapped)
    item = train_transforms(2, [32, 32], channels=1, augment=False)(
        {"image": str(tmp_path / "g.tif"), "label": str(tmp_path / "g_label.tif")}
    )
    np.testing.assert_array_equal(item["label"][0].numpy(), gapped)  # ids are not renumbered or binarised

    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    tifffile.imwrite(tmp_path / "gt" / "g.tif", gapped)
    consecutive = np.select([gapped == 3, gapped == 7, gapped == 20], [1, 2, 3], 0).astype(np.uint16)
    tifffile.imwrite(tmp_path / "pred" / "g_instances.tif", consecutive)
    code, stderr = kit.run(
        "evaluate", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--out", tmp_path / "m.json"
    )
    assert code == 0, stderr[-2000:]
    mean = json.loads((tmp_path / "m.json").read_text())["mean"]
    assert mean["aji"] == 1.0 and mean["pq"] == 1.0 and mean["object_f1"] == 1.0
