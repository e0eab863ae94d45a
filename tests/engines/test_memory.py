"""Memory plan (monai_uda/engines/memory.py), gradient accumulation and float16 loss scaling."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import UNet

from monai_uda.engines.memory import (
    GIB,
    HEADROOM,
    MemoryPlanError,
    fit_line,
    measure_step,
    meminfo_bytes,
    plan_batches,
    plan_training,
    split_batch,
)
from monai_uda.errors import UDAInputError
from monai_uda.methods.cellseg_uda import CellSegUDA
from monai_uda.networks.output_space import OutputSpaceDiscriminator

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
ENGINE = SimpleNamespace(state=SimpleNamespace(iteration=1, max_iterations=10, epoch=1))


# ------------------------------------------------------------------ decision logic
def test_plan_fits():
    plan = plan_batches(8, fixed=1 * GIB, per_sample=1 * GIB, available=20 * GIB)
    assert (plan.steps, plan.micro_batch, plan.needed) == (1, 8, 9 * GIB)
    assert "batch 8 fits" in plan.describe()


def test_plan_accumulates_keeping_the_batch():
    # budget 0.9 * 10 = 9 GiB: at most 4 samples per micro-batch -> 2 micro-batches of 4
    plan = plan_batches(8, fixed=1 * GIB, per_sample=2 * GIB, available=10 * GIB)
    assert (plan.steps, plan.micro_batch, plan.needed, plan.planned) == (2, 4, 17 * GIB, 9 * GIB)
    line = plan.describe()
    assert "\n" not in line
    assert (
        "needs ~17.0 GiB, 10.0 GiB available" in line and "2 micro-batches of 4" in line and "effective batch 8" in line
    )
    # uneven: 7 samples, 3 per micro-batch at most -> 3 micro-batches of at most 3
    plan = plan_batches(7, fixed=0, per_sample=3 * GIB, available=10 * GIB)
    assert (plan.steps, plan.micro_batch) == (3, 3)


def test_plan_refuses_with_one_line_and_the_override():
    with pytest.raises(MemoryPlanError) as err:
        plan_batches(8, fixed=4 * GIB, per_sample=20 * GIB, available=10 * GIB, device="cpu", hint="the CPU preset")
    message = str(err.value)
    assert isinstance(err.value, UDAInputError) and "\n" not in message
    assert "one step at batch 1 needs ~24.0 GiB, 10.0 GiB available; use the CPU preset" in message
    assert "--memory_check false" in message


def test_fit_line_and_split_batch():
    assert fit_line(3 * GIB, 5 * GIB) == (1 * GIB, 2 * GIB)
    assert fit_line(3 * GIB, None) == (0, 3 * GIB)  # one point: all of it per sample (over-estimate)
    assert fit_line(3 * GIB, 2 * GIB) == (0, 3 * GIB)  # noisy second point
    batch = {"a": torch.arange(5), "b": torch.zeros(5, 2), "scalar": torch.tensor(1.0), "name": "x"}
    parts = split_batch(batch, 2)
    assert [p["a"].tolist() for p in parts] == [[0, 1, 2], [3, 4]]
    assert [tuple(p["b"].shape) for p in parts] == [(3, 2), (2, 2)]
    assert all(p["name"] == "x" and p["scalar"] == 1.0 for p in parts)
    assert len(split_batch(batch, 9)) == 5


# ------------------------------------------------------------------ accumulation and amp
def _cellseg(seed: int = 0) -> CellSegUDA:
    torch.manual_seed(seed)
    unet = {"spatial_dims": 2, "channels": (4, 8), "strides": (2,), "num_res_units": 0}
    return CellSegUDA(
        UNet(in_channels=1, out_channels=1, **unet),
        UNet(in_channels=1, out_channels=1, **unet),
        OutputSpaceDiscriminator(2, 1, (4, 8)),
        mode="uda",
    )


def _batch(size: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "source_image": torch.rand(size, 1, 16, 16, generator=g),
        "source_label": (torch.rand(size, 1, 16, 16, generator=g) > 0.6).int(),
        "target_image": torch.rand(size, 1, 16, 16, generator=g),
    }


def _gradients_at_steps(method: CellSegUDA, run) -> dict[str, list[torch.Tensor]]:
    seen: dict[str, list[torch.Tensor]] = {}
    for name, opt in method.optimizers.items():
        def hook(opt, *_, name=name):
            seen[name] = [p.grad.clone() for g in opt.param_groups for p in g["params"] if p.grad is not None]
        opt.register_step_pre_hook(hook)
    run()
    return seen


@pytest.mark.parametrize("steps", [2, 3])
def test_accumulated_micro_batches_give_the_full_batch_gradients(steps):
    full, micro = _cellseg(), _cellseg()
    batch = _batch(4)
    expected = _gradients_at_steps(full, lambda: full.step(ENGINE, batch))

    def accumulate():
        parts = split_batch(batch, steps)
        for i, part in enumerate(parts):
            with micro.micro_batch(len(part["source_image"]) / 4, last=i == len(parts) - 1):
                micro.step(ENGINE, part)

    got = _gradients_at_steps(micro, accumulate)
    assert set(got) == set(expected) == {"segmenter", "reconstructor", "discriminator"}
    for name in expected:
        assert len(got[name]) == len(expected[name])
        for a, b in zip(got[name], expected[name]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_float16_amp_scales_per_optimiser_and_checkpoints_the_scalers():
    method = _cellseg()
    method.amp_dtype = torch.float16  # CPU autocast in float16: the CUDA default, testable here
    method.enable_amp(True)
    assert set(method.scalers) == {"segmenter", "reconstructor", "discriminator"}
    objects = method.checkpoint_objects()
    assert {f"scaler_{n}" for n in method.scalers} <= set(objects)
    before = copy.deepcopy(method.state_dict())
    losses = method.step(ENGINE, _batch(2))
    assert all(torch.isfinite(v).all() for v in losses.values())
    changed = [k for k, v in method.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed and all(torch.isfinite(method.state_dict()[k]).all() for k in changed)
    # eq 4 updates S and R from one loss, scaled by S's scaler; D's loss by D's own
    for name in ("segmenter", "discriminator"):
        state = objects[f"scaler_{name}"].state_dict()
        assert state["scale"] == 65536.0 and state["_growth_tracker"] == 1  # stepped and updated once, finite
    # a non-finite gradient: the step is skipped and the scale backs off
    scaler = method.scalers["discriminator"]
    scale = scaler.get_scale()
    weights = copy.deepcopy(method.discriminator.state_dict())
    method.backward(
        torch.tensor(float("inf"), requires_grad=True) * sum(p.sum() for p in method.discriminator.parameters()),
        "discriminator",
    )
    method.step_optimizer("discriminator")
    assert scaler.get_scale() == scale / 2
    for k, v in method.discriminator.state_dict().items():
        assert torch.equal(v, weights[k])


def test_bfloat16_amp_needs_no_scaler():
    method = _cellseg()
    method.enable_amp(True)  # CPU default: bfloat16
    assert method.scalers == {} and not any(k.startswith("scaler_") for k in method.checkpoint_objects())


def test_plan_training_measures_the_real_step_and_restores_the_method():
    method = _cellseg()
    batch = _batch(4)
    before = copy.deepcopy(method.state_dict())
    rng = torch.random.get_rng_state()
    plan = plan_training(lambda micro: method.step(ENGINE, micro), method, batch, "cpu")
    assert plan.batch_size == 4 and plan.steps == 1 and plan.needed > 0
    assert all(torch.equal(v, before[k]) for k, v in method.state_dict().items())
    assert all(not opt.state for opt in method.optimizers.values())
    assert torch.equal(torch.random.get_rng_state(), rng)


# ------------------------------------------------------------------ each bundle's default train.yaml on this machine
FIRST_TRAINER = {
    "ad_gan": "trainer", "cellseg_uda": "trainer", "cyc_pdam": "cyclegan_trainer", "darcnn": "stage1_trainer",
}


@pytest.mark.parametrize("bundle", sorted(FIRST_TRAINER))
def test_default_train_config_plans_to_fit_this_machine(bundle, tmp_path):
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.yaml"))
    parser.update({"output_dir": str(tmp_path), "run_dir": str(tmp_path), "max_iterations": 1, "device": "cpu"})
    assert parser["memory_check"] is True
    trainer = parser.get_parsed_content(FIRST_TRAINER[bundle])
    assert trainer.memory_check and "train_cpu.yaml" in trainer.memory_hint
    batch = next(iter(trainer.data_loader))
    batch_size = len(batch["target_image"])
    assert batch_size == (8 if bundle == "ad_gan" else 1)  # AD-GAN: 8 images + 8 masks
    engine = SimpleNamespace(state=SimpleNamespace(iteration=1, max_iterations=1, epoch=1))
    sizes = [1, 2] if batch_size > 1 else [1]
    peaks = measure_step(lambda micro: trainer.method.step(engine, micro), trainer.method, batch, sizes, "cpu")
    fixed, per_sample = fit_line(peaks[0], peaks[1] if len(peaks) > 1 else None)
    machine = meminfo_bytes("MemTotal")  # checked against the machine, not the moment's load
    alone = plan_batches(batch_size, fixed, per_sample, machine, hint=trainer.memory_hint)
    assert alone.steps == 1 and alone.needed <= HEADROOM * machine  # the configured batch as it is
    # torchrun, 2 processes
    shared = plan_batches(batch_size, fixed, per_sample, machine // 2, hint=trainer.memory_hint)
    assert shared.micro_batch * shared.steps >= batch_size and shared.planned <= HEADROOM * machine // 2


# ------------------------------------------------------------------ the trainer's hook
def _trainer(batch_size: int, max_iterations: int = 2, **kwargs):
    from monai_uda.engines import AdaptationTrainer, make_train_loader

    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {k: v[0] for k, v in _batch(1).items()}

    loader = make_train_loader(Items(), batch_size, max_iterations)
    return AdaptationTrainer("cpu", max_iterations, loader, _cellseg(), **kwargs)


def test_trainer_runs_the_planned_micro_batches(monkeypatch):
    import monai_uda.engines.trainer as trainer_module

    plan = plan_batches(4, fixed=0, per_sample=3 * GIB, available=8 * GIB)  # 2 per micro-batch
    monkeypatch.setattr(trainer_module, "plan_training", lambda *a, **k: plan)
    trainer = _trainer(4, memory_check=True)
    seen = []
    step = trainer.method.step

    def spy(engine, batch):
        seen.append((len(batch["source_image"]), trainer.method.last_micro_batch, trainer.method._micro_weight))
        return step(engine, batch)

    trainer.method.step = spy
    trainer.run()
    assert trainer.memory_plan is plan and (plan.steps, plan.micro_batch) == (2, 2)
    assert seen == [(2, False, 0.5), (2, True, 0.5)] * 2
    assert all(isinstance(v, float) for v in trainer.state.output.values())


def test_trainer_refuses_before_the_first_step_when_one_sample_does_not_fit(monkeypatch):
    import monai_uda.engines.memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda device: 1024)
    trainer = _trainer(2, memory_check=True, memory_hint="the CPU preset")
    before = copy.deepcopy(trainer.method.state_dict())
    with pytest.raises(
        MemoryPlanError, match=r"one step at batch 1 needs ~.* GiB, 0\.0 GiB available; use the CPU preset"
    ):
        trainer.run()
    assert all(torch.equal(v, before[k]) for k, v in trainer.method.state_dict().items())  # nothing trained
