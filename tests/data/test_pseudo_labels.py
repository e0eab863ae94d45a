from __future__ import annotations

import pytest
import torch

from monai_uda.data.pseudo_labels import PseudoLabelAugment, filter_detections, instance_targets


def test_instance_targets_boxes_cover_pixels():
    label = torch.zeros(1, 6, 6)
    label[0, 1:3, 2:5] = 4
    label[0, 5, 5] = 7  # one-pixel nucleus
    t = instance_targets(label)
    assert t["boxes"].tolist() == [[2.0, 1.0, 5.0, 3.0], [5.0, 5.0, 6.0, 6.0]]
    assert t["labels"].tolist() == [1, 1]
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (2, 6, 6)
    assert int(t["masks"][0].sum()) == 6 and int(t["masks"][1, 5, 5]) == 1


def test_instance_targets_empty_map():
    t = instance_targets(torch.zeros(5, 5, dtype=torch.int32))
    assert t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 5, 5) and t["labels"].numel() == 0


def test_instance_targets_rejects_multichannel():
    with pytest.raises(ValueError):
        instance_targets(torch.zeros(2, 4, 4))


def test_filter_keeps_exactly_instances_above_z():
    masks = torch.zeros(4, 1, 8, 8)
    for i in range(4):
        masks[i, 0, i : i + 2, i : i + 3] = 0.9
    scores = torch.tensor([0.95, 0.5, 0.51, 0.2])
    t = filter_detections({"masks": masks, "scores": scores, "boxes": torch.zeros(4, 4)}, score_threshold=0.5)
    assert t["scores"].tolist() == pytest.approx([0.95, 0.51])
    assert t["boxes"].tolist() == [[0.0, 0.0, 3.0, 2.0], [2.0, 2.0, 5.0, 4.0]]
    assert t["masks"].shape == (2, 8, 8) and t["labels"].tolist() == [1, 1]


def test_filter_drops_empty_masks():
    masks = torch.full((2, 1, 4, 4), 0.1)
    masks[0, 0, 0, 0] = 0.8
    t = filter_detections({"masks": masks, "scores": torch.tensor([0.9, 0.9])})
    assert t["boxes"].tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_augment_paper_values_on_constant_image():
    image = torch.full((1, 3, 9, 9), 0.8)
    out = PseudoLabelAugment()(image)
    # blur and contrast leave a constant image unchanged; brightness subtracts 150/255
    assert torch.allclose(out, torch.full_like(image, 0.8 - 150 / 255), atol=1e-4)  # grey weights sum to 0.9999


def test_augment_each_step_configurable():
    image = torch.zeros(1, 1, 9, 9)
    image[0, 0, 4, 4] = 1.0
    blurred = PseudoLabelAugment(blur_sigma=1.0, contrast=None, brightness=None)(image)
    assert blurred[0, 0, 4, 4] < 1.0 and blurred[0, 0, 4, 5] > 0 and blurred.sum() == pytest.approx(1.0, rel=1e-4)
    ramp = torch.tensor([0.2, 0.4, 0.6]).view(1, 1, 1, 3)
    contrasted = PseudoLabelAugment(blur_sigma=None, contrast=1.5, brightness=None)(ramp)
    assert contrasted.flatten().tolist() == pytest.approx([0.1, 0.4, 0.7], abs=1e-6)
    identity = PseudoLabelAugment(blur_sigma=None, contrast=None, brightness=None)(ramp)
    assert torch.equal(identity, ramp)
