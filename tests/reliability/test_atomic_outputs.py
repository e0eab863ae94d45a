"""Outputs are written atomically (temporary name, then rename) and inference never overwrites an input.

A write that fails part-way (disk full, Ctrl-C) must leave the previous version of the file, no half file
and no temporary file.
"""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from monai_uda.data.io import read_label, write_array
from monai_uda.engines import latest_checkpoint


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _images(folder: Path, kit, stems: tuple[str, ...] = ("a", "b")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, stem in enumerate(stems):
        Image.fromarray(kit.he_like(kit.nuclei((40, 40), 3, seed=i), i)).save(folder / f"{stem}.png")
    return folder


def test_inference_refuses_to_overwrite_an_input(tmp_path: Path, model_file: Path, kit):
    images = _images(tmp_path / "in", kit, ("a", "a_mask"))  # a.png's mask would be written as a_mask.png
    before = _digests(images)
    code, stderr = kit.run(*kit.infer_args(images, images, model_file))
    line = kit.error_line(stderr)
    assert (
        code == 2 and "a_mask.png: output a_mask.png would overwrite an input image; choose another output_dir" in line
    ), line
    assert _digests(images) == before  # nothing written, nothing changed


def test_inference_into_the_input_folder_keeps_inputs(tmp_path: Path, model_file: Path, kit):
    images = _images(tmp_path / "in", kit)
    before = _digests(images)
    code, stderr = kit.run(*kit.infer_args(images, images, model_file))
    assert code == 0, stderr[-2000:]
    after = _digests(images)
    assert {name: after[name] for name in before} == before
    assert set(after) - set(before) == {
        f"{s}_{kind}" for s in "ab" for kind in ("mask.png", "instances.tif", "overlay.png")
    }
    assert not [p for p in images.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_failed_rewrite_keeps_the_previous_output(tmp_path: Path, model_file: Path, kit, monkeypatch, failure):
    images, out = _images(tmp_path / "in", kit), tmp_path / "out"
    assert kit.run(*kit.infer_args(images, out, model_file))[0] == 0
    before = _digests(out)
    torch.save({"segmenter": kit.tiny_segmenter(seed=1).state_dict()}, model_file)  # new results would differ

    def broken_writer(path, *args, **kwargs):
        Path(path).write_bytes(b"II*\x00 half a TIFF")
        raise failure

    monkeypatch.setattr(tifffile, "imwrite", broken_writer)
    if isinstance(failure, OSError):
        code, stderr = kit.run(*kit.infer_args(images, out, model_file))
        assert code == 2 and "a_instances.tif: cannot write output (No space left on device)" in kit.error_line(stderr)
    else:  # Ctrl-C: one line, exit 130, and still no partial output
        code, stderr = kit.run(*kit.infer_args(images, out, model_file))
        assert code == 130 and stderr.strip().endswith(
            "interrupted; a training continues from its newest checkpoint with --resume true"
        )
    after = _digests(out)
    assert set(after) == set(before)  # no temporary or partial file left
    assert (
        after["a_instances.tif"] == before["a_instances.tif"] and after["b_instances.tif"] == before["b_instances.tif"]
    )


def test_write_array_is_all_or_nothing(tmp_path: Path, monkeypatch):
    target = tmp_path / "labels.tif"
    write_array(target, np.arange(12, dtype=np.uint16).reshape(3, 4))
    monkeypatch.setattr(tifffile, "imwrite", lambda path, *a, **k: (Path(path).write_bytes(b"partial"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        write_array(target, np.zeros((3, 4), np.uint16))
    np.testing.assert_array_equal(read_label(target), np.arange(12).reshape(3, 4))
    assert [p.name for p in tmp_path.iterdir()] == ["labels.tif"]


def _fail_nth_save(monkeypatch, n: int, match: str = "") -> list[int]:
    """Make the ``n``-th ``torch.save`` whose target contains ``match`` write a few bytes, then hit a full disk."""
    calls, save = [], torch.save

    def save_until_disk_full(obj, f, *args, **kwargs):
        if match in str(getattr(f, "name", f)):
            calls.append(1)
            if len(calls) == n:
                (f.write if hasattr(f, "write") else Path(f).write_bytes)(b"PK\x03\x04 half a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_disk_full)
    return calls


def test_disk_full_during_periodic_checkpoint_keeps_the_last_one(dataset: Path, tmp_path: Path, kit, monkeypatch):
    out = tmp_path / "run"
    _fail_nth_save(monkeypatch, 3)
    tiny = kit.tiny_args(max_iterations=5, ckpt_interval=1, selection=False)  # only checkpoints call torch.save
    code, stderr = kit.run("train", "--dataset_dir", dataset, "--output_dir", out, *tiny)
    assert code == 2 and kit.error_line(stderr) == "error: cannot write (No space left on device)"
    monkeypatch.undo()
    # Ignite deletes the oldest of the n_saved=2 checkpoints before writing a new one: the newest good one stays
    assert sorted(p.name for p in out.glob("*.pt")) == ["checkpoint_iteration=2.pt"]
    assert torch.load(latest_checkpoint(out), weights_only=True)["trainer"]["iteration"] == 2
    code, stderr = kit.run("train", "--dataset_dir", dataset, "--output_dir", out, *tiny, "--resume", "true")
    assert code == 0, stderr[-2000:]
    model = torch.load(out / "model.pt", weights_only=True)
    assert model.keys() == {"segmenter", "reconstructor", "discriminator", "source_diameter", "network_config"}


def test_disk_full_while_saving_the_final_model_keeps_the_previous_one(dataset: Path, tmp_path: Path, kit, monkeypatch):
    out = tmp_path / "run"
    assert kit.run("train", "--dataset_dir", dataset, "--output_dir", out, *kit.tiny_args(max_iterations=1))[0] == 0
    before = (out / "model.pt").read_bytes()
    _fail_nth_save(monkeypatch, 1, match=".tmp-")  # save_atomic's temporary file for model.pt
    code, stderr = kit.run(
        "train", "--dataset_dir", dataset, "--output_dir", out, *kit.tiny_args(max_iterations=2, seed=7),
        "--overwrite", "true",
    )
    assert code == 2 and kit.error_line(stderr).endswith("model.pt: cannot write checkpoint (No space left on device)")
    assert (out / "model.pt").read_bytes() == before
    assert not list(out.glob(".tmp-*"))
