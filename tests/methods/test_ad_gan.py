from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from monai_uda.engines import ScheduleHandler
from monai_uda.methods.ad_gan import ADGAN, DomainTranslator

ENGINE = SimpleNamespace(state=SimpleNamespace(iteration=1, max_iterations=10))


def _method(**kwargs) -> ADGAN:
    torch.manual_seed(0)
    defaults = {"channels": (4, 8, 8), "disc_channels": (4, 8), "num_res_blocks": 1, "mlp_channels": 8}
    return ADGAN(**{**defaults, **kwargs})


def _batch(channels: int = 1, size: int = 16, spatial_dims: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    shape = (size,) * spatial_dims
    masks = torch.where(torch.rand(2, 1, *shape, generator=generator) > 0.7, 1.0, -1.0)
    return {"source_image": masks, "target_image": torch.rand(2, channels, *shape, generator=generator) * 2 - 1}


def _grads(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in module.parameters()])


def test_step_updates_all_networks_and_logs_losses():
    method = _method()
    before = copy.deepcopy(method.state_dict())
    logs = method.step(ENGINE, _batch())
    assert set(logs) == {"loss_rec", "loss_adv", "loss_ctr", "loss_cyc", "loss_g", "loss_d", "lr"}
    assert all(torch.isfinite(torch.as_tensor(v)) for v in logs.values())
    expected_g = 20 * logs["loss_rec"] + logs["loss_adv"] + logs["loss_ctr"] + 20 * logs["loss_cyc"]
    torch.testing.assert_close(logs["loss_g"], expected_g)
    for prefix in ("generator.encoder.", "generator.decoder.", "discriminator."):
        changed = [not torch.equal(before[k], v) for k, v in method.state_dict().items() if k.startswith(prefix)]
        assert changed and all(changed), prefix


def test_decoder_gradient_is_reconstruction_only_under_adt():
    """ADT: the decoder's gradient in a full step equals the gradient of lambda_rec * L_rec alone."""
    method = _method()
    reference = copy.deepcopy(method)
    batch = _batch()
    method.step(ENGINE, batch)
    x, domain = reference._inputs(batch)
    gen = reference.generator
    (20 * F.l1_loss(gen.decode(gen.encode(x, domain), domain), x)).backward()
    torch.testing.assert_close(_grads(method.generator.decoder), _grads(gen.decoder))
    # the encoder also receives the cross-domain gradients: different from the L_rec one
    assert not torch.allclose(_grads(method.generator.encoder), _grads(gen.encoder))


@pytest.mark.parametrize(
    "weights",
    [
        {"lambda_rec": 0.0, "lambda_ctr": 0.0, "lambda_cyc": 0.0},  # adversarial path only
        {"lambda_rec": 0.0, "lambda_adv": 0.0, "lambda_cyc": 0.0},  # content path only
        {"lambda_rec": 0.0, "lambda_adv": 0.0, "lambda_ctr": 0.0},  # cycle path only
    ],
)
def test_cross_domain_paths_update_encoder_only(weights):
    method = _method(**weights)
    method.step(ENGINE, _batch())
    assert _grads(method.generator.decoder).abs().max() == 0
    assert _grads(method.generator.encoder).abs().max() > 0


def test_generator_loss_does_not_reach_discriminator():
    weak, strong = _method(lambda_adv=1.0), _method(lambda_adv=100.0)
    weak.step(ENGINE, _batch())
    strong.step(ENGINE, _batch())
    torch.testing.assert_close(_grads(weak.discriminator), _grads(strong.discriminator))
    assert _grads(weak.discriminator).abs().max() > 0
    assert not torch.allclose(_grads(weak.generator.encoder), _grads(strong.generator.encoder))


def test_each_network_forwarded_once_per_role():
    method = _method()
    calls = {"encoder": 0, "decoder": 0, "discriminator": 0}
    for name, module in [
        ("encoder", method.generator.encoder),
        ("decoder", method.generator.decoder),
        ("discriminator", method.discriminator),
    ]:
        module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    method.step(ENGINE, _batch())
    # encoder: inputs, translations; decoder: reconstructions, translations, cycles; D: one call
    assert calls == {"encoder": 2, "decoder": 3, "discriminator": 1}


