"""The CyC-PDAM configs run through ``monai.bundle`` on the tiny built-in 2D sample.

One tiny training run (a module fixture) is shared by the inference/evaluation and resume tests. It trains
on the sample without its "validation" list, so the PDAM stage selects its detector without labels.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run, verify_metadata

from monai_uda.benchmark.presets import BENCHMARK_PRESETS
from monai_uda.data.datalist import export_split, load_datalist, write_datalist
from monai_uda.data.io import read_array, read_label, write_array
from monai_uda.engines import AtomicCheckpointSaver
from monai_uda.shipping import ship_weights

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "cyc_pdam" / "configs"
META = str(CONFIGS / "metadata.json")
SCHEMA = REPO.parent / "shared" / "monai_schema" / "meta_schema_20240725.json"

TINY = {
    "patch": [64, 64],
    "cyclegan_width": 4,
    "cyclegan_blocks": 1,
    "cyclegan_disc_widths": [8, 16],
    "backbone": "resnet50",
    "instance_proposals": 8,
    "detector_kwargs": {"rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50, "box_batch_size_per_image": 32},
    "ckpt_interval": 1,
    "val_handler#network#score_threshold": 0.99,  # validation: the untrained detector's weak masks stay out
    "selection_handler#network#score_threshold": 0.99,  # the same for label-free selection,
    "selection_crop": [64, 64],  # of one tile per image and view
}
TINY_INFERENCE = {
    "backbone": "resnet50",
    "patch": [128, 128],
    "tile_overlap": 32,
    "score_threshold": 0.0,
    "detections_per_tile": 5,
    "detector_kwargs": {"rpn_pre_nms_top_n_test": 30, "rpn_post_nms_top_n_test": 10},
}


def _cfg(*names: str) -> list[str]:
    return [str(CONFIGS / n) for n in names]


def _train(dataset_dir: Path, output_dir: Path, **overrides) -> None:
    run(
        "training", config_file=_cfg("train.yaml"), meta_file=META, dataset_dir=str(dataset_dir),
        output_dir=str(output_dir), **TINY, **overrides,
    )


def _checkpoints(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*checkpoint*.pt")}


@pytest.fixture(scope="module")
def unlabelled(sample_2d, tmp_path_factory) -> Path:
    """The sample without its "validation" list: a new target domain without labels."""
    items = {k: v for k, v in load_datalist(sample_2d).items() if k != "validation"}
    return write_datalist(tmp_path_factory.mktemp("no_validation"), items).parent


@pytest.fixture(scope="module")
def trained(unlabelled, tmp_path_factory) -> Path:
    """CycleGAN -> synthesis + inpainting -> PDAM, one iteration each, a checkpoint and a scoring after it."""
    out = tmp_path_factory.mktemp("cyc_pdam") / "train"
    _train(unlabelled, out, max_iterations=1)
    return out


def test_pipeline_writes_both_stages_and_the_synthesized_dataset(trained, sample_2d):
    cyclegan = torch.load(trained / "cyclegan" / "model.pt", weights_only=True)
    assert set(cyclegan) == {"generator_s2t", "generator_t2s", "discriminator_t", "discriminator_s"}
    synthesized = load_datalist(trained / "synthesized")
    source = load_datalist(sample_2d)["source"]
    assert len(synthesized["source"]) == len(source)
    assert np.array_equal(read_label(synthesized["source"][0]["label"]), read_label(source[0]["label"]))
    image, _ = read_array(synthesized["source"][0]["image"])
    assert image.dtype == np.uint8 and image.shape[-1] == 3  # target-style RGB
    pdam = torch.load(trained / "pdam" / "model.pt", weights_only=True)
    assert set(pdam) == {"detector", "network_config"}
    assert any(k.startswith("entropy_discriminator.") for k in pdam["detector"])
    assert pdam["network_config"]["backbone"] == TINY["backbone"] and pdam["network_config"]["variant"] == "pdam"
    assert len(_checkpoints(trained / "cyclegan")) == 1 and len(_checkpoints(trained / "pdam")) == 1
    # no validation list: the PDAM stage scored its detector on target images without labels
    # (val_interval = ckpt_interval = 1); the untrained detector finds nothing above 0.99: background
    # agrees everywhere (Dice 1), foreground is absent (0), so the both-class agreement is 0.5
    (entry,) = json.loads((trained / "pdam" / "selection.json").read_text())
    assert entry["seconds"] > 0 and {k: entry[k] for k in ("iteration", "score", "foreground")} == {
        "iteration": 1, "score": 0.5, "foreground": 0.0}
    best = torch.load(trained / "pdam" / "model_best.pt", weights_only=True)
    assert set(best) == {"detector"} and set(best["detector"]) == set(pdam["detector"])


def test_inference_and_evaluate(trained, sample_2d, tmp_path):
    images, labels = export_split(sample_2d / "datalist.json", "test", tmp_path / "test")
    pred = tmp_path / "pred"
    # the documented CPU-preset merge (same network settings as training); the tiny run's own sizes override it
    run(
        "inference", config_file=_cfg("inference.yaml", "train_cpu.yaml"), meta_file=META, input_dir=str(images),
        output_dir=str(pred), ckpt_path=str(trained / "pdam" / "model.pt"), **TINY_INFERENCE,
    )
    stems = [p.name.split(".")[0] for p in images.iterdir()]
    assert stems and all((pred / f"{s}_instances.tif").is_file() for s in stems)
    instances, _ = read_array(pred / f"{stems[0]}_instances.tif")
    mask, _ = read_array(pred / f"{stems[0]}_mask.png")
    assert np.array_equal(mask > 0, instances > 0)

    metrics = tmp_path / "metrics.json"
    run(
        "evaluate", config_file=_cfg("evaluate.yaml"), meta_file=META, pred_dir=str(pred), gt_dir=str(labels),
        out=str(metrics),
    )
    result = json.loads(metrics.read_text())["mean"]
    assert {"aji", "aji_plus", "pq", "object_f1", "dice"} <= set(result)
    assert all(0.0 <= result[k] <= 1.0 for k in ("aji", "aji_plus", "pq", "object_f1", "dice"))


def test_shipped_detector_holds_the_mask_rcnn_only_and_segments_alike(trained, sample_2d, tmp_path):
    """models/model.pt drops the semantic branch and discriminators; its detections are the training model's."""
    trained_model = trained / "pdam" / "model.pt"
    shipped_path = ship_weights("cyc_pdam", trained_model, bundle_dir=tmp_path / "bundle")
    full, shipped = (torch.load(f, weights_only=True)["detector"] for f in (trained_model, shipped_path))
    assert set(shipped) == {k for k in full if k.startswith("detector.")} and len(shipped) < len(full)
    assert any(k.startswith("instance_discriminator.") for k in full)
    images, _ = export_split(sample_2d / "datalist.json", "test", tmp_path / "test")
    found = []
    for ckpt in (trained_model, shipped_path):
        pred = tmp_path / ckpt.parent.name
        run("inference", config_file=_cfg("inference.yaml"), meta_file=META, input_dir=str(images),
            output_dir=str(pred), ckpt_path=str(ckpt), **TINY_INFERENCE)
        found.append([read_array(f)[0] for f in sorted(pred.glob("*_instances.tif"))])
    assert found[0] and len(found[1]) == len(found[0]) and any(instances.max() > 0 for instances in found[0])
    for training, from_shipped in zip(*found):
        np.testing.assert_array_equal(from_shipped, training)


