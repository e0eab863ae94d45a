"""The dataset settings of ``monai-uda benchmark``: what every row of a setting trains and is scored on.

A :class:`Setting` is one dataset recipe: it prepares (once, into a cache folder) a datalist with
``source``/``target``/``test`` splits and the folders of labelled evaluation images, and says
which rows (:mod:`monai_uda.benchmark.recipes`) make sense on it. Every row of a setting trains on
the same datalist with the same seed and is scored on the same evaluation images
(:func:`prepare_setting` prepares a setting once per output folder).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_uda.benchmark.recipes import (
    AD_GAN_ROWS,
    CELLSEG_ROWS,
    CELLSEG_UNSUPERVISED,
    CYC_PDAM_ROWS,
    DARCNN_ROWS,
    MASK_RCNN_SOURCE_ONLY,
    ROWS,
)
from monai_uda.errors import UDAInputError
from monai_uda.files import write_text

__all__ = ["SETTINGS", "Prepared", "Setting", "datalist_setting", "describe", "prepare_setting", "shared_data_dir"]

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


def _dsb_fluo_items(dsb: Path, cache: Path) -> list[dict[str, Any]]:
    """The labelled items of the DSB2018 fluorescence folder ``dsb``, linked into ``cache/dsb``."""
    from monai_uda.data.prepare import prepare_folder

    return _items(prepare_folder(dsb / "images", dsb / "labels", cache / "dsb", split="source", link=True), "source")


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
    source = _dsb_fluo_items(dsb, cache)
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
    dsb = _require(data_root / "dsb2018_fluo", "DSB2018 fluorescence")
    items = _dsb_fluo_items(dsb, cache)
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
    dsb = _require(data_root / "dsb2018_fluo", "DSB2018 fluorescence")
    items = _dsb_fluo_items(dsb, cache)
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
                # AD-GAN's mask domain: the labelled DSB2018 masks (unpaired with the MoNuSeg images)
                "ad_gan": {"channels": 1, "target_invert": True, "mask_domain": "source"},
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
            # AD-GAN's mask domain: the dim half's labels (unpaired with the bright images)
            bundle_overrides={**{bundle: {"channels": 1} for bundle in ("cellseg_uda", "cyc_pdam", "darcnn")},
                              "ad_gan": {"channels": 1, "mask_domain": "source"}},
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
