"""Label-free checkpoint selection: the scores on hand cases, the handler's files, and that no label is read."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.inferers import SimpleInferer, SlidingWindowInferer
from PIL import Image
from torch import nn

from monai_uda.engines.label_free import (
    LabelFreeSelection,
    _center_crop,
    augmentation_views,
    binary_entropy,
    rank_correlation,
    score_image,
    scored_checkpoints,
    selection_items,
    soft_dice,
)
from monai_uda.engines.validation import DetectionForeground
from monai_uda.errors import UDAInputError
from monai_uda.transforms import inference_transforms

READ, WINDOW = inference_transforms(2, 3), SlidingWindowInferer((16, 16), mode="gaussian")  # 2D RGB, whole images


def test_rank_correlation_hand_cases():
    assert rank_correlation([1, 2, 3], [0.1, 0.2, 0.3]) == pytest.approx(1.0)
    assert rank_correlation([3, 2, 1], [0.1, 0.2, 0.3]) == pytest.approx(-1.0)
    # one swapped pair of four: 1 - 6 * (1 + 1) / (4 * (16 - 1))
    assert rank_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # a tie takes the mean rank: ranks (1.5, 1.5, 3) against (1, 2, 3) -> 1.5 / sqrt(1.5 * 2)
    assert rank_correlation([1, 1, 2], [1, 2, 3]) == pytest.approx(1.5 / math.sqrt(3.0))
    assert math.isnan(rank_correlation([0.5], [0.4]))
    assert math.isnan(rank_correlation([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="same length"):
        rank_correlation([1, 2], [1, 2, 3])


def test_soft_dice_and_entropy_hand_cases():
    a, b = torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert soft_dice(a, b) == pytest.approx(0.5)  # 2 * 1 / (2 + 2)
    assert soft_dice(torch.zeros(4), torch.zeros(4)) == pytest.approx(1.0)
    assert soft_dice(torch.full((4,), 0.5), torch.full((4,), 0.5)) == pytest.approx(0.5)  # 2 * 1 / (2 + 2)
    entropy = binary_entropy(torch.tensor([0.5, 0.0, 1.0, 0.25]))
    assert entropy.tolist() == pytest.approx([1.0, 0.0, 0.0, 0.75 * math.log2(4 / 3) + 0.25 * 2.0], abs=1e-9)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_augmentation_views_map_back(spatial_dims):
    x = torch.arange(2 * 4 * 6 * (5 if spatial_dims == 3 else 1), dtype=torch.float32)
    x = x.reshape(1, 2, 4, 6, 5) if spatial_dims == 3 else x.reshape(1, 2, 4, 6)
    views = augmentation_views(spatial_dims)
    assert len(views) == 2 + spatial_dims  # identity, one flip per axis, a quarter turn
    assert all(torch.equal(back(apply(x)), x) for apply, back in views)
    assert sum(torch.equal(apply(x), x) for apply, _ in views) == 1  # only the identity leaves it


class LeftHalf(nn.Module):
    """Foreground on the left half of whatever it sees: a network with an orientation preference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(x[:, :1], -30.0)
        out[..., : x.shape[-1] // 2] = 30.0
        return out


class TopLeftQuarter(nn.Module):
    """Foreground on the top-left quarter of whatever it sees: wrong in every other view."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(x[:, :1], -30.0)
        out[..., : x.shape[-2] // 2, : x.shape[-1] // 2] = 30.0
        return out


class Pointwise(nn.Module):
    """A constant logit per pixel (a 1x1 network): the same prediction in every orientation."""

    def __init__(self, logit: float) -> None:
        super().__init__()
        self.logit = logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], self.logit)


def test_score_image_hand_cases():
    image = torch.rand(1, 3, 8, 8)
    # views: flip of W -> right half (Dice 0), flip of H -> left half (1), quarter turn -> a half
    # across it (overlap a quarter: Dice 0.5); mean 0.5. Foreground: the left half.
    assert score_image(LeftHalf(), image, SimpleInferer()) == pytest.approx((0.5, 0.5), abs=1e-6)
    window = SlidingWindowInferer((4, 4), overlap=0.5, mode="gaussian")
    # foreground everywhere agrees perfectly on the foreground (1) but has no background to agree on (0)
    assert score_image(Pointwise(30.0), image, window) == pytest.approx((0.5, 1.0))
    # p everywhere agrees with itself at 2 N p^2 / (2 N p) = p on the foreground, 1 - p on the background
    assert score_image(Pointwise(3.0), image, window)[0] == pytest.approx(0.5)
    # a top-left quarter, whatever the view: foreground never overlaps (0); background 3/4 of the image
    # overlapping on 1/2 of it: 2 (1/2) / (3/2) = 2/3; mean 1/3 - below any one-class map
    assert score_image(TopLeftQuarter(), image, SimpleInferer()) == pytest.approx((1.0 / 3.0, 0.25))
    # p = 1/4 everywhere: entropy 0.75 log2(4/3) + 0.25 log2(4) bits, nothing >= 0.5
    value, foreground = score_image(Pointwise(-math.log(3.0)), image, window, score="entropy")
    assert value == pytest.approx(-(0.75 * math.log2(4 / 3) + 0.5), abs=1e-6) and foreground == 0.0
    # AD-GAN's mask domain: a score of 0 is p = 1/2, one bit
    assert score_image(Pointwise(0.0), image, window, score="entropy", kind="unit") == pytest.approx((-1.0, 1.0))


class FixedDetector(nn.Module):
    """A torchvision-style detector returning the same instance masks, in tile coordinates, for every tile."""

    def __init__(self, *boxes: tuple[slice, slice]) -> None:
        super().__init__()
        self.boxes = boxes

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        masks = torch.zeros(len(self.boxes), 1, *images[0].shape[-2:])
        for mask, (rows, cols) in zip(masks, self.boxes):
            mask[0, rows, cols] = 0.9  # soft mask above mask_threshold 0.5
        return [{"masks": masks, "scores": torch.full((len(self.boxes),), 0.8)}]


def _detector_score(*boxes: tuple[slice, slice], shape: tuple[int, int] = (16, 16)) -> tuple[float, float]:
    network = DetectionForeground(FixedDetector(*boxes), tile_size=16, tile_overlap=4, min_size=4)
    return score_image(network, torch.rand(1, 3, *shape), SimpleInferer(), kind="binary")


def test_score_image_of_a_detector_hand_cases():
    everything = (slice(None), slice(None))
    # a centred 8x8 square: the same in every view -> Dice 1; 64 of 256 pixels foreground
    assert _detector_score((slice(4, 12), slice(4, 12))) == pytest.approx((1.0, 0.25))
    # the left half of whatever it sees, as LeftHalf: Dice 0 (W flip), 1 (H flip), 0.5 (quarter turn)
    assert _detector_score((slice(None), slice(0, 8))) == pytest.approx((0.5, 0.5))
    # two instances, A the top-left 4x4 and B the top-right 8x8 (80 pixels); mapped back, the views give
    # H flip: A, B at the bottom: no overlap -> 0; W flip: A top-right (inside B, 16) and B top-left
    # (holding A, 16) -> 2 * 32 / 160; quarter turn: A top-right (16), B bottom-right (0) -> 2 * 16 / 160
    # background: 176 pixels in each map, overlapping on 256 minus the union of the foregrounds (160 - overlap)
    background = [2 * (256 - 160 + overlap) / 352 for overlap in (0, 32, 16)]
    assert _detector_score((slice(0, 4), slice(0, 4)), (slice(0, 8), slice(8, 16))) == pytest.approx(
        (np.mean([(fg + bg) / 2 for fg, bg in zip((0.0, 0.4, 0.2), background)]), 80 / 256))
    # nothing found in any view: agreement on the background only, 0.5 - not the perfect 1 of two empty maps
    assert _detector_score() == (0.5, 0.0)
    # tiles: a 16x28 image in two 16x16 tiles (overlap 4) each claiming all of itself: all foreground
    assert _detector_score(everything, shape=(16, 28)) == pytest.approx((0.5, 1.0))  # one class: 0.5


def _image(path: Path, seed: int, shape: tuple[int, int]) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture
def datalist(tmp_path) -> dict[str, list[dict[str, str]]]:
    """Two labelled target images (labels that selection must never read) and one source image."""
    target = [{"image": _image(tmp_path / f"t{i}.png", i, (20, 24)),
               "label": _image(tmp_path / f"l{i}.png", 9, (20, 24))} for i in range(2)]
    return {"source": [dict(target[0])], "target": target}


def _net() -> nn.Module:
    with torch.random.fork_rng():  # the same weights every time, the caller's random numbers untouched
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))


def _run(datalist, out: Path, iterations: int = 4, **kwargs) -> tuple[LabelFreeSelection, nn.Module, Engine]:
    """Score a network every 2 of ``iterations`` while each iteration changes its last bias."""
    net = _net()

    def step(engine: Engine, _: object) -> None:
        with torch.no_grad():
            net[2].bias.fill_([0.0, 4.0, -4.0, 1.0][(engine.state.iteration - 1) % 4])

    engine = Engine(step)
    handler = LabelFreeSelection(datalist, net, {"segmenter": net}, str(out), "cpu", READ, WINDOW,
                                 interval=2, **kwargs)
    handler.attach(engine)
    engine.run(range(iterations), max_epochs=1)
    return handler, net, engine


def _scores(out: Path) -> list[tuple[int, float]]:
    return [(e["iteration"], e["score"]) for e in json.loads((out / "selection.json").read_text())]


def test_selection_scores_keeps_best_and_draws_no_random_numbers(datalist, tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    handler, net, _ = _run(datalist, tmp_path / "a", keep_scored_models="true")
    assert torch.equal(torch.get_rng_state(), before) and net.training
    entries = json.loads((tmp_path / "a" / "selection.json").read_text())
    assert [e["iteration"] for e in entries] == [2, 4]
    assert set(entries[0]) == {"iteration", "score", "foreground", "seconds"}
    assert 0.0 <= entries[0]["seconds"] <= entries[1]["seconds"] < 60.0  # training wall time at each scoring
    assert all(0.0 <= e["score"] <= 1.0 and 0.0 <= e["foreground"] <= 1.0 for e in entries)
    # the networks of the better-scored iteration (bias 4 at iteration 2, bias 1 at 4) are kept as the best
    best_iteration = max(entries, key=lambda e: e["score"])["iteration"]
    best = torch.load(tmp_path / "a" / "model_best.pt", weights_only=True)
    assert set(best) == {"segmenter"} and best["segmenter"]["2.bias"].item() == {2: 4.0, 4: 1.0}[best_iteration]
    assert handler.saver.best == max(e["score"] for e in entries)
    kept = scored_checkpoints(tmp_path / "a")
    assert sorted(kept) == [2, 4]
    assert torch.load(kept[2], weights_only=True)["segmenter"]["2.bias"].item() == 4.0


def test_selection_never_reads_target_labels(datalist, tmp_path):
    reference = _scores(_run(datalist, tmp_path / "labelled", iterations=2)[0].output_dir)
    unlabelled = {**datalist, "target": [{"image": i["image"]} for i in datalist["target"]]}
    corrupted = {**datalist, "target": [{**i, "label": str(tmp_path / "missing.png")} for i in datalist["target"]]}
    for name, variant in (("unlabelled", unlabelled), ("corrupted", corrupted)):
        assert _scores(_run(variant, tmp_path / name, iterations=2)[0].output_dir) == reference
    assert all(set(item) == {"image"} for item in selection_items(datalist, 8))


def test_selection_off_with_a_validation_list_or_when_disabled(datalist, tmp_path):
    with_val = {**datalist, "validation": [dict(datalist["target"][0])]}
    for out, data, enabled in ((tmp_path / "val", with_val, True), (tmp_path / "off", datalist, "false")):
        handler, _, _ = _run(data, out, enabled=enabled)
        assert not handler.enabled and not out.exists()


def test_selection_resume_keeps_earlier_scores(datalist, tmp_path):
    out = tmp_path / "run"
    _run(datalist, out)  # scorings at iterations 2 and 4
    earlier, best_file = _scores(out), (out / "model_best.pt").read_bytes()
    net = TopLeftQuarter()  # 1/3: worse than the earlier networks (about 0.5)
    assert min(s for _, s in earlier) > 0.45
    for resume, expected in (("true", [*earlier, 6]), ("false", [6])):
        handler = LabelFreeSelection(datalist, net, {"segmenter": net}, str(out), "cpu", READ, SimpleInferer(),
                                     resume=resume)
        engine = Engine(lambda e, b: None)
        engine.state.iteration = 6
        handler(engine)
        scores = _scores(out)
        assert [i if isinstance(i, int) else i[0] for i in expected] == [i for i, _ in scores]
        assert scores[-1][1] == pytest.approx(1.0 / 3.0)
        if resume == "true":
            assert scores[:2] == earlier and handler.saver.best == max(s for _, s in earlier)
            assert (out / "model_best.pt").read_bytes() == best_file  # a worse score keeps the earlier best
            seconds = [e["seconds"] for e in json.loads((out / "selection.json").read_text())]
            assert seconds[2] >= seconds[1] > 0.0  # the resumed clock continues from the last earlier scoring


def test_selection_crop_scores_the_centre_of_each_image(datalist, tmp_path):
    handler, _, _ = _run(datalist, tmp_path / "crop", iterations=2, crop=[8, 30])
    assert [tuple(i.shape) for i in handler._images] == [(3, 8, 24)] * 2  # 20x24 images: 8 rows, every column
    read = inference_transforms(2, 3)({"image": datalist["target"][0]["image"]})["image"]
    assert torch.equal(handler._images[0], read[:, 6:14])
    volume = torch.arange(2 * 3 * 10 * 12.0).reshape(2, 3, 10, 12)  # a 2D crop of a volume: every slice kept
    assert torch.equal(_center_crop(volume, [4, 4]), volume[:, :, 3:7, 4:8])


def test_selection_items_and_bad_options(datalist):
    five = {"target": [{"image": f"t{i}.png", "label": f"l{i}.png"} for i in range(5)]}
    assert [i["image"] for i in selection_items(five, 2)] == ["t0.png", "t4.png"]
    assert [i["image"] for i in selection_items(five, 3)] == ["t0.png", "t2.png", "t4.png"]
    assert len(selection_items(five, 10)) == 5
    with pytest.raises(UDAInputError, match="selection_score must be one of agreement, entropy"):
        LabelFreeSelection(datalist, _net(), {}, "out", "cpu", READ, WINDOW, score="dice")
    with pytest.raises(UDAInputError, match="selection_score entropy needs foreground probabilities"):
        LabelFreeSelection(datalist, _net(), {}, "out", "cpu", READ, WINDOW, score="entropy", foreground_score="binary")
    with pytest.raises(UDAInputError, match="selection_images"):
        LabelFreeSelection(datalist, _net(), {}, "out", "cpu", READ, WINDOW, images=0)