def test_resume_skips_the_finished_cyclegan_and_continues_pdam(trained, unlabelled, tmp_path):
    out = tmp_path / "train"
    shutil.copytree(trained, out)
    (out / "pdam" / "model.pt").unlink()  # interrupted after the PDAM checkpoint of iteration 1
    finished = {p: p.stat().st_mtime_ns for p in (out / "cyclegan" / "model.pt", out / "synthesized" / "datalist.json")}
    cyclegan_checkpoints, pdam_checkpoints = _checkpoints(out / "cyclegan"), _checkpoints(out / "pdam")

    _train(unlabelled, out, max_iterations=2, resume=True)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # stage 1 and synthesis not redone
    assert _checkpoints(out / "cyclegan") == cyclegan_checkpoints
    after = _checkpoints(out / "pdam")
    assert {k: after[k] for k in pdam_checkpoints} == pdam_checkpoints  # iteration 1 not run again
    (newest,) = set(after) - set(pdam_checkpoints)
    assert torch.load(out / "pdam" / newest, weights_only=True)["trainer"]["iteration"] == 2
    assert (out / "pdam" / "model.pt").is_file()
    scores = json.loads((out / "pdam" / "selection.json").read_text())
    assert [e["iteration"] for e in scores] == [1, 2]  # the scoring before the interruption kept


