"""What ``monai-uda benchmark`` runs: the method rows and the dataset settings (recipes).

A :class:`Row` is one method configuration: a bundle and the config overrides that select the
paper's variant. A :class:`Setting` is one dataset recipe: it prepares (once, into a cache
folder) a datalist with ``source``/``target``/``test`` splits and the folders of labelled
evaluation images, and says which rows make sense on it. Every row of a setting trains on the
same datalist with the same seed and is scored on the same evaluation images
(:func:`prepare_setting` prepares a setting once per output folder).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_uda.errors import UDAInputError
from monai_uda.files import write_text

__all__ = [
    "ROWS",
    "SETTINGS",
    "CPU_OVERRIDES",
    "MASK_RCNN_BACKBONE",
    "Prepared",
    "Row",
    "Setting",
    "SharedStage",
    "StartWeights",
    "datalist_setting",
    "prepare_setting",
    "shared_data_dir",
    "start_overrides",
    "with_start_rows",
]


@dataclass(frozen=True)
class SharedStage:
    """A first training stage that a row takes from another row of the same benchmark run.

    Ablation rows that differ only in a later stage (CyC-PDAM's detector variants after one
    CycleGAN, DARCNN's stage 2 after one stage 1) reuse the finished stage instead of training
    it again: its outputs are hard-linked into the row's training folder, which then runs with
    ``resume: true`` (the bundles skip a stage whose ``model.pt`` exists). The row's
    ``train_seconds`` and ``iterations`` include the shared stage's, so the table still shows
    what the whole pipeline cost. Without a finished donor row the row trains every stage itself.

    Attributes:
        row: the donor row.
        paths: files/folders under the donor's training output folder that make up the stage.
        trainers: config keys of the trainers that ran the stage (their iterations and seconds count).
        with_untimed_work: the donor's training time outside its trainers (config parsing, the
            CycleGAN synthesis between the stages) belongs to the stage and counts too.
    """

    row: str
    paths: tuple[str, ...]
    trainers: tuple[str, ...]
    with_untimed_work: bool = True


@dataclass(frozen=True)
class StartWeights:
    """Trained weights a row starts from instead of random ones: the model of another row of the run.

    The papers' Mask R-CNN methods start from pretrained detectors; here the start is a detector
    trained on the labelled source alone (row ``mask_rcnn_source_only``). The donor row runs once
    per benchmark output folder, before the first row that starts from it
    (:func:`with_start_rows`), and every such row gets its model file as the config key ``key``
    (:func:`start_overrides`); ``--from_scratch`` keeps the random start. The row's
    ``train_seconds`` and ``iterations`` include the donor's, as for a :class:`SharedStage`.

    Attributes:
        row: the donor row.
        path: its model file, relative to its training output folder.
        key: the config key of the bundles taking the file (``weights_path``).
    """

    row: str
    path: str
    key: str = "weights_path"


@dataclass(frozen=True)
class Row:
    """One method configuration of the benchmark table.

    Attributes:
        name: the row's name on the command line (``--rows``).
        bundle: bundle folder under ``bundles/``.
        description: what the row is, for ``--help`` and ``results.md``.
        overrides: config overrides of the bundle selecting this variant (passed to training
            and inference alike, so network switches reach both).
        target_labels: the row trains on labelled target images (SSDA, target-trained bound).
        model_file: the trained model, relative to the training output folder.
        budget_config: file of the benchmark's ``configs/`` that adds the time budget to the bundle's
            trainer(s) (``time_budget.yaml`` appends to ``train_handlers``).
        shared: the first stage this row takes from another row, if that row has finished.
        start: the trained weights this row starts from unless ``--from_scratch``.
    """

    name: str
    bundle: str
    description: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    target_labels: bool = False
    model_file: str = "model.pt"
    budget_config: str = "time_budget.yaml"
    shared: SharedStage | None = None
    start: StartWeights | None = None


_CYCLEGAN = SharedStage("cyc_pdam", ("cyclegan", "synthesized"), ("cyclegan_trainer",))
_DARCNN_STAGE1 = SharedStage("darcnn_stage1", ("stage1",), ("stage1_trainer",))
#: the row both Mask R-CNN methods start from (its PDAM checkpoint holds a plain Mask R-CNN as ``detector``)
MASK_RCNN_SOURCE_ONLY = "mask_rcnn_source_only"
_SOURCE_DETECTOR = StartWeights(MASK_RCNN_SOURCE_ONLY, "pdam/model.pt")
_CELLSEG = "CellSegUDA (Haq & Huang, MIDL 2020)"
#: the DARCNN bundle's variant beside its paper form (bundles/darcnn/docs/README.md, "Departures from the paper")
_DARCNN_OURS = {"l_target_features": "fused", "projection_dim": 64, "projection_training": "adversarial",
                "target_head_momentum": 0.99, "target_encoder_momentum": 0.9}
_ADGAN = "AD-GAN (Yao et al.): masks only, no labels"
_DARCNN_BUDGET = "time_budget_darcnn.yaml"
ROWS: dict[str, Row] = {
    row.name: row
    for row in (
        Row("source_only", "cellseg_uda", "U-Net trained on labelled source images only (lower bound)",
            {"mode": "source_only"}),
        Row("target_only", "cellseg_uda", "U-Net trained on labelled target images (upper bound)",
            {"mode": "target_only"}, True),
        Row("cellseg_uda", "cellseg_uda", f"{_CELLSEG}: Dice + adversarial + reconstruction (eq 4)", {"mode": "uda"}),
        Row("cellseg_uda_no_recons", "cellseg_uda", f"{_CELLSEG} without reconstruction (DA-ADV-style)",
            {"mode": "no_recons"}),
        Row("cellseg_ssda_10", "cellseg_uda", "CellSegSSDA, 10% of target images labelled (eq 6)",
            {"mode": "ssda", "target_label_fraction": 0.1}, True),
        Row("cellseg_ssda_50", "cellseg_uda", "CellSegSSDA, 50% of target images labelled (eq 6)",
            {"mode": "ssda", "target_label_fraction": 0.5}, True),
        Row("ad_gan", "ad_gan", f"{_ADGAN}, binary translation + watershed", {"ternary": False}),
        Row("ad_gan_ins", "ad_gan", "AD-GAN-INS: ternary (background/edge/interior) translation", {"ternary": True}),
        Row("ad_gan_wo_rec", "ad_gan", "AD-GAN ablation: without the reconstruction loss",
            {"ternary": False, "use_rec": False}),
        Row("ad_gan_wo_ctr", "ad_gan", "AD-GAN ablation: without the content loss",
            {"ternary": False, "use_ctr": False}),
        Row("ad_gan_wo_cyc", "ad_gan", "AD-GAN ablation: without the cycle loss", {"ternary": False, "use_cyc": False}),
        Row("ad_gan_no_encoder_adain", "ad_gan", "AD-GAN ablation: AdaIN in the decoder only",
            {"ternary": False, "encoder_adain": False}),
        Row(MASK_RCNN_SOURCE_ONLY, "cyc_pdam", "Mask R-CNN trained on labelled source images only (no CycleGAN, "
            "no discriminators): the start of the CyC-PDAM and DARCNN rows", {"variant": "source_only"},
            model_file="pdam/model.pt", budget_config="time_budget_mask_rcnn_source_only.yaml"),
        *(
            Row(name, "cyc_pdam", description, overrides, model_file="pdam/model.pt",
                budget_config="time_budget_cyc_pdam.yaml", shared=shared, start=_SOURCE_DETECTOR)
            for name, description, overrides, shared in (
                ("cyc_pdam", "CyC-PDAM (Liu et al., CVPR 2020): CycleGAN + nuclei inpainting + PDAM Mask R-CNN",
                 {"variant": "pdam"}, None),
                ("cyc_pdam_wo_tr", "CyC-PDAM ablation: without task re-weighting", {"variant": "wo_tr"}, _CYCLEGAN),
                ("cyc_pdam_wo_sem", "CyC-PDAM ablation: without the semantic-level discriminator",
                 {"variant": "wo_sem"}, _CYCLEGAN),
                ("cyc_pdam_wo_ni", "CyC-PDAM ablation: without nuclei inpainting",
                 {"variant": "pdam", "inpaint": False},
                 SharedStage("cyc_pdam", ("cyclegan",), ("cyclegan_trainer",), with_untimed_work=False)),
                ("cyc_pdam_cycada", "CyCADA-style baseline: image-level adaptation only", {"variant": "cycada"},
                 _CYCLEGAN),
            )
        ),
        Row("darcnn_stage1", "darcnn", "DARCNN stage 1 alone: domain separation Mask R-CNN (L_sim, L_diff, L_target)",
            {"training": "@run_stage1"}, model_file="stage1/model.pt", budget_config=_DARCNN_BUDGET,
            start=_SOURCE_DETECTOR),
        Row("darcnn_wo_aug", "darcnn", "DARCNN, stage 2 pseudo-labels without augmentation", {"pseudo_augment": False},
            budget_config=_DARCNN_BUDGET, shared=_DARCNN_STAGE1, start=_SOURCE_DETECTOR),
        Row("darcnn", "darcnn", "DARCNN (Hsu et al., CVPR 2021): stage 1 + augmented pseudo-labels (stage 2)", {},
            budget_config=_DARCNN_BUDGET, shared=_DARCNN_STAGE1, start=_SOURCE_DETECTOR),
        Row("darcnn_ours", "darcnn", "DARCNN, our variant: fused-feature L_target, adversarial 64-wide projection, "
            "target branch following the source branch (both stages)", _DARCNN_OURS,
            budget_config=_DARCNN_BUDGET, start=_SOURCE_DETECTOR),
    )
}
"""Every known row; a row is offered only when its bundle exists in ``bundles/``."""

CELLSEG_UNSUPERVISED = ("source_only", "cellseg_uda_no_recons", "cellseg_uda")
CELLSEG_ROWS = (
    "source_only", "target_only", "cellseg_uda", "cellseg_uda_no_recons", "cellseg_ssda_10", "cellseg_ssda_50",
)
AD_GAN_ROWS = ("ad_gan", "ad_gan_ins", "ad_gan_wo_rec", "ad_gan_wo_ctr", "ad_gan_wo_cyc", "ad_gan_no_encoder_adain")
CYC_PDAM_ROWS = ("cyc_pdam", "cyc_pdam_wo_tr", "cyc_pdam_wo_sem", "cyc_pdam_wo_ni", "cyc_pdam_cycada")
DARCNN_ROWS = ("darcnn_stage1", "darcnn_wo_aug", "darcnn", "darcnn_ours")

CPU_OVERRIDES: dict[str, dict[str, Any]] = {
    "cellseg_uda": {"preset_file": "cpu"},
    "ad_gan": {
        "overrides": {
            "gen_widths": [32, 64, 128], "disc_widths": [32, 64, 128, 256], "num_res_blocks": 2,
            "mlp_channels": 128, "batch_size": 2, "patch": [128, 128],
        }
    },
    "cyc_pdam": {
        "overrides": {
            "patch": [128, 128], "cyclegan_width": 32, "cyclegan_blocks": 6, "instance_proposals": 16,
            "detector_kwargs": {"rpn_pre_nms_top_n_train": 500, "rpn_post_nms_top_n_train": 200,
                                "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 50,
                                "box_batch_size_per_image": 64},
        }
    },
    "darcnn": {"preset_file": "cpu"},
}
"""Per bundle, what ``--budget_preset cpu`` (the default) applies in 2D settings: the bundle's
``train_<preset_file>.yaml`` and/or overrides (AD-GAN: the ``cpu`` configuration of
``scripts/bench_train_step.py``; CyC-PDAM: its ``cpu`` detector of :mod:`~monai_uda.benchmark.presets` and a
32-wide, 6-block CycleGAN; DARCNN: its ``train_cpu.yaml``). 3D settings use the bundles' ``train_3d.yaml`` with
the setting's own ``bundle_overrides``. The Mask R-CNN backbone is :data:`MASK_RCNN_BACKBONE`'s."""

MASK_RCNN_BUNDLES = ("cyc_pdam", "darcnn")
MASK_RCNN_BACKBONE: dict[str, str] = {"cpu": "resnet18", "paper": "resnet50"}
"""Per ``--budget_preset``, the one ResNet-FPN backbone of every Mask R-CNN row (CyC-PDAM, DARCNN and the
source-only detector both start from), so that the two methods compare on the same network and can start from
the same weights. ``cpu``: ResNet-18 (BasicBlocks, several times faster per step than ResNet-50 on a CPU);
``paper``: DARCNN's ResNet-50 (CyC-PDAM's paper used ResNet-101). ``--backbone NAME`` overrides it for every row."""


def mask_rcnn_backbone(bundle: str, preset: str | None) -> dict[str, str]:
    """``{"backbone": ...}`` of :data:`MASK_RCNN_BACKBONE` for a Mask R-CNN bundle (``preset`` None: paper)."""
    return {"backbone": MASK_RCNN_BACKBONE[preset or "paper"]} if bundle in MASK_RCNN_BUNDLES else {}


def with_start_rows(names: Sequence[str], from_scratch: bool = False) -> list[str]:
    """``names`` in order, each :class:`StartWeights` donor moved or added before the first row starting from it.

    With ``from_scratch`` no row starts from another's weights and ``names`` stays as given.
    """
    ordered: list[str] = []
    for name in names:
        start = None if from_scratch else ROWS[name].start
        if start is not None and start.row not in ordered:
            ordered.append(start.row)
        if name not in ordered:
            ordered.append(name)
    return ordered


def start_overrides(row: Row, out: Path, from_scratch: bool = False, donor_run: str = "") -> dict[str, str]:
    """The config override that makes ``row`` start from its donor's model in ``out`` (``{}``: random start).

    ``donor_run``: the donor's folder under ``out/runs`` (with ``--seeds``, the run of the same seed; default its name).
    """
    if from_scratch or row.start is None:
        return {}
    return {row.start.key: str(out / "runs" / (donor_run or row.start.row) / "train" / row.start.path)}


@dataclass(frozen=True)
class Prepared:
    """A prepared setting: the training datalist and the labelled evaluation folders.

    Attributes:
        datalist: ``datalist.json`` every row trains on.
        eval_images: folder of evaluation images (inference input).
        eval_labels: folder of their instance labels (same stems).
        overlay_stem: the evaluation image shown in every method's overlay.
        notes: lines describing the data, for ``results.md``.
    """

    datalist: Path
    eval_images: Path
    eval_labels: Path
    overlay_stem: str
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"datalist": str(self.datalist), "eval_images": str(self.eval_images),
                "eval_labels": str(self.eval_labels),
                "overlay_stem": self.overlay_stem, "notes": list(self.notes)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Prepared:
        return cls(Path(data["datalist"]), Path(data["eval_images"]), Path(data["eval_labels"]), data["overlay_stem"],
                   tuple(data.get("notes", ())))


@dataclass(frozen=True)
class Setting:
    """One dataset recipe of the benchmark.

    Attributes:
        name: ``--setting`` name.
        description: one line for ``--help`` and ``results.md``.
        rows: rows that make sense on this data, in table order (the default ``--rows``).
        prepare: ``prepare(cache_dir, data_root) -> Prepared``; runs once per output folder.
        spatial_dims: 2 or 3.
        bundle_overrides: per bundle, overrides of the channel/intensity policy for this data.
    """

    name: str
    description: str
    rows: tuple[str, ...]
    prepare: Callable[[Path, Path], Prepared]
    spatial_dims: int = 2
    bundle_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def shared_data_dir() -> Path:
    """``$MONAI_UDA_SHARED_DATA`` or ``shared/data`` beside the repository checkout."""
    env = os.environ.get("MONAI_UDA_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _require(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise UDAInputError(f"{what} not found (pass --data_root or set MONAI_UDA_SHARED_DATA)", folder)
    return folder


def _items(datalist_path: Path, key: str) -> list[dict[str, Any]]:
    from monai_uda.data.datalist import load_datalist

    return list(load_datalist(datalist_path)[key])


def _finish(cache: Path, datalist: Mapping[str, list[dict[str, Any]]], notes: list[str]) -> Prepared:
    """Write the combined datalist into ``cache`` and export its labelled ``test`` split for evaluation."""
    from monai_uda.data.datalist import export_split, write_datalist
    from monai_uda.data.io import list_images, stem_of

    path = write_datalist(cache, datalist)
    images, labels = export_split(path, "test", cache / "eval")
    return Prepared(path, images, labels, stem_of(list_images(images)[0]), tuple(notes))


def _prepare_dsb_monuseg(cache: Path, data_root: Path) -> Prepared:
    from monai_uda.data.prepare import prepare_folder, prepare_monuseg

    dsb = _require(data_root / "dsb2018_fluo", "DSB2018 fluorescence")
    monuseg = _require(data_root / "monuseg", "MoNuSeg")
    source = _items(prepare_folder(dsb / "images", dsb / "labels", cache / "dsb", split="source", link=True), "source")
    target = _items(prepare_folder(monuseg / "train" / "images", monuseg / "train" / "binary_masks",
                                   cache / "monuseg_train", split="target", link=True), "target")
    view = cache / "monuseg_test_only"  # the converter reads <src>/test; the train tiles come from prepare_folder
    view.mkdir(parents=True, exist_ok=True)
    if not (view / "test").exists():
        (view / "test").symlink_to(_require(monuseg / "test", "MoNuSeg test").resolve(), target_is_directory=True)
    test = _items(prepare_monuseg(view, cache / "monuseg_test"), "test")
    notes = [
        f"source: {len(source)} DSB2018 fluorescence images with instance labels ({dsb})",
        f"target: {len(target)} MoNuSeg 2018 training tiles (H&E, 1000x1000); their binary masks "
        "(touching nuclei merged) are read only by the SSDA and target-trained rows",
        f"evaluation: the {len(test)} MoNuSeg 2018 test tiles, labels rasterised from the Aperio XML polygons",
    ]
    return _finish(cache, {"source": source, "target": target, "test": test}, notes)


def _prepare_synthetic_dsb(cache: Path, data_root: Path, test_fraction: float = 0.1, seed: int = 0) -> Prepared:
    from monai_uda.data.prepare import prepare_folder

    dsb = _require(data_root / "dsb2018_fluo", "DSB2018 fluorescence")
    items = _items(prepare_folder(dsb / "images", dsb / "labels", cache / "dsb", split="source", link=True), "source")
    order = np.random.default_rng(seed).permutation(len(items))
    n_test = max(1, int(round(len(items) * test_fraction)))
    test = [items[i] for i in sorted(order[:n_test])]
    train = [items[i] for i in sorted(order[n_test:])]
    notes = [
        f"AD-GAN rows: synthetic masks (DSB2018 preset) -> {len(train)} DSB2018 fluorescence images, labels unused",
        "target_only: U-Net trained on the same images with their labels (upper bound)",
        f"evaluation: {len(test)} held-out DSB2018 fluorescence images ({test_fraction:.0%}, seed {seed})",
    ]
    return _finish(cache, {"source": train, "target": train, "test": test}, notes)


def _prepare_dsb_dim_bright(cache: Path, data_root: Path, test_fraction: float = 0.2, seed: int = 0) -> Prepared:
    from monai_uda.data.prepare import prepare_folder

    dsb = _require(data_root / "dsb2018_fluo", "DSB2018 fluorescence")
    items = _items(prepare_folder(dsb / "images", dsb / "labels", cache / "dsb", split="source", link=True), "source")
    from monai_uda.benchmark.splits import split_by_intensity

    split, threshold = split_by_intensity(items, test_fraction=test_fraction, seed=seed)
    notes = [
        "split rule: images sorted by the mean grey value of their labelled nuclei (0-1 scale); the dimmer half "
        f"is the source, the brighter half the target (threshold {threshold:.3f})",
        f"source: {len(split['source'])} dim DSB2018 fluorescence images with instance labels ({dsb})",
        f"target: {len(split['target'])} bright DSB2018 fluorescence images; their labels are read only by the "
        "SSDA and target-trained rows",
        f"evaluation: {len(split['test'])} held-out bright images ({test_fraction:.0%} of the bright half, "
        f"seed {seed})",
    ]
    return _finish(cache, split, notes)


def _prepare_sample_3d(cache: Path, data_root: Path) -> Prepared:
    from monai_uda.data.samples import make_sample_dataset, samples_origin

    datalist = make_sample_dataset(cache / "sample_3d", spatial_dims=3)
    data = {key: _items(datalist, key) for key in ("source", "target", "test")}
    notes = [
        f"built-in 3D sample ({samples_origin()}): source volumes with labels, the same nuclei in another appearance "
        "(gamma, inverted, noise) as target and test; scores check the 3D pipeline, not generalisation",
    ]
    return _finish(cache, data, notes)


SETTINGS: dict[str, Setting] = {
    setting.name: setting
    for setting in (
        Setting(
            "dsb2018_fluo->monuseg",
            "DSB2018 fluorescence (labelled) -> MoNuSeg H&E train tiles (unlabelled); "
            "evaluation on the 14 MoNuSeg test tiles",
            CELLSEG_ROWS + AD_GAN_ROWS[:2] + (MASK_RCNN_SOURCE_ONLY,) + CYC_PDAM_ROWS + DARCNN_ROWS,
            _prepare_dsb_monuseg,
            bundle_overrides={
                "cellseg_uda": {"channels": 3, "source_invert": True},
                "ad_gan": {"channels": 1, "target_invert": True},
                # identity loss 0.5 (CycleGAN's colour-preserving option): keeps the inverted (dark) nuclei
                # dark through a short CPU CycleGAN, so that PDAM learns nuclei rather than glass
                "cyc_pdam": {"channels": 3, "source_invert": True, "lambda_identity": 0.5},
                "darcnn": {"channels": 3, "source_invert": True},
            },
        ),
        Setting(
            "synthetic->dsb2018_fluo",
            "synthetic masks -> DSB2018 fluorescence (AD-GAN style); evaluation on a held-out 10% DSB split (seed 0)",
            AD_GAN_ROWS + ("target_only",),
            _prepare_synthetic_dsb,
            bundle_overrides={"cellseg_uda": {"channels": 1}, "ad_gan": {"channels": 1, "preset": "dsb2018_fluo"}},
        ),
        Setting(
            "dsb2018_dim->dsb2018_bright",
            "close domains: DSB2018 fluorescence split by nuclei brightness, dim half (labelled) -> bright half; "
            "evaluation on 20% of the bright half held out (seed 0)",
            CELLSEG_ROWS + AD_GAN_ROWS[:2] + (MASK_RCNN_SOURCE_ONLY, "cyc_pdam", "darcnn_stage1", "darcnn"),
            _prepare_dsb_dim_bright,
            bundle_overrides={bundle: {"channels": 1} for bundle in ("cellseg_uda", "ad_gan", "cyc_pdam", "darcnn")},
        ),
        Setting(
            "sample_3d",
            "built-in 3D nuclei volumes -> the same volumes in another appearance (3D pipeline check)",
            CELLSEG_UNSUPERVISED + AD_GAN_ROWS[:2],
            _prepare_sample_3d,
            spatial_dims=3,
            # AD-GAN at the CPU size of scripts/ad_gan_3d_result.sh: ellipsoids like the sample's nuclei
            # (major semi-axis 6-11 voxels, 5-12 per patch); the target volumes have dark nuclei: inverted
            bundle_overrides={"ad_gan": {
                "gen_widths": [16, 32, 64], "disc_widths": [16, 32, 64], "num_res_blocks": 2, "mlp_channels": 64,
                "patch": [16, 32, 32], "batch_size": 2, "axis_range": [6, 11], "count_range": [5, 12],
                "eccentricity_range": [0.5, 0.9], "target_invert": True,
            }},
        ),
    )
}
"""The built-in settings; ``--datalist PATH`` adds a user recipe (:func:`datalist_setting`)."""


def datalist_setting(name: str, datalist: str | Path, spatial_dims: int = 2) -> Setting:
    """A user recipe from a datalist with ``source`` (labelled), ``target`` and labelled ``test`` lists.

    Rows needing target labels are offered only when every ``target`` item has a ``label``.

    Raises:
        UDAInputError: the datalist cannot be read, or lacks labelled ``source``/``test`` items.
    """
    from monai_uda.data.datalist import get_split, load_datalist

    path = Path(datalist).resolve()
    loaded = load_datalist(path)
    get_split(loaded, "source", require_labels=True)
    get_split(loaded, "test", require_labels=True)
    target = get_split(loaded, "target")
    labelled = all("label" in item for item in target)
    rows = CELLSEG_ROWS if labelled else CELLSEG_UNSUPERVISED
    if spatial_dims == 2:
        rows = rows + AD_GAN_ROWS[:2] + (MASK_RCNN_SOURCE_ONLY,) + DARCNN_ROWS

    def prepare(cache: Path, data_root: Path) -> Prepared:
        from monai_uda.data.datalist import export_split
        from monai_uda.data.io import list_images, stem_of

        images, labels = export_split(loaded.path, "test", cache / "eval")
        return Prepared(loaded.path, images, labels, stem_of(list_images(images)[0]), (f"user datalist {loaded.path}",))

    return Setting(name, f"user recipe: datalist {path}", rows, prepare, spatial_dims)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_." else "-" for c in name.replace("->", "-to-"))


def prepare_setting(setting: Setting, out: Path, data_root: Path) -> Prepared:
    """The setting's data, prepared once into ``out/data/<setting>`` (reused when ``prepared.json`` exists)."""
    cache = out / "data" / _slug(setting.name)
    marker = cache / "prepared.json"
    if marker.is_file():
        return Prepared.from_json(json.loads(marker.read_text(encoding="utf-8")))
    print(f"[benchmark] preparing {setting.name} into {cache}", flush=True)
    prepared = setting.prepare(cache, data_root)
    write_text(marker, json.dumps(prepared.to_json(), indent=2))
    return prepared


def describe() -> str:
    """Settings and rows, as listed by ``--help``."""
    lines = ["Settings (--setting):"]
    lines += [f"  {s.name:<26} {s.description}\n  {'':<26} rows: {','.join(s.rows)}" for s in SETTINGS.values()]
    lines += ["  <any name> --datalist PATH  your own recipe (source, target, test lists)", "Rows (--rows):"]
    lines += [f"  {r.name:<26} [{r.bundle}] {r.description}" for r in ROWS.values()]
    return "\n".join(lines)


def signature(data: Mapping[str, Any]) -> str:
    """Stable text of a row's configuration, to tell whether a finished row can be skipped."""
    return json.dumps(data, sort_keys=True, default=str)
