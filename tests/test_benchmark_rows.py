"""The benchmark's close-domain split and its Mask R-CNN rows' start from the source-only detector (no training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_uda import benchmark
from monai_uda.benchmark import runner, settings
from monai_uda.benchmark.recipes import MASK_RCNN_SOURCE_ONLY, ROWS, with_start_rows
from monai_uda.benchmark.splits import nuclei_intensity, split_by_intensity
from monai_uda.data.io import write_array
from monai_uda.errors import UDAInputError

#: nuclei grey values (8-bit) of the nine images of the split test, in file order
NUCLEI = (90, 20, 70, 10, 50, 80, 30, 60, 40)


def _image(folder, name, image, label):
    paths = {"image": folder / f"{name}.tif", "label": folder / f"{name}_label.tif"}
    write_array(paths["image"], image)
    write_array(paths["label"], label)
    return {key: str(path) for key, path in paths.items()}


@pytest.fixture
def nine_images(tmp_path):
    """Nine 8x8 8-bit images, background 5, one 4x4 nucleus of grey value ``NUCLEI[i]``."""
    label = np.zeros((8, 8), np.uint16)
    label[2:6, 2:6] = 1
    return [_image(tmp_path, f"im{i}", np.where(label > 0, v, 5).astype(np.uint8), label) for i, v in enumerate(NUCLEI)]


def test_nuclei_intensity_is_the_mean_nucleus_grey_value_on_a_0_1_scale(tmp_path):
    label = np.zeros((6, 6), np.uint16)
    label[1:3, 1:3], label[4:6, 4:6] = 1, 2
    grey = np.where(label == 1, 100, np.where(label == 2, 50, 200)).astype(np.uint8)  # bright background ignored
    assert nuclei_intensity(_image(tmp_path, "grey", grey, label)) == pytest.approx(75 / 255)
    rgb = np.stack([grey, grey // 2, np.zeros_like(grey)], -1)  # channel mean of a nucleus: 1/2 of its red
    assert nuclei_intensity(_image(tmp_path, "rgb", rgb, label)) == pytest.approx(37.5 / 255)
    deep = (label > 0).astype(np.uint16) * 13107  # 16-bit: 13107 / 65535 = 0.2
    assert nuclei_intensity(_image(tmp_path, "deep", deep, label)) == pytest.approx(0.2)


def test_intensity_split_is_deterministic_disjoint_and_separates_dim_from_bright(nine_images):
    split, threshold = split_by_intensity(nine_images, test_fraction=0.2, seed=0)
    again, _ = split_by_intensity(list(reversed(nine_images)), test_fraction=0.2, seed=0)
    stems = {key: [item["image"].rsplit("/", 1)[-1] for item in items] for key, items in split.items()}
    # the 4 dimmest (10, 20, 30, 40) are the source, in file order; 1 of the 5 bright ones (20%) is held out
    assert stems["source"] == ["im1.tif", "im3.tif", "im6.tif", "im8.tif"] and threshold == pytest.approx(40 / 255)
    assert len(split["test"]) == 1 and len(split["target"]) == 4
    assert sorted(sum(stems.values(), [])) == sorted(f"im{i}.tif" for i in range(9))  # disjoint and complete
    assert {k: sorted(i["image"] for i in v) for k, v in again.items()} == {
        k: sorted(i["image"] for i in v) for k, v in split.items()
    }  # the input order does not matter
    values = {key: [nuclei_intensity(item) for item in items] for key, items in split.items()}
    assert max(values["source"]) < min(values["target"] + values["test"])
    other, _ = split_by_intensity(nine_images, test_fraction=0.2, seed=1)
    assert other["source"] == split["source"]  # the seed only picks the held-out bright images
    with pytest.raises(UDAInputError, match="at least 3"):
        split_by_intensity(nine_images[:2])


def test_close_domain_setting_is_registered_with_the_source_only_detector():
    setting = settings.SETTINGS["dsb2018_dim->dsb2018_bright"]
    assert {"source_only", "cellseg_uda", "target_only", MASK_RCNN_SOURCE_ONLY, "cyc_pdam", "darcnn"} <= set(
        setting.rows
    )
    assert MASK_RCNN_SOURCE_ONLY in settings.SETTINGS["dsb2018_fluo->monuseg"].rows


def test_start_rows_go_first_once_and_not_from_scratch():
    assert with_start_rows(["cyc_pdam", "darcnn_stage1", "darcnn"]) == [
        MASK_RCNN_SOURCE_ONLY, "cyc_pdam", "darcnn_stage1", "darcnn"
    ]
    assert with_start_rows(["darcnn", MASK_RCNN_SOURCE_ONLY]) == [MASK_RCNN_SOURCE_ONLY, "darcnn"]
    assert with_start_rows(["cyc_pdam", "darcnn"], from_scratch=True) == ["cyc_pdam", "darcnn"]
    assert with_start_rows(["source_only", "ad_gan"]) == ["source_only", "ad_gan"]
    mask_rcnn_rows = [r.name for r in ROWS.values() if r.bundle in ("cyc_pdam", "darcnn")]
    assert [r for r in mask_rcnn_rows if ROWS[r].start is None] == [MASK_RCNN_SOURCE_ONLY]


def _fake_run(specs):
    """A ``_run_one`` that trains nothing: records the spec; the donor cost 100 s / 50 iterations, the others 10 / 2."""

    def run(row, spec, sig, out, budget_minutes, row_timeout_minutes, seed=None):
        specs[row.name if seed is None else f"{row.name}/seed{seed}"] = spec
        donor = row.name == MASK_RCNN_SOURCE_ONLY
        metrics = dict.fromkeys(("aji", "aji_plus", "pq", "object_f1", "dice"), 0.5)
        return {"setting": spec["setting"], "row": row.name, "bundle": row.bundle, "status": "ok",
                "budget_minutes": budget_minutes, "signature": sig, **metrics,
                "train_seconds": 100.0 if donor else 10.0, "iterations": 50 if donor else 2}

    return run


@pytest.mark.parametrize("preset", ["cpu", None])
def test_mask_rcnn_rows_start_from_the_shared_source_only_detector(tmp_path, sample_2d, monkeypatch, preset):
    specs: dict = {}
    monkeypatch.setattr(runner, "_run_one", _fake_run(specs))
    datalist = str(sample_2d / "datalist.json")
    rows = (MASK_RCNN_SOURCE_ONLY, "cyc_pdam", "darcnn_stage1")
    prepare = settings.datalist_setting("user", datalist).prepare  # the sample's test split, exported
    monkeypatch.setitem(settings.SETTINGS, "mini_rows", settings.Setting("mini_rows", "sample", rows, prepare))
    out = tmp_path / "bench"
    summary = benchmark.run_benchmark("mini_rows", "cyc_pdam,darcnn_stage1", 1, out, preset=preset)
    assert summary["ran"] == [MASK_RCNN_SOURCE_ONLY, "cyc_pdam", "darcnn_stage1"]
    weights = str(out.resolve() / "runs" / MASK_RCNN_SOURCE_ONLY / "train" / "pdam" / "model.pt")
    source_only = specs[MASK_RCNN_SOURCE_ONLY]["overrides"]
    assert source_only["variant"] == "source_only" and "weights_path" not in source_only
    backbone = "resnet18" if preset == "cpu" else "resnet50"
    for name in ("cyc_pdam", "darcnn_stage1"):
        overrides = specs[name]["overrides"]
        assert overrides["weights_path"] == weights and overrides["backbone"] == source_only["backbone"] == backbone
    records = {r["row"]: r for r in summary["results"]}
    cyc_pdam, donor = records["cyc_pdam"], records[MASK_RCNN_SOURCE_ONLY]
    assert float(cyc_pdam["train_seconds"]) == 110.0 and int(cyc_pdam["iterations"]) == 52  # the donor's cost too
    assert float(donor["train_seconds"]) == 100.0  # and its own row shows it

    specs.clear()
    scratch = benchmark.run_benchmark("mini_rows", "cyc_pdam,darcnn_stage1", 1, out, preset=preset, from_scratch=True)
    assert scratch["ran"] == ["cyc_pdam", "darcnn_stage1"]  # different configuration: both run again
    assert all("weights_path" not in spec["overrides"] for spec in specs.values())
    assert float({r["row"]: r for r in scratch["results"]}["cyc_pdam"]["train_seconds"]) == 10.0

    specs.clear()  # with --seeds every seed's run starts from the source-only detector of the same seed
    seeded = benchmark.run_benchmark("mini_rows", "darcnn_stage1", 1, tmp_path / "seeds", preset=preset, seeds=[0, 1])
    assert seeded["ran"] == [f"{row}/seed{k}" for row in (MASK_RCNN_SOURCE_ONLY, "darcnn_stage1") for k in (0, 1)]
    assert specs["darcnn_stage1/seed1"]["overrides"]["weights_path"].endswith(
        f"runs/{MASK_RCNN_SOURCE_ONLY}/seed1/train/pdam/model.pt"
    )


def test_from_scratch_must_be_a_boolean(tmp_path):
    with pytest.raises(UDAInputError, match="--from_scratch: expected true or false"):
        benchmark.main(from_scratch="maybe", out=str(tmp_path))


def test_source_only_detector_loads_as_the_start_of_both_methods(tmp_path, tiny_rcnn):
    from monai_uda.methods.cyc_pdam import PDAM_VARIANTS, PDAMStage
    from monai_uda.networks.domain_separation import DomainSeparationMaskRCNN
    from monai_uda.networks.mask_rcnn import build_mask_rcnn
    from monai_uda.networks.pdam import PDAMDetector

    torch.manual_seed(0)
    build = {"backbone": "resnet18", "in_channels": 1, **tiny_rcnn}
    net = PDAMDetector(build_mask_rcnn(**build), **PDAM_VARIANTS["source_only"]["detector"])
    assert all(key.startswith("detector.") for key in net.state_dict())  # a plain Mask R-CNN inside
    # one step: the detection losses only, no target pass
    calls = []
    run_domain = net.run_domain
    net.run_domain = lambda images, targets=None: calls.append(targets is not None) or run_domain(images, targets)
    label = torch.zeros(1, 1, 64, 64, dtype=torch.int64)
    label[0, 0, 10:24, 10:24], label[0, 0, 40:56, 30:46] = 1, 2
    batch = {"source_image": (label > 0).float() * 0.8 + 0.1, "source_label": label,
             "target_image": torch.rand(1, 1, 64, 64)}
    out = PDAMStage(net, warmup_iterations=0).step(None, batch)
    assert calls == [True] and out["da_image"] == out["da_semantic"] == out["da_instance"] == 0.0
    path = tmp_path / "model.pt"
    torch.save({"detector": net.state_dict()}, path)  # the layout of pdam/model.pt

    start = build_mask_rcnn(**build, weights_path=path)
    trained = net.detector.state_dict()
    assert all(torch.equal(value, trained[key]) for key, value in start.state_dict().items())
    darcnn = DomainSeparationMaskRCNN(build_mask_rcnn(**build, weights_path=path))
    conv1 = trained["backbone.body.conv1.weight"]
    assert torch.equal(darcnn.shared_encoder.body.conv1.weight, conv1)
    assert torch.equal(darcnn.private_encoders["target"].body.conv1.weight, conv1)


def test_source_only_config_trains_the_plain_detector_on_the_source_images(sample_2d, tmp_path):
    from monai.bundle import ConfigParser

    from monai_uda.benchmark.row import CONFIGS
    from monai_uda.bundle_runner import config_files
    from monai_uda.data.datalist import get_split, load_datalist
    from monai_uda.engines.budget import TimeBudget

    row = ROWS[MASK_RCNN_SOURCE_ONLY]
    parser = ConfigParser()
    parser.read_config([*config_files("cyc_pdam", "training", 2, "cpu"), str(CONFIGS / row.budget_config)])
    parser.update({**row.overrides, "backbone": "resnet18", "dataset_dir": str(sample_2d), "output_dir": str(tmp_path),
                   "budget_seconds": 60.0})
    assert parser["run"] == ["@run_pdam"]  # no CycleGAN, no synthesis
    detector = parser.get_parsed_content("pdam").detector
    assert (detector.image_discriminator, detector.semantic_head, detector.instance_discriminator) == (None,) * 3
    source = get_split(load_datalist(sample_2d / "datalist.json"), "source", require_labels=True)
    assert parser["pdam_dataset"]["source"] == "@source_items"  # the images themselves, not the synthesized ones
    assert parser["source_transform"]["invert"] == "@source_invert"  # brought to the target's polarity
    assert [item["image"] for item in parser.get_parsed_content("source_items")] == [item["image"] for item in source]
    assert len(parser.get_parsed_content("pdam_dataset").source) == len(source)
    budget = parser.get_parsed_content("pdam_handlers")[-1]
    assert isinstance(budget, TimeBudget) and budget.max_seconds == 60.0