def test_resume_plan_of_an_unfinished_cyclegan(trained, unlabelled, tmp_path):
    out = tmp_path / "train"
    shutil.copytree(trained, out, ignore=shutil.ignore_patterns("pdam"))
    (out / "cyclegan" / "model.pt").unlink()
    parser = ConfigParser()
    parser.read_config(_cfg("train.yaml"))
    parser.update({"dataset_dir": str(unlabelled), "output_dir": str(out), "resume": True, "max_iterations": 2, **TINY})
    cyclegan = parser.get_parsed_content("cyclegan_stage")
    assert not cyclegan.finished and cyclegan.checkpoint is not None  # the CycleGAN continues
    assert not parser.get_parsed_content("synthesis_done")  # translated again by the continued CycleGAN
    loader = cyclegan.resume_loader()
    assert Path(loader.load_path).name in _checkpoints(out / "cyclegan")
    pdam = parser.get_parsed_content("pdam_stage")
    assert not pdam.finished and pdam.checkpoint is None  # PDAM has not begun: it starts afresh


def test_multi_gpu_config_disables_rank_local_outputs_and_waits_for_synthesis():
    parser = ConfigParser()
    parser.read_config(_cfg("train.yaml", "multi_gpu_train.yaml"))
    for stage in ("cyclegan", "pdam"):
        assert parser[f"{stage}_outputs"]["main_process"] == "@is_main"  # by name, not by list position
        assert parser[f"{stage}_stage"]["resume"] == "@resume"  # every rank resumes (the stage's loader)
    assert parser["run"] == ["@run_cyclegan", "@run_synthesis", "$torch.distributed.barrier()", "@run_pdam"]
    assert parser["write_synthesis"] == "$@is_main and not @synthesis_done"


def test_cpu_preset_matches_the_benchmark_preset_and_caps_each_stage():
    parser = ConfigParser()
    parser.read_config(_cfg("train.yaml", "train_cpu.yaml"))
    preset = BENCHMARK_PRESETS["cyc_pdam"]["cpu"]
    detector = dict(preset["detector"])
    assert parser["patch"] == [preset["size"]] * 2 == [detector.pop("min_size"), detector.pop("max_size")]
    assert (parser["backbone"], parser["norm"], parser["instance_proposals"]) == (
        detector.pop("backbone"),
        detector.pop("norm"),
        detector.pop("instance_proposals"),
    )
    assert parser["detector_kwargs"] == detector
    iterations = (parser.get_parsed_content("cyclegan_iterations"), parser.get_parsed_content("pdam_iterations"))
    assert iterations == (1000, 500)
    parser.update({"max_iterations": 3})
    parser.parse(reset=True)
    assert (parser.get_parsed_content("cyclegan_iterations"), parser.get_parsed_content("pdam_iterations")) == (3, 3)


def _volumes(folder: Path) -> Path:
    """Two labelled source volumes (bright nuclei) and two target volumes (dark nuclei), 8 x 32 x 32, as TIFF stacks."""
    rng = np.random.default_rng(0)
    _, yy, xx = np.mgrid[:8, :32, :32]
    items: dict[str, list[dict[str, str]]] = {"source": [], "target": []}
    for index in range(4):
        label = np.zeros((8, 32, 32), np.uint16)
        for nucleus, (y, x) in enumerate(rng.integers(7, 25, size=(3, 2)), start=1):  # through every slice
            label[((yy - y) ** 2 + (xx - x) ** 2 <= 16) & (label == 0)] = nucleus
        nuclei = (label > 0) * 0.7 + rng.uniform(0.0, 0.1, label.shape)
        domain = "source" if index < 2 else "target"
        image = nuclei + 0.1 if domain == "source" else 0.9 - nuclei
        write_array(folder / f"{domain}{index}.tif", np.rint(image * 255).astype(np.uint8))
        items[domain].append({"image": f"{domain}{index}.tif"})
        if domain == "source":
            write_array(folder / f"{domain}{index}_label.tif", label)
            items[domain][-1]["label"] = f"{domain}{index}_label.tif"
    write_datalist(folder, items)
    return folder


