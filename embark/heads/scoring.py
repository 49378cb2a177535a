"""Scores of a classifier's probabilities: top-k accuracy, expected calibration error, the
section accuracy implied by chapter probabilities, and accuracy at an abstain threshold.

Kept apart from ``evaluate`` (which fits and splits) so that tests can check the arithmetic on
hand-made probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from embark.heads.dataset import DatasetError, section_of

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Scores:
    top1: float
    top3: float
    ece: float  # expected calibration error of the top-1 probability, 15 equal-width bins
    section_top1: float  # NaN when the labels are not HS chapters
    rows: int


def topk_hits(probabilities: F32, classes: Sequence[str], truth: Sequence[str], k: int) -> float:
    """Share of rows whose true label is among the ``k`` most probable."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    names = np.asarray(classes)[order]
    return float(np.mean((names == np.asarray(truth)[:, None]).any(axis=1)))


def expected_calibration_error(
    probabilities: F32, classes: Sequence[str], truth: Sequence[str], bins: int = 15
) -> float:
    """Sum over confidence bins of |accuracy - mean confidence|, weighted by the bin's share of
    rows (Guo et al. 2017). 0 is perfectly calibrated."""
    confidence = probabilities.max(axis=1)
    correct = np.asarray(classes)[probabilities.argmax(axis=1)] == np.asarray(truth)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(float(correct[mask].mean()) - float(confidence[mask].mean()))
    return total


def section_top1(probabilities: F32, classes: Sequence[str], truth: Sequence[str]) -> float:
    """Top-1 of the HS section, each section scored by the sum of its chapters' probabilities
    (the consistent reading of a chapter head); NaN when the labels are not chapters."""
    try:
        sections = [section_of(c) for c in classes]
        wanted = [section_of(t) for t in truth]
    except (DatasetError, ValueError):
        return float("nan")
    names = sorted(set(sections))
    member = np.zeros((len(classes), len(names)), dtype=np.float32)
    for i, s in enumerate(sections):
        member[i, names.index(s)] = 1.0
    best = np.asarray(names)[(probabilities @ member).argmax(axis=1)]
    return float(np.mean(best == np.asarray(wanted)))


def score(probabilities: F32, classes: Sequence[str], truth: Sequence[str]) -> Scores:
    return Scores(
        top1=topk_hits(probabilities, classes, truth, 1),
        top3=topk_hits(probabilities, classes, truth, 3),
        ece=expected_calibration_error(probabilities, classes, truth),
        section_top1=section_top1(probabilities, classes, truth),
        rows=len(truth),
    )


def abstain_curve(
    probabilities: F32,
    classes: Sequence[str],
    truth: Sequence[str],
    thresholds: Sequence[float] = (0.0, 0.3, 0.5, 0.7, 0.9),
) -> list[dict[str, float]]:
    """For each ``min_probability``: the share answered (coverage) and top-1 among those."""
    confidence = probabilities.max(axis=1)
    correct = np.asarray(classes)[probabilities.argmax(axis=1)] == np.asarray(truth)
    out = []
    for t in thresholds:
        answered = confidence >= t
        out.append(
            {
                "min_probability": t,
                "coverage": float(answered.mean()),
                "top1_answered": float(correct[answered].mean()) if answered.any() else 0.0,
            }
        )
    return out
