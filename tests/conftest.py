"""Shared fixtures: the real datasets beside the checkout and the built-in sample datasets."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# the sample cache of the inference/evaluate config defaults goes to a throw-away folder
# (one per pytest-xdist worker: workers inherit the controller's environment)
if "PYTEST_XDIST_WORKER" in os.environ or "MONAI_UDA_HOME" not in os.environ:
    os.environ["MONAI_UDA_HOME"] = tempfile.mkdtemp(prefix="monai_uda_home_")

# two cores shared by everything: keep torch from oversubscribing them. Under pytest-xdist (-n 2, one
# worker per core) each worker and the processes its tests start compute on one thread: two threads
# per worker put four spinning OpenMP threads on two cores, which slowed the detector tests ten-fold
if "PYTEST_XDIST_WORKER" in os.environ:
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))


def shared_data_dir() -> Path:
    """``$MONAI_UDA_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("MONAI_UDA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets (DSB2018, MoNuSeg); tests using them skip where they are absent."""
    folder = shared_data_dir()
    if not folder.is_dir():
        pytest.skip(f"real datasets not found at {folder} (set MONAI_UDA_SHARED_DATA)")
    return folder


@pytest.fixture(scope="session")
def sample_2d(tmp_path_factory) -> Path:
    """The built-in 2D sample dataset (folder with datalist.json)."""
    from monai_uda.data.samples import make_sample_dataset

    return Path(make_sample_dataset(tmp_path_factory.mktemp("sample_2d"), spatial_dims=2)).parent


@pytest.fixture(scope="session")
def sample_3d(tmp_path_factory) -> Path:
    """The built-in 3D sample dataset (folder with datalist.json)."""
    from monai_uda.data.samples import make_sample_dataset

    return Path(make_sample_dataset(tmp_path_factory.mktemp("sample_3d"), spatial_dims=3)).parent


@pytest.fixture(scope="session")
def tiny_rcnn() -> dict:
    """Mask R-CNN settings of the tiny DARCNN detectors (64 px images, few proposals)."""
    return {
        "min_size": 64, "max_size": 64, "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 50,
        "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 32,
        "box_detections_per_img": 10, "box_score_thresh": 0.0,
    }


@pytest.fixture(scope="session")
def small_pdam() -> dict:
    """Mask R-CNN settings of the small PDAM detectors (64 px images, few proposals)."""
    return {
        "min_size": 64, "max_size": 64, "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
        "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20, "box_batch_size_per_image": 32,
        "instance_proposals": 8,
    }
