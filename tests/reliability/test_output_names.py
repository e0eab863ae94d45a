"""Outputs never collide and never go over what is not a regular file: inputs sharing a stem, symlinks, devices,
umask."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from monai_uda.data.io import write_array
from monai_uda.errors import UDAInputError
from monai_uda.files import write_json


def _outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_inputs_sharing_a_stem_get_distinct_outputs(tmp_path: Path, model_file: Path, kit):
    images = tmp_path / "in"
    images.mkdir()
    rgb = kit.he_like(kit.nuclei((32, 32), 3, seed=1), 1)
    Image.fromarray(rgb).save(images / "x.png")
    tifffile.imwrite(images / "x.tif", np.full_like(rgb, 255))
    Image.fromarray(rgb).save(images / "y.png")
    out = tmp_path / "out"
    code, stderr = kit.run(*kit.infer_args(images, out, model_file))
    assert code == 0, stderr[-3000:]
    names = _outputs(out)
    for stem in ("x_png", "x_tif", "y"):
        assert f"{stem}_mask.png" in names and f"{stem}_instances.tif" in names, names
    assert not any(n.startswith("x_mask") for n in names)
    # x.png's result is its own (y.png is the same image), not x.tif's
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "x_png_instances.tif")), np.asarray(Image.open(out / "y_instances.tif"))
    )

    # an input whose own stem is another's disambiguated name: refused before anything is written
    Image.fromarray(rgb).save(images / "x_png.png")
    fresh = tmp_path / "fresh"
    code, stderr = kit.run(*kit.infer_args(images, fresh, model_file))
    line = kit.error_line(stderr)
    assert code == 2 and line.endswith(
        "x_png_mask.png: two inputs would write output x_png_mask.png; rename one of them"
    ), line
    assert _outputs(fresh) == []


def test_writers_follow_symlinks_refuse_devices_and_respect_umask(tmp_path: Path):
    target = tmp_path / "real.png"
    write_array(target, np.zeros((4, 4), np.uint8))
    os.chmod(target, 0o640)
    link = tmp_path / "link.png"
    link.symlink_to(target)
    write_array(link, np.full((4, 4), 7, np.uint8))
    assert link.is_symlink() and np.asarray(Image.open(target)).max() == 7
    assert target.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its permissions
    with pytest.raises(UDAInputError, match=r"/dev/null: is a device, not a regular file; refusing to replace it"):
        write_json("/dev/null", {"a": 1})
    dev_link = tmp_path / "dev.json"
    dev_link.symlink_to("/dev/null")
    with pytest.raises(UDAInputError, match=r"dev.json \(-> /dev/null\): is a device"):
        write_json(dev_link, {"a": 1})
    with pytest.raises(UDAInputError, match="is a folder, expected a file name"):
        write_json(tmp_path, {"a": 1})
    old = os.umask(0o002)
    try:
        write_array(tmp_path / "new.tif", np.zeros((4, 4), np.uint16))
    finally:
        os.umask(old)
    assert (tmp_path / "new.tif").stat().st_mode & 0o777 == 0o664  # not mkstemp's 0o600
    assert not list(tmp_path.glob(".tmp-*"))
