from __future__ import annotations

import io

import pytest
import torch

from monai_uda.networks.cyclegan import ImagePool, ResnetBlock, ResnetGenerator


def test_generator_2d_3d_shapes_and_range():
    gen = ResnetGenerator(2, in_channels=1, out_channels=3, channels=8, num_blocks=2)
    y = gen(torch.rand(2, 1, 32, 32) * 2 - 1)
    assert y.shape == (2, 3, 32, 32) and y.abs().max() <= 1.0
    assert sum(isinstance(m, ResnetBlock) for m in gen.modules()) == 2
    assert sum(isinstance(m, ResnetBlock) for m in ResnetGenerator(2, 3, 3, channels=4).modules()) == 9  # paper default
    gen3 = ResnetGenerator(3, 1, 1, channels=4, num_blocks=1)
    assert gen3(torch.zeros(1, 1, 8, 16, 16)).shape == (1, 1, 8, 16, 16)
    with pytest.raises(ValueError, match="divisible by 4"):
        gen(torch.zeros(1, 1, 30, 32))


def test_image_pool_mixes_history_and_is_reproducible():
    pool = ImagePool(pool_size=2, seed=0)
    first = pool.query(torch.stack([torch.full((1, 2, 2), float(i)) for i in range(2)]))
    assert torch.equal(first[:, 0, 0, 0], torch.tensor([0.0, 1.0]))  # filling the pool returns the new images
    seen = set()
    for step in range(2, 30):
        out = pool.query(torch.full((1, 1, 2, 2), float(step)))
        seen.add(float(out[0, 0, 0, 0]) == float(step))
    assert seen == {True, False}  # sometimes the new fake, sometimes an older one
    assert _replay(6) == _replay(6)  # seeded
    assert torch.equal(ImagePool(0).query(torch.ones(1, 1, 2, 2)), torch.ones(1, 1, 2, 2))


def _replay(n: int) -> list[float]:
    pool = ImagePool(pool_size=2, seed=0)
    pool.query(torch.stack([torch.full((1, 2, 2), float(i)) for i in range(2)]))
    return [float(pool.query(torch.full((1, 1, 2, 2), 2.0 + k))[0, 0, 0, 0]) for k in range(n)]


def test_image_pool_state_round_trip_continues_identically():
    uninterrupted = ImagePool(pool_size=3, seed=5)
    for k in range(6):  # full pool, generator advanced
        uninterrupted.query(torch.full((1, 1, 2, 2), float(k)))
    buffer = io.BytesIO()
    torch.save({"pool": uninterrupted.state_dict()}, buffer)
    buffer.seek(0)
    resumed = ImagePool(pool_size=3, seed=99)
    resumed.load_state_dict(torch.load(buffer, weights_only=True)["pool"])  # tensors and plain types only
    assert [float(i[0, 0, 0]) for i in resumed.images] == [float(i[0, 0, 0]) for i in uninterrupted.images]
    expected = [uninterrupted.query(torch.full((2, 1, 2, 2), 10.0 + k))[:, 0, 0, 0].tolist() for k in range(8)]
    got = [resumed.query(torch.full((2, 1, 2, 2), 10.0 + k))[:, 0, 0, 0].tolist() for k in range(8)]
    assert got == expected
    assert any(v < 10.0 for pair in got for v in pair)  # some queries returned images stored before the save
    fresh = ImagePool(pool_size=3, seed=5)
    assert [
        fresh.query(torch.full((2, 1, 2, 2), 10.0 + k))[:, 0, 0, 0].tolist() for k in range(8)
    ] != expected  # the state matters
    with pytest.raises(ValueError, match="more than pool_size 2"):
        ImagePool(pool_size=2).load_state_dict(uninterrupted.state_dict())
