"""``torchrun --nproc_per_node=2`` on CPU (gloo): both ranks of a bundle end with identical weights.

Each bundle's ``train.yaml`` + ``multi_gpu_train.yaml`` runs a few iterations on the built-in
sample; a third, test-only config appends one expression to ``run`` that saves every rank's
``method.state_dict()`` to ``rank<r>.pt``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "cellseg_uda": {
        "widths": [4, 8, 16], "disc_widths": [4, 4, 4, 4], "source_patch": [64, 64], "target_patch": [64, 64],
        "batch_size": 2, "val_interval": 2,  # both ranks validate their share of the sample's validation list
    },
    "ad_gan": {
        "gen_widths": [4, 8, 8], "num_res_blocks": 1, "mlp_channels": 8, "disc_widths": [4, 8], "patch": [32, 32],
        "batch_size": 2, "masks_per_epoch": 4, "axis_range": [3, 5], "count_range": [2, 5],
        # no validation list (see below): both ranks score their share of 2 target images without labels
        "val_interval": 2, "selection_images": 2, "selection_handler#inferer#roi_size": [128, 128],
    },
}
DUMP_RANK = """run:
  - "$@train_stage.run()"
  - "$torch.save({k: v.detach().cpu() for k, v in @trainer.method.state_dict().items()}, \
os.path.join(@output_dir, 'rank%d.pt' % @rank))"
"""


@pytest.mark.parametrize("bundle", ["cellseg_uda", "ad_gan"])
def test_two_cpu_ranks_end_with_identical_weights(sample_2d, tmp_path, bundle):
    (tmp_path / "dump_rank.yaml").write_text(DUMP_RANK)
    configs = REPO / "bundles" / bundle / "configs"
    files = [str(configs / "train.yaml"), str(configs / "multi_gpu_train.yaml"), str(tmp_path / "dump_rank.yaml")]
    out = tmp_path / "out"
    dataset = sample_2d / "datalist.json"
    if bundle == "ad_gan":  # the sample without its validation list: label-free selection
        data = {k: v for k, v in json.loads(dataset.read_text()).items() if k != "validation"}
        dataset = tmp_path / "no_validation.json"
        dataset.write_text(json.dumps(data))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
        "run", "training", "--config_file", json.dumps(files), "--dataset_dir", str(dataset), "--data_root",
        str(sample_2d), "--output_dir", str(out), "--max_iterations", "2",
    ]
    for key, value in TINY[bundle].items():
        cmd += [f"--{key}", json.dumps(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0 = torch.load(out / "rank0.pt", weights_only=True)
    rank1 = torch.load(out / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() and len(rank0) > 10
    for name in rank0:
        torch.testing.assert_close(
            rank0[name], rank1[name], rtol=0, atol=0, msg=f"{bundle}: {name} differs between ranks"
        )
    # only rank 0 wrote the final model (CPU-loadable) and checkpoints
    model = torch.load(out / "model.pt", weights_only=True, map_location="cpu")
    assert model and not list(out.glob("*rank1*checkpoint*"))
    assert (out / "model_best.pt").is_file()
    if bundle == "cellseg_uda":
        assert "val_mean_dice" in proc.stdout + proc.stderr
    else:  # rank 0 alone logs and writes the mean over both ranks' images
        assert (proc.stdout + proc.stderr).count("label-free selection (agreement) at iteration 2") == 1
        assert "on 2 target images" in proc.stdout + proc.stderr
        assert [e["iteration"] for e in json.loads((out / "selection.json").read_text())] == [2]