def test_train_3d_cyclegan_feeds_the_slice_wise_detector(tmp_path):
    data, out = _volumes(tmp_path / "data"), tmp_path / "train"
    overrides = {**TINY, "patch": [32, 32], "cyclegan_patch": [8, 32, 32], "target_invert": True,
                 "backbone": "resnet18"}
    run("training", config_file=_cfg("train.yaml", "train_3d.yaml"), meta_file=META, dataset_dir=str(data),
        output_dir=str(out), max_iterations=2, **overrides)

    parser = ConfigParser()
    parser.read_config(_cfg("train.yaml", "train_3d.yaml"))
    parser.update({"dataset_dir": str(data), "output_dir": str(out), **overrides})
    cyclegan = parser.get_parsed_content("cyclegan")
    assert cyclegan.generator_s2t.spatial_dims == 3  # the CycleGAN trained in 3D
    for name, weights in torch.load(out / "cyclegan" / "model.pt", weights_only=True).items():
        getattr(cyclegan, name).load_state_dict(weights)
    synthesized = load_datalist(out / "synthesized")["source"]
    assert len(synthesized) == 2
    volume, _ = read_array(synthesized[0]["image"])
    assert volume.shape == (8, 32, 32) and volume.dtype == np.uint8  # a target-style volume
    assert np.array_equal(read_label(synthesized[0]["label"]), read_label(data / "source0_label.tif"))
    detector = parser.get_parsed_content("pdam_network")
    detector.load_state_dict(torch.load(out / "pdam" / "model.pt", weights_only=True)["detector"])
    item = parser.get_parsed_content("pdam_dataset")[0]
    assert item["source_image"].shape == (1, 32, 32) and item["target_image"].shape == (1, 32, 32)  # slices
    checkpoint = torch.load(next((out / "pdam").glob("*checkpoint*.pt")), weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 2
    inference = ConfigParser()  # the documented 3D inference merge builds the trained detector
    inference.read_config(_cfg("inference.yaml", "train_3d.yaml"))
    inference.update({k: overrides[k] for k in ("patch", "backbone", "detector_kwargs", "target_invert")})
    inference["ckpt_path"] = str(out / "pdam" / "model.pt")  # its records, as --ckpt_path gives them
    assert (inference.get_parsed_content("spatial_dims"), inference.get_parsed_content("channels")) == (3, 1)
    inference.get_parsed_content("network_def").load_state_dict(detector.state_dict())


def test_both_stages_write_checkpoints_atomically(sample_2d, tmp_path):
    parser = ConfigParser()
    parser.read_config(_cfg("train.yaml"))
    # no run folder claimed; PDAM's loader reads the sample instead of a synthesized dataset
    parser.update({"dataset_dir": str(sample_2d), "output_dir": str(tmp_path), "run_folder": None,
                   "pdam_dataset": "@cyclegan_dataset", **TINY})
    for stage in ("cyclegan", "pdam"):
        assert "atomic" not in parser[f"{stage}_outputs"]
        saver = parser.get_parsed_content(f"{stage}_outputs")[0]
        assert type(saver) is AtomicCheckpointSaver, stage
        assert saver._interval_checkpoint.save_handler._atomic


@pytest.mark.parametrize("variant", ["wo_sem", "cycada"])
def test_ablation_variants_configure_the_detector(variant):
    parser = ConfigParser()
    parser.read_config(_cfg("train.yaml"))
    parser.update({"variant": variant, **TINY})
    method = parser.get_parsed_content("pdam")
    assert method.detector.semantic_head is None
    assert method.reweight is (variant != "cycada")


def test_metadata_verifies():
    if not SCHEMA.is_file():
        pytest.skip("bundle schema not found beside the checkout")
    verify_metadata(meta_file=META, filepath=str(SCHEMA))  # raises on a schema violation
