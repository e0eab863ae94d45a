"""Score a folder of predicted instance maps against a folder of ground-truth label maps.

Files are paired by stem (:func:`monai_uda.data.io.stem_of`), whatever their format (PNG,
TIFF, NIfTI, ``.npy``...). Inference writes ``<stem>_instances.tif`` next to
``<stem>_mask.png`` and ``<stem>_overlay.png``: a prediction named ``<stem>_instances`` is
matched to ground truth ``<stem>``, and its ``_mask`` / ``_overlay`` companions are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import label as label_components_of

from monai_uda.data.io import list_images, read_label, stem_of
from monai_uda.errors import UDAInputError
from monai_uda.files import write_json
from monai_uda.metrics.ctc import CTCCounts, ctc_counts, ctc_measures, pool_ctc
from monai_uda.metrics.instance import instance_metrics
from monai_uda.metrics.pixel import pixel_metrics

__all__ = [
    "METRIC_KEYS",
    "CTC_KEYS",
    "compute_metrics",
    "match_files",
    "evaluate_dirs",
    "format_table",
    "check_instance_map",
]

METRIC_KEYS = ("aji", "aji_plus", "pq", "sq", "dq", "object_f1", "dice", "precision", "recall", "iou")
#: keys added by ``ctc=True`` (``--ctc``): the Cell Tracking Challenge measures (:mod:`monai_uda.metrics.ctc`)
CTC_KEYS = ("SEG", "DET")
INSTANCES_SUFFIX = "_instances"
COMPANION_SUFFIXES = ("_mask", "_overlay")


def compute_metrics(pred: np.ndarray, gt: np.ndarray, ctc: bool = False) -> dict[str, float | None]:
    """Instance and pixel metrics of one predicted label map against its ground truth.

    Args:
        pred: predicted instance map (2D, 3D or any ndim; 0 = background; ids need not be
            contiguous; a binary mask is scored as a single instance).
        gt: ground-truth instance map of the same shape.
        ctc: also return the Cell Tracking Challenge ``SEG`` and ``DET`` (:data:`CTC_KEYS`,
            :func:`monai_uda.metrics.ctc.ctc_measures`); both are ``None`` when ``gt`` has no
            object, where the CTC software leaves them undefined.

    Returns:
        Floats keyed exactly by :data:`METRIC_KEYS`: ``aji`` (Kumar et al. 2017), ``aji_plus``
        (Graham et al. 2019), ``pq``/``sq``/``dq`` (Kirillov et al. 2019, IoU > 0.5),
        ``object_f1`` (= ``dq``), and the foreground ``dice``, ``precision``, ``recall``, ``iou``.
        Both maps empty gives 1.0 everywhere, exactly one empty 0.0 everywhere (the CTC
        measures aside). With ``ctc`` the keys of :data:`CTC_KEYS` follow.

    Raises:
        UDAInputError: shapes differ or a map is not a valid label map.
    """
    scores = {**instance_metrics(pred, gt), **pixel_metrics(pred, gt)}
    out: dict[str, float | None] = {key: float(scores[key]) for key in METRIC_KEYS}
    return {**out, **ctc_measures(pred, gt)} if ctc else out


def _listing(items: Iterable[str], limit: int = 10) -> str:
    items = sorted(items)
    more = f" ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _index_by_key(pairs: list[tuple[str, Path]], folder: Path, side: str) -> dict[str, Path]:
    """``{key: path}``, raising when two files of one folder claim the same stem."""
    index: dict[str, list[Path]] = {}
    for key, path in pairs:
        index.setdefault(key, []).append(path)
    clashes = {key: paths for key, paths in index.items() if len(paths) > 1}
    if clashes:
        key, paths = sorted(clashes.items())[0]
        names = ", ".join(sorted(p.name for p in paths))
        raise UDAInputError(f"several {side} files match stem {key!r}: {names}", folder)
    return {key: paths[0] for key, paths in index.items()}


def match_files(pred: str | Path, gt: str | Path) -> dict[str, tuple[Path, Path]]:
    """Pair prediction and ground-truth files by stem.

    Args:
        pred: folder of predictions; ``<stem>_instances.<ext>`` matches stem ``<stem>``, and
            ``<stem>_mask`` / ``<stem>_overlay`` are ignored when ``<stem>_instances`` exists.
        gt: folder of ground-truth label maps.

    Returns:
        ``{stem: (prediction_path, ground_truth_path)}`` sorted by stem.

    Raises:
        UDAInputError: a folder is missing or empty, two files claim one stem, or a stem is
            present on one side only (the message names the stems and the side).
    """
    pred_dir, gt_dir = Path(pred), Path(gt)
    gt_paths, pred_paths = list_images(gt_dir), list_images(pred_dir)
    for folder, paths in ((gt_dir, gt_paths), (pred_dir, pred_paths)):
        if not paths:
            raise UDAInputError("no image files found", folder)
    gt_files = _index_by_key([(stem_of(p), p) for p in gt_paths], gt_dir, "ground-truth")
    stems = [(stem_of(p), p) for p in pred_paths]
    has_instances = {s[: -len(INSTANCES_SUFFIX)] for s, _ in stems if s.endswith(INSTANCES_SUFFIX)}
    keyed = []
    for stem, path in stems:
        if stem not in gt_files and stem.endswith(INSTANCES_SUFFIX):
            stem = stem[: -len(INSTANCES_SUFFIX)]
        elif stem not in gt_files and any(
            stem.endswith(s) and stem[: -len(s)] in has_instances for s in COMPANION_SUFFIXES
        ):
            continue
        keyed.append((stem, path))
    pred_files = _index_by_key(keyed, pred_dir, "prediction")
    no_pred, no_gt = set(gt_files) - set(pred_files), set(pred_files) - set(gt_files)
    if no_pred or no_gt:
        reasons = []
        if no_pred:
            reasons.append(f"no prediction for ground-truth stem(s) {_listing(no_pred)} (ground truth in {gt_dir})")
        if no_gt:
            reasons.append(f"no ground truth in {gt_dir} for prediction stem(s) {_listing(no_gt)}")
        raise UDAInputError("; ".join(reasons), pred_dir)
    return {stem: (pred_files[stem], gt_files[stem]) for stem in sorted(gt_files)}


def format_table(results: dict[str, Any]) -> str:
    """Aligned text table of an :func:`evaluate_dirs` result: one row per image, then the mean.

    Args:
        results: ``{"per_image": {stem: {metric: value}}, "mean": {metric: value}}``; the columns
            are the keys of ``mean`` in order, and an undefined value (``None``) prints ``n/a``.
    """
    keys = list(results["mean"])
    rows = [(stem, scores) for stem, scores in results["per_image"].items()] + [("mean", results["mean"])]
    name_width = max(len("image"), *(len(stem) for stem, _ in rows))
    widths = [max(len(key), 6) for key in keys]
    header = "  ".join(["image".ljust(name_width)] + [key.rjust(w) for key, w in zip(keys, widths)])
    lines = [header, "-" * len(header)]
    for index, (stem, scores) in enumerate(rows):
        if index == len(rows) - 1:
            lines.append("-" * len(header))
        cells = ["n/a" if scores[k] is None else f"{scores[k]:.4f}" for k in keys]
        lines.append("  ".join([stem.ljust(name_width)] + [c.rjust(w) for c, w in zip(cells, widths)]))
    return "\n".join(lines)


def check_instance_map(pred: np.ndarray, path: str | Path, label_components: bool = False) -> np.ndarray:
    """``pred`` as an instance map: refuse one that looks like a binary (or ternary) mask, or label its components.

    A binary 0/255 mask scored as an instance map is one giant nucleus per image: every score is then
    near zero, silently. Such a map has at most two foreground ids and one of them spreads over several
    separate regions (``skimage.measure.label``, full connectivity). A real instance map with one
    fragmented nucleus among many is not affected.

    Args:
        pred: the predicted map.
        path: its file (named in the error).
        label_components: give every connected region of one id its own id first (``--label_components true``).

    Raises:
        UDAInputError: ``pred`` looks like a mask and ``label_components`` is false.
    """
    if label_components:
        return label_components_of(pred, background=0)
    ids = np.unique(pred)
    ids = ids[ids != 0]
    if 0 < ids.size <= 2:
        for value in ids:
            regions = int(label_components_of(pred == value).max())
            if regions > 1:
                raise UDAInputError(
                    f"looks like a binary mask, not an instance map: id {int(value)} covers {regions} separate regions "
                    "(scored as one nucleus); pass --label_components true to give each connected region its own id",
                    path,
                )
    return pred


def _pooled_ctc(counts: list[CTCCounts], gt: str | Path) -> dict[str, float | None]:
    """SEG and DET over every reference object of the folder, as the CTC software pools a sequence.

    Raises:
        UDAInputError: no ground-truth image has an object: the CTC software refuses such a
            reference ("No reference (GT) label was found at all!"), both measures being undefined.
    """
    pooled = pool_ctc(counts)
    if pooled.references == 0:
        raise UDAInputError("--ctc: no ground-truth image has an object, so SEG and DET are undefined", gt)
    return pooled.measures()


def evaluate_dirs(
    pred: str | Path,
    gt: str | Path,
    out: str | Path | None = None,
    label_components: bool | str = False,
    ctc: bool | str = False,
) -> dict[str, Any]:
    """Score every prediction in ``pred`` against the ground truth of the same stem in ``gt``.

    Prints the per-image table and the mean row (:func:`format_table`).

    Args:
        pred: folder of predicted instance maps (see :func:`match_files` for naming).
        gt: folder of ground-truth instance maps.
        out: JSON file to write the result to (atomically, through a symlink to the file it names;
            devices and FIFOs are refused, see :mod:`monai_uda.files`); an existing folder receives
            ``metrics.json``; ``None`` writes nothing.
        label_components: label the connected regions of every prediction first (for binary masks);
            otherwise a prediction that looks like a binary mask is refused (:func:`check_instance_map`).
        ctc: add the Cell Tracking Challenge ``SEG`` and ``DET`` (``--ctc true``). Per image they are
            ``null`` when its ground truth has no object; in ``mean`` they are pooled over every
            reference object of the folder, as the CTC software pools the frames of a sequence (SEG
            is the mean Jaccard index over all reference objects, DET normalises the summed AOGM-D),
            not averaged over images.

    Returns:
        ``{"per_image": {stem: {metric: float}}, "mean": {metric: float}}`` with the metrics
        of :data:`METRIC_KEYS` (then :data:`CTC_KEYS` with ``ctc``); the mean is taken over images
        (SEG and DET: pooled, see ``ctc``).

    Raises:
        UDAInputError: see :func:`match_files`; unreadable files; a prediction whose shape
            differs from its ground truth (naming both files); a prediction that looks like a binary mask;
            with ``ctc``, a ground-truth folder without any object.
    """
    from monai_uda import flag

    label_components, ctc = flag(label_components), flag(ctc)
    per_image: dict[str, dict[str, float | None]] = {}
    counts: list[CTCCounts] = []
    for stem, (pred_path, gt_path) in match_files(pred, gt).items():
        try:
            prediction = check_instance_map(read_label(pred_path), pred_path, label_components)
            reference = read_label(gt_path)
            per_image[stem] = compute_metrics(prediction, reference)
            if ctc:
                counts.append(ctc_counts(prediction, reference))
                per_image[stem].update(counts[-1].measures())
        except UDAInputError as exc:
            if exc.path is not None:
                raise
            raise UDAInputError(f"{exc.reason} (ground truth {gt_path})", pred_path) from exc
    mean: dict[str, float | None] = {
        key: float(np.mean([scores[key] for scores in per_image.values()])) for key in METRIC_KEYS
    }
    if ctc:
        mean.update(_pooled_ctc(counts, gt))
    results = {"per_image": per_image, "mean": mean}
    if out is not None:
        out_path = Path(out)
        write_json(out_path / "metrics.json" if out_path.is_dir() else out_path, results)
    print(format_table(results))
    return results
