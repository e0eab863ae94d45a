"""Cell Tracking Challenge SEG and DET measures for label maps of any dimensionality (2D, 3D).

Both measures are defined as the CTC evaluation software computes them (``SEGMeasure`` and
``DETMeasure``; their Java port ``net.celltrackingchallenge.measures.SEG`` / ``DET``), after
Matula et al., "Cell Tracking Accuracy Measurement Based on Comparison of Acyclic Oriented
Graphs", PLoS ONE 2015, and the CTC evaluation methodology (celltrackingchallenge.net,
SEG.pdf; Ulman et al., Nature Methods 2017):

* Matching: a reference object R is matched by the computed object S that covers more than
  half of it, |R n S| > 0.5 |R|. So R has at most one match, while one S may match several
  reference objects (a merge).
* SEG = mean over the reference objects of the Jaccard index J(R, S) = |R n S| / |R u S| of R
  and its match, J = 0 for an unmatched R.
* AOGM-D, the AOGM of Matula et al. restricted to vertices (edge weights 0):
  w_NS * NS + w_FN * FN + w_FP * FP, where NS counts the splits needed (m - 1 for a computed
  object matching m > 1 reference objects), FN the unmatched reference objects and FP the
  computed objects matching none; the CTC weights are w_NS = 5, w_FN = 10, w_FP = 1.
* DET = 1 - min(AOGM-D, AOGM-D0) / AOGM-D0, with AOGM-D0 = w_FN * (number of reference
  objects), the cost of creating the reference from scratch (AOGM-D of an empty result).

Edge cases as in the CTC software: an empty result scores SEG = DET = 0 (every reference object
is a false negative); a reference with no object leaves both measures undefined (the software
stops with "No reference (GT) label was found at all!"), so :meth:`CTCCounts.measures` gives
``None`` for such an image. Over a sequence (or a folder) the software pools every reference
object of every frame into one SEG and one AOGM-D; :meth:`CTCCounts.__add__` pools the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from monai_uda.metrics.instance import Contingency, contingency

__all__ = ["CTC_WEIGHTS", "CTCCounts", "ctc_counts", "ctc_measures", "pool_ctc"]

#: AOGM-D weights of the CTC DET measure: split, false negative, false positive vertex
CTC_WEIGHTS = {"w_ns": 5, "w_fn": 10, "w_fp": 1}


@dataclass(frozen=True)
class CTCCounts:
    """What SEG and DET are computed from; ``a + b`` pools two images as the CTC pools frames.

    Attributes:
        references: number of reference (ground-truth) objects.
        jaccard_sum: sum over the reference objects of J(R, S), 0 for the unmatched ones.
        splits: NS, the split operations needed (m - 1 per computed object matching m > 1).
        false_negatives: FN, reference objects without a match.
        false_positives: FP, computed objects matching no reference object.
    """

    references: int = 0
    jaccard_sum: float = 0.0
    splits: int = 0
    false_negatives: int = 0
    false_positives: int = 0

    def __add__(self, other: CTCCounts) -> CTCCounts:
        return CTCCounts(
            self.references + other.references,
            self.jaccard_sum + other.jaccard_sum,
            self.splits + other.splits,
            self.false_negatives + other.false_negatives,
            self.false_positives + other.false_positives,
        )

    @property
    def aogm_d(self) -> int:
        """AOGM-D = w_NS * NS + w_FN * FN + w_FP * FP (Matula et al. 2015, edge terms 0)."""
        w = CTC_WEIGHTS
        return w["w_ns"] * self.splits + w["w_fn"] * self.false_negatives + w["w_fp"] * self.false_positives

    @property
    def aogm_d0(self) -> int:
        """AOGM-D0 = w_FN * |reference objects|: the cost of building the reference from nothing."""
        return CTC_WEIGHTS["w_fn"] * self.references

    def measures(self) -> dict[str, float | None]:
        """``{"SEG", "DET"}``; both ``None`` (undefined, as in the CTC software) without reference objects."""
        if self.references == 0:
            return {"SEG": None, "DET": None}
        det = 1.0 - min(self.aogm_d, self.aogm_d0) / self.aogm_d0
        return {"SEG": self.jaccard_sum / self.references, "DET": det}


def _counts_from(table: Contingency) -> CTCCounts:
    """CTC counts of one overlap table: matches are the pairs covering more than half of the reference."""
    matched = 2 * table.pair_inter > table.gt_areas[table.pair_gt]  # |R n S| > 0.5 |R|, in integers
    matches_per_pred = np.bincount(table.pair_pred[matched], minlength=len(table.pred_areas))
    references = len(table.gt_areas)
    n_matched = int(matched.sum())  # each reference object has at most one match
    return CTCCounts(
        references=references,
        jaccard_sum=float(table.pair_iou[matched].sum()),
        splits=int(np.maximum(matches_per_pred - 1, 0).sum()),
        false_negatives=references - n_matched,
        false_positives=int((matches_per_pred == 0).sum()),
    )


def ctc_counts(pred: np.ndarray, gt: np.ndarray) -> CTCCounts:
    """Matching counts of one predicted label map against its reference (ids need not be contiguous).

    Args:
        pred: computed instance map, 2D or 3D (0 = background).
        gt: reference instance map of the same shape.

    Raises:
        UDAInputError: shapes differ or a map is not a valid label map.
    """
    return _counts_from(contingency(pred, gt))


def ctc_measures(pred: np.ndarray, gt: np.ndarray) -> dict[str, float | None]:
    """CTC ``SEG`` and ``DET`` of one label map (``None`` when ``gt`` has no object; see the module doc).

    Raises:
        UDAInputError: shapes differ or a map is not a valid label map.
    """
    return ctc_counts(pred, gt).measures()


def pool_ctc(counts: Iterable[CTCCounts]) -> CTCCounts:
    """Pool the counts of several images into one, as the CTC software pools the frames of a sequence."""
    return sum(counts, CTCCounts())
