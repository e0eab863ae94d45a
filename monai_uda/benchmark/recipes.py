"""What ``monai-uda benchmark`` runs: the method rows (recipes).

A :class:`Row` is one method configuration: a bundle and the config overrides that select the
paper's variant, the stages it shares with other rows (:class:`SharedStage`) and the weights it
starts from (:class:`StartWeights`). The dataset recipes the rows run on are
:mod:`monai_uda.benchmark.settings`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ROWS",
    "CPU_OVERRIDES",
    "MASK_RCNN_BACKBONE",
    "Row",
    "SharedStage",
    "StartWeights",
    "start_overrides",
    "mask_rcnn_backbone",
    "signature",
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
_ADGAN = "AD-GAN (Yao et al.): image <-> mask translation, no image labels"
#: which masks the AD-GAN rows translate to: the setting's ``mask_domain`` override (bundles/ad_gan/docs/README.md)
_MASKS = ("mask domain: the labelled source's masks on dsb2018_fluo->monuseg and dsb2018_dim->dsb2018_bright "
          "(mask_domain source), synthetic ellipses elsewhere")
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
        Row("cellseg_uda_augment", "cellseg_uda", f"{_CELLSEG}, our variant: flips and quarter turns in training "
            "(the paper trains without augmentation)", {"mode": "uda", "augment": True}),
        Row("cellseg_ssda_10", "cellseg_uda", "CellSegSSDA, 10% of target images labelled (eq 6)",
            {"mode": "ssda", "target_label_fraction": 0.1}, True),
        Row("cellseg_ssda_50", "cellseg_uda", "CellSegSSDA, 50% of target images labelled (eq 6)",
            {"mode": "ssda", "target_label_fraction": 0.5}, True),
        Row("ad_gan", "ad_gan", f"{_ADGAN}, binary translation + watershed; {_MASKS}", {"ternary": False}),
        Row("ad_gan_ins", "ad_gan", f"AD-GAN-INS: ternary (background/edge/interior) translation; {_MASKS}",
            {"ternary": True}),
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
                ("cyc_pdam_reversal", "CyC-PDAM, our earlier form: alpha_da ramps only the gradient reversal, the "
                 "domain losses at full weight from the first iteration (the paper: eq 4 weights them by alpha_da)",
                 {"variant": "pdam", "alpha_da_on": "reversal"}, _CYCLEGAN),
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
    "cellseg_uda_augment",
)
AD_GAN_ROWS = ("ad_gan", "ad_gan_ins", "ad_gan_wo_rec", "ad_gan_wo_ctr", "ad_gan_wo_cyc", "ad_gan_no_encoder_adain")
CYC_PDAM_ROWS = (
    "cyc_pdam", "cyc_pdam_wo_tr", "cyc_pdam_wo_sem", "cyc_pdam_wo_ni", "cyc_pdam_cycada", "cyc_pdam_reversal",
)
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
            # label-free selection scores 4 centre crops every 50 PDAM iterations (train_cpu.yaml's choice)
            "selection_images": 4, "selection_crop": [128, 128], "val_interval": 50,
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


def signature(data: Mapping[str, Any]) -> str:
    """Stable text of a row's configuration, to tell whether a finished row can be skipped."""
    return json.dumps(data, sort_keys=True, default=str)
