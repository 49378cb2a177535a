"""Label prototypes: a nearest-centroid score added to a head's logistic-regression logits.

A logistic regression over customs descriptions learns which directions of the embedding space
separate the CN's own wording; a shop title ("Nike running shoes, black, UK 9") lands where no
description was, and the linear boundaries extrapolate there badly. A prototype score asks a
simpler question that travels better: which *kind of product* (HS4 heading, a tight cluster in
the embedding space) is the input nearest to?

    prototype   the mean of the l2-normalised embeddings of one group's training texts (for
                CN2023 a group is an HS4 heading; texts without a group share one per label)
    score       for each label, the best cosine between the input and that label's prototypes
    logits      the head's logits + ``weight`` x score (``weight`` chosen on validation and the
                shop-title dev part: ``bench/heads_protos.py``, docs/heads.md)

Adding ``weight x cosine`` to the logits is the same as multiplying the head's probabilities by
a softmax of the cosines at temperature 1/weight, so one number says how much the prototypes
count. Serving needs one (inputs x prototypes) product: about 1,200 x 384 for CN2023 chapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from embark.heads.dataset import Example
from embark.heads.forms import title_forms

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def l2_normalise(vectors: F32) -> F32:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    out: F32 = (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return out


@dataclass(frozen=True, slots=True)
class Prototypes:
    """Prototype vectors sorted by the label they belong to (``owner``, an index into the head's
    labels); every label has at least one."""

    vectors: F32  # prototypes x dim, l2-normalised
    owner: I64  # prototypes, non-decreasing label indices covering 0 .. labels-1
    weight: float

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.owner.shape != (self.vectors.shape[0],):
            raise ValueError("prototypes: one owner per prototype vector")
        steps = np.diff(self.owner)
        if self.owner.size == 0 or self.owner[0] != 0 or not np.isin(steps, (0, 1)).all():
            raise ValueError("prototypes: owners must run 0, 0, 1, ... with every label present")

    @property
    def labels(self) -> int:
        return int(self.owner[-1]) + 1

    def scores(self, vectors: F32) -> F32:
        """(inputs x labels): each label's best cosine with the inputs."""
        unit = l2_normalise(vectors)
        # OpenBLAS spreads even a one-row product over its threads, and on busy cores the
        # hand-off costs more than the product (1 x 384 x 1,232: 1-3 ms against 0.1-0.3 ms in
        # numpy's own loop, bench/categorize.py); from a few rows up the BLAS product wins.
        if unit.shape[0] <= 2:
            sims = np.einsum("ij,kj->ik", unit, self.vectors)
        else:
            sims = unit @ self.vectors.T
        starts = np.flatnonzero(np.r_[True, np.diff(self.owner) > 0])
        out: F32 = np.maximum.reduceat(sims, starts, axis=1).astype(np.float32, copy=False)
        return out


# Which training rows make prototypes and how they group into centroids: "none"; "label" (one
# per label); "heading" (one per group, e.g. HS4 heading); "nearest" (each description its own);
# "+forms" adds the title-like training forms (``forms.title_forms``) to their description's.
DESIGNS = ("none", "label", "heading", "heading+forms", "nearest", "nearest+forms")


def prototype_rows(
    examples: Sequence[Example], design: str
) -> tuple[list[str], list[str], list[str]]:
    """Texts, labels and groups whose centroids are the prototypes of ``design``."""
    if design not in DESIGNS:
        raise ValueError(f"prototypes must be one of {', '.join(DESIGNS)}, got {design!r}")
    texts: list[str] = []
    labels: list[str] = []
    groups: list[str] = []
    if design == "none":
        return texts, labels, groups
    for e in examples:
        group = "" if design == "label" else e.text if design.startswith("nearest") else e.group
        for text in [e.text, *(title_forms(e.text) if design.endswith("+forms") else [])]:
            texts.append(text)
            labels.append(e.label)
            groups.append(group)
    return texts, labels, groups


def build_prototypes(
    vectors: F32,
    labels: Sequence[str],
    groups: Sequence[str],
    classes: Sequence[str],
    weight: float,
) -> Prototypes:
    """One prototype per (label, group) of the training rows: the mean of their normalised
    vectors, normalised. ``classes`` is the head's label order; each must have a row."""
    unit = l2_normalise(vectors.astype(np.float32))
    index = {c: i for i, c in enumerate(classes)}
    keys: dict[tuple[int, str], list[int]] = {}
    for row, (label, group) in enumerate(zip(labels, groups, strict=True)):
        keys.setdefault((index[label], group), []).append(row)
    missing = set(range(len(classes))) - {k[0] for k in keys}
    if missing:
        raise ValueError(f"no training rows for labels {sorted(classes[i] for i in missing)}")
    ordered = sorted(keys)
    centroids = np.stack([unit[keys[k]].mean(axis=0) for k in ordered])
    owner = np.array([k[0] for k in ordered], dtype=np.int64)
    return Prototypes(l2_normalise(centroids), owner, float(weight))
