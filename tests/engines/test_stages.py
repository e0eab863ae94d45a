"""Stages decide skip-if-done and resume; the shared output handlers of a stage."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from monai.handlers import CheckpointSaver, StatsHandler

from monai_uda.engines import (
    AtomicCheckpointSaver,
    FinalModelSaver,
    ResumeCheckpointLoader,
    Stage,
    training_outputs,
)
from monai_uda.engines.run_folder import RunFolder
from monai_uda.errors import UDAInputError


class _Trainer:
    def __init__(self) -> None:
        self.runs = 0
        self.method = SimpleNamespace(checkpoint_objects=dict)

    def run(self) -> None:
        self.runs += 1

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _checkpoint(folder: Path, iteration: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"checkpoint_iteration={iteration}.pt"
    torch.save({"trainer": {"iteration": iteration}}, path)
    return path


def test_a_new_run_trains_every_stage(tmp_path):
    trainer = _Trainer()
    stage = Stage("one", trainer, str(tmp_path / "one"), resume="false", done_file="model.pt")
    assert not stage.finished and stage.checkpoint is None and stage.resume_loader() is None
    stage.run()
    assert trainer.runs == 1


def test_resume_continues_from_the_newest_checkpoint_and_needs_one_in_the_first_stage(tmp_path):
    _checkpoint(tmp_path / "one", 2)
    newest = _checkpoint(tmp_path / "one", 4)
    stage = Stage("one", _Trainer(), str(tmp_path / "one"), resume="true")
    assert not stage.finished and stage.checkpoint == str(newest)
    assert isinstance(stage.resume_loader(), ResumeCheckpointLoader)  # a checkpoint that does not fit: one error line
    with pytest.raises(UDAInputError, match="no checkpoint to resume from"):
        Stage("two", _Trainer(), str(tmp_path / "two"), resume=True)
    assert Stage("two", _Trainer(), str(tmp_path / "two"), resume=True, require_checkpoint=False).checkpoint is None


def test_a_finished_stage_is_skipped_and_hands_its_model_on(tmp_path):
    network = torch.nn.Linear(2, 1)
    finished = {k: torch.full_like(v, 0.5) for k, v in network.state_dict().items()}
    (tmp_path / "one").mkdir()
    torch.save({"net": finished}, tmp_path / "one" / "model.pt")
    trainer = _Trainer()
    stage = Stage("one", trainer, str(tmp_path / "one"), resume=True, done_file="model.pt", weights={"net": network})
    stage.run()
    assert stage.finished and trainer.runs == 0
    assert all(torch.equal(network.state_dict()[k], v) for k, v in finished.items())
    assert not Stage("one", _Trainer(), str(tmp_path / "one"), resume=False, done_file="model.pt").finished


def test_a_stage_is_finished_once_a_later_stage_has_begun(tmp_path):
    _checkpoint(tmp_path / "two", 3)
    network = torch.nn.Linear(2, 1)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    stage = Stage("one", _Trainer(), str(tmp_path / "one"), resume=True, done_file="model.pt",
                  later_stage_dirs=[str(tmp_path / "two")], weights={"net": network})
    stage.run()  # no model.pt to load: the later stage's checkpoint holds the networks
    assert stage.finished and stage.checkpoint is None
    assert all(torch.equal(network.state_dict()[k], v) for k, v in before.items())


def test_outputs_by_name_rank_local_handlers_only_on_the_main_process(tmp_path):
    trainer = _Trainer()
    folder = RunFolder(tmp_path)
    main = training_outputs(trainer, str(tmp_path), run_folder=folder)
    assert [type(h) for h in main[:3]] == [AtomicCheckpointSaver, FinalModelSaver, StatsHandler] and main[-1] is folder
    assert type(training_outputs(trainer, str(tmp_path), atomic="false")[0]) is CheckpointSaver
    other = training_outputs(trainer, str(tmp_path), run_folder=folder, last_stage=False, main_process="false")
    assert [type(h).__name__ for h in other] == ["FinalModelSaver", "_Hold"]  # rank 0 writes the final model itself
