"""The shared trainer: iteration budget, bit-identical resume, NaN guard, checkpoint contents."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.networks.nets import UNet
from monai.utils import set_determinism

from monai_uda.engines import (
    AdaptationTrainer,
    FinalModelSaver,
    ResumableSampler,
    TrainingDivergedError,
    checkpoint_objects,
    latest_checkpoint,
    load_network_weights,
    make_train_loader,
)
from monai_uda.errors import UDAInputError
from monai_uda.methods.cellseg_uda import CellSegUDA
from monai_uda.networks.output_space import OutputSpaceDiscriminator


class ToyUnpaired(torch.utils.data.Dataset):
    """Items are a pure function of (epoch, index): what UnpairedDataset guarantees."""

    def __init__(self, length: int = 5) -> None:
        self.length, self.epoch = length, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1000 * self.epoch + i)
        label = (torch.rand(1, 32, 32, generator=g) > 0.6).int()
        return {
            "source_image": label.float().repeat(3, 1, 1) + 0.1 * torch.rand(3, 32, 32, generator=g),
            "source_label": label,
            "target_image": torch.rand(3, 32, 32, generator=g),
        }


def _method() -> CellSegUDA:
    unet = dict(spatial_dims=2, channels=(4, 8), strides=(2,), num_res_units=0)
    return CellSegUDA(
        UNet(in_channels=3, out_channels=1, **unet),
        UNet(in_channels=1, out_channels=3, **unet),
        OutputSpaceDiscriminator(2, 1, channels=(4, 4, 4, 4)),
        mode="uda",
    )


def _train(out: Path, max_iterations: int, stop_at: int | None = None, resume: bool = False) -> AdaptationTrainer:
    set_determinism(seed=0)
    method = _method()
    loader = make_train_loader(ToyUnpaired(), batch_size=2, max_iterations=max_iterations)
    trainer = AdaptationTrainer("cpu", max_iterations, loader, method, epoch_length=2)
    handlers = [
        CheckpointSaver(str(out), checkpoint_objects(trainer), save_interval=2, epoch_level=False, n_saved=2),
        FinalModelSaver(out),
    ]
    if resume:
        handlers.insert(0, CheckpointLoader(latest_checkpoint(out), checkpoint_objects(trainer), map_location="cpu"))
    for h in handlers:
        h.attach(trainer)
    if stop_at is not None:

        @trainer.on(Events.ITERATION_COMPLETED(once=stop_at))
        def _kill(engine):
            raise KeyboardInterrupt("simulated kill")

        with pytest.raises(KeyboardInterrupt):
            trainer.run()
    else:
        trainer.run()
    return trainer


def test_budget_and_final_model(tmp_path):
    trainer = _train(tmp_path, max_iterations=5)
    assert trainer.state.iteration == 5
    assert set(trainer.state.output) == {"seg", "adv", "recons", "disc", "total"}
    model = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(model) == {"segmenter", "reconstructor", "discriminator"}
    # the newest periodic checkpoint holds every network, optimiser, the trainer and the RNG
    ckpt = torch.load(latest_checkpoint(tmp_path), weights_only=True)
    assert {
        "trainer", "rng", "segmenter", "optimizer_segmenter", "optimizer_discriminator", "optimizer_reconstructor",
    } <= set(ckpt)
    assert ckpt["trainer"]["iteration"] == 4
    assert not list(tmp_path.glob(".tmp-*"))


def test_resume_is_bit_identical(tmp_path):
    full = _train(tmp_path / "full", max_iterations=7)
    _train(tmp_path / "cut", max_iterations=7, stop_at=5)  # killed after the checkpoint at iteration 4
    assert torch.load(latest_checkpoint(tmp_path / "cut"), weights_only=True)["trainer"]["iteration"] == 4
    resumed = _train(tmp_path / "cut", max_iterations=7, resume=True)
    assert resumed.state.iteration == 7
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UDAInputError, match="no checkpoint to resume from"):
        latest_checkpoint(tmp_path)


def test_nan_guard_names_loss_and_iteration_and_keeps_checkpoint(tmp_path):
    set_determinism(seed=0)
    method = _method()
    original_step = method.step

    def poisoned(engine, batch):
        losses = original_step(engine, batch)
        if engine.state.iteration == 3:
            losses["recons"] = torch.tensor(float("nan"))
        return losses

    method.step = poisoned
    trainer = AdaptationTrainer("cpu", 6, make_train_loader(ToyUnpaired(), 2, 6), method, epoch_length=2)
    CheckpointSaver(str(tmp_path), checkpoint_objects(trainer), save_interval=2, epoch_level=False).attach(trainer)
    FinalModelSaver(tmp_path).attach(trainer)
    with pytest.raises(TrainingDivergedError, match=r"loss 'recons' is nan at iteration 3"):
        trainer.run()
    assert torch.load(latest_checkpoint(tmp_path), weights_only=True)["trainer"]["iteration"] == 2
    assert not (tmp_path / "model.pt").exists()


def test_sampler_ranks_partition_the_global_order():
    it = iter([0])
    s0 = ResumableSampler(2, 3, rank=0, world_size=2)
    s1 = ResumableSampler(2, 3, rank=1, world_size=2)
    assert list(s0) == [0, 1, 4, 5, 8, 9] and list(s1) == [2, 3, 6, 7, 10, 11]
    s0.start_iteration = lambda: 2
    assert list(s0) == [8, 9] and len(s0) == 2
    del it


def test_load_network_weights_errors(tmp_path):
    net = UNet(2, 3, 1, channels=(4, 8), strides=(2,))
    other = UNet(2, 1, 1, channels=(4, 8), strides=(2,))
    torch.save({"segmenter": other.state_dict()}, tmp_path / "m.pt")
    with pytest.raises(UDAInputError, match="does not fit the network"):
        load_network_weights(net, tmp_path / "m.pt", key="segmenter")
    with pytest.raises(UDAInputError, match="has no network 'generator'"):
        load_network_weights(net, tmp_path / "m.pt", key="generator")
    torch.save({"segmenter": net.state_dict()}, tmp_path / "ok.pt")
    load_network_weights(other, tmp_path / "m.pt", key="segmenter")
    loaded = load_network_weights(UNet(2, 3, 1, channels=(4, 8), strides=(2,)), tmp_path / "ok.pt", "segmenter")
    assert torch.equal(loaded.state_dict()["model.0.conv.weight"], net.state_dict()["model.0.conv.weight"])