def test_ablation_switches():
    no_adt = _method(aligned=False, lambda_ctr=0.0, lambda_cyc=0.0, lambda_rec=0.0)
    no_adt.step(ENGINE, _batch())
    assert _grads(no_adt.generator.decoder).abs().max() > 0  # cross-domain losses now train the decoder

    no_losses = _method(use_ctr=False, use_cyc=False)
    assert set(no_losses.step(ENGINE, _batch())) == {"loss_rec", "loss_adv", "loss_g", "loss_d", "lr"}

    no_rec = _method(use_rec=False)
    assert not no_rec.freeze_decoder and "loss_rec" not in no_rec.step(ENGINE, _batch())

    no_adain = _method(encoder_adain=False)
    assert no_adain.generator.encoder.mlp is None and no_adain.generator.decoder.mlp is not None
    no_adain.step(ENGINE, _batch())

    bce = _method(gan_mode="bce")
    assert torch.isfinite(bce.step(ENGINE, _batch())["loss_d"])
    with pytest.raises(ValueError):
        _method(gan_mode="wgan")


def test_lr_constant_then_linear_decay():
    method = _method(constant_iterations=2, decay_iterations=2, lr=1e-3)
    schedule, lrs = ScheduleHandler(method.lr_at), []  # as the config attaches it
    for iteration in range(1, 6):
        engine = SimpleNamespace(state=SimpleNamespace(iteration=iteration, max_iterations=10), method=method)
        schedule(engine)
        lrs.append(method.step(engine, _batch(size=8))["lr"])
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 0.0])
    assert method.optimizers["discriminator"].param_groups[0]["lr"] == 0.0
    assert {"optimizer_generator", "optimizer_discriminator", "generator"} <= set(method.checkpoint_objects())


def test_rgb_amp_channels_last_and_3d_steps():
    rgb = _method(image_channels=3, amp=True, channels_last=True)
    assert torch.isfinite(rgb.step(ENGINE, _batch(channels=3))["loss_g"])
    vol = _method(spatial_dims=3)
    assert vol.discriminator.model[0].conv.weight.ndim == 5
    assert torch.isfinite(vol.step(ENGINE, _batch(size=8, spatial_dims=3))["loss_g"])


def test_translate_directions():
    method = _method(image_channels=3)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    masks = method.translate(images, "mask")
    assert masks.shape == (2, 1, 16, 16) and masks.abs().max() <= 1
    synthesized = method.translate(masks, "image")
    assert synthesized.shape == (2, 3, 16, 16)
    half = method.translate(images, 0.5)
    assert half.shape == (2, 3, 16, 16) and not torch.allclose(half, method.translate(images, 1.0))
    assert method.training  # translate restores the mode
    with pytest.raises(ValueError):
        method.translate(images, "label")


def test_ternary_translator_scores_pick_nearest_level():
    method = _method()
    translator = DomainTranslator(method.generator, "mask", ternary=True)
    images = torch.rand(1, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        scores, mask = translator(images), method.translator("mask")(images)
    assert scores.shape == (1, 3, 16, 16)
    expected = torch.bucketize(mask[:, 0], torch.tensor([-0.5, 0.5]))
    torch.testing.assert_close(scores.argmax(dim=1), expected)


def test_gradients_averaged_over_ranks(tmp_path):
    """A one-rank gloo process group: the all-reduce path runs and the mean over one rank changes nothing."""
    import torch.distributed as dist

    plain, synced = _method(), _method()
    plain.step(ENGINE, _batch())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        synced.step(ENGINE, _batch())
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(_grads(plain.generator), _grads(synced.generator))


@pytest.mark.parametrize(("gan_mode", "expected_adv", "expected_d"), [
    # least squares on the raw output (official LSGAN): (-1 - 1)^2 = 4; D: 0.5 * ((-1 - 1)^2 + (-1 - 0)^2)
    ("least_squares", 4.0, 2.5),
    # bce on logits: -log(sigmoid(-1)) = 1.3133; D: 0.5 * (1.3133 + -log(1 - sigmoid(-1)) = 0.3133)
    ("bce", 1.3133, 0.8133),
])
def test_adversarial_loss_is_taken_on_the_raw_discriminator_output(gan_mode, expected_adv, expected_d):
    """A discriminator answering -1 everywhere: no activation (e.g. LeakyReLU) before the criterion."""
    method = _method(gan_mode=gan_mode)
    method.discriminator.forward = lambda x, domain: torch.full((x.shape[0], 1, 4, 4), -1.0, requires_grad=True)
    logs = method.step(ENGINE, _batch())
    assert float(logs["loss_adv"]) == pytest.approx(expected_adv, abs=1e-4)
    assert float(logs["loss_d"]) == pytest.approx(expected_d, abs=1e-4)
