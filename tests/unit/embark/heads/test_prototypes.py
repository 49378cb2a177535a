"""Label prototypes: which rows make them, their centroids, the best-cosine score per label, the
logits a head adds, and the artifact format that carries them (format 2; format 1 still loads)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from embark.heads.artifact import Head, HeadError, load_head, save_head
from embark.heads.dataset import Example
from embark.heads.forms import title_forms
from embark.heads.prototypes import Prototypes, build_prototypes, l2_normalise, prototype_rows
from embark.heads.train import TrainConfig, fit_head
from tests.unit.embark.heads.test_artifact import make_head
from tests.unit.embark.heads.test_train import synthetic

EXAMPLES = [
    Example("Pure-bred breeding horses", "01", "0101"),
    Example("Live asses (excl. pure-bred for breeding)", "01", "0101"),
    Example("Live swine, weighing >= 50 kg", "01", "0103"),
    Example("Fresh or chilled trout", "03", "0302"),
]


def test_prototype_rows_group_by_design() -> None:
    texts, labels, groups = prototype_rows(EXAMPLES, "label")
    assert texts == [e.text for e in EXAMPLES]
    assert groups == [""] * 4
    assert labels == ["01", "01", "01", "03"]
    assert prototype_rows(EXAMPLES, "heading")[2] == ["0101", "0101", "0103", "0302"]
    assert prototype_rows(EXAMPLES, "nearest")[2] == [e.text for e in EXAMPLES]
    texts, labels, groups = prototype_rows(EXAMPLES, "nearest+forms")
    forms = title_forms(EXAMPLES[1].text)
    assert forms
    assert set(forms) <= set(texts)
    assert {g for t, g in zip(texts, groups, strict=True) if t in forms} == {EXAMPLES[1].text}
    assert len(texts) == 4 + sum(len(title_forms(e.text)) for e in EXAMPLES)
    assert prototype_rows(EXAMPLES, "none") == ([], [], [])
    with pytest.raises(ValueError, match="prototypes must be one of"):
        prototype_rows(EXAMPLES, "centroids")


def test_centroids_and_best_cosine_per_label() -> None:
    vectors = np.array([[2, 0, 0], [0, 3, 0], [0, 0, 1], [1, 1, 0]], dtype=np.float32)
    protos = build_prototypes(vectors, ["b", "b", "a", "b"], ["x", "y", "z", "x"], ["a", "b"], 2.0)
    # b has two groups: x (rows 0 and 3: mean of (1,0,0) and (.707,.707,0)) and y.
    assert protos.owner.tolist() == [0, 1, 1]
    assert protos.labels == 2
    x = l2_normalise(np.array([[1 + 0.5**0.5, 0.5**0.5, 0]], dtype=np.float32))[0]
    np.testing.assert_allclose(protos.vectors[1], x, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(protos.vectors, axis=1), 1.0, rtol=1e-6)
    queries = np.array([[0, 5, 0], [0, 0, -1], [3, 0, 4]], dtype=np.float32)
    scores = protos.scores(queries)
    np.testing.assert_allclose(scores[0], [0.0, 1.0], atol=1e-6)  # b's best is group y
    np.testing.assert_allclose(scores[1], [-1.0, 0.0], atol=1e-6)  # unnormalised input too
    np.testing.assert_allclose(scores[2], [0.8, 0.6 * x[0]], atol=1e-6)
    for i in range(3):  # one row takes another product path (einsum): the same scores
        np.testing.assert_allclose(protos.scores(queries[i : i + 1])[0], scores[i], atol=1e-6)
    with pytest.raises(ValueError, match=r"no training rows for labels \['c'\]"):
        build_prototypes(vectors, ["b", "b", "a", "b"], ["x"] * 4, ["a", "b", "c"], 1.0)


def test_owners_must_cover_every_label_in_order() -> None:
    vectors = np.eye(3, dtype=np.float32)
    for owner in ([0, 2, 2], [1, 1, 1], [0, 1, 0]):
        with pytest.raises(ValueError, match="owners must run"):
            Prototypes(vectors, np.array(owner, dtype=np.int64), 1.0)
    with pytest.raises(ValueError, match="one owner per"):
        Prototypes(vectors, np.array([0, 1], dtype=np.int64), 1.0)


def test_fit_head_adds_weighted_prototype_scores() -> None:
    texts, labels, vecs = synthetic()
    groups = [str(i) for i in range(len(texts))]
    config = TrainConfig(ngram_max=0, prototypes="nearest", prototype_weight=3.0)
    plain = fit_head(name="t", version=1, texts=texts, labels=labels, vectors=vecs, model="m",
                     revision="r", config=config)  # fmt: skip
    head = fit_head(name="t", version=1, texts=texts, labels=labels, vectors=vecs, model="m",
                    revision="r", config=config, prototypes=(vecs, labels, groups))  # fmt: skip
    assert plain.prototypes is None
    assert head.prototypes is not None
    assert head.prototypes.vectors.shape == (len(texts), 8)
    expected = plain.batch_logits(vecs, texts) + 3.0 * head.prototypes.scores(vecs)
    np.testing.assert_allclose(head.batch_logits(vecs, texts), expected, rtol=1e-5, atol=1e-5)
    # Each training vector is its own label's prototype: cosine 1 with its own label.
    assert np.allclose(head.prototypes.scores(vecs).max(axis=1), 1.0, atol=1e-5)


def with_prototypes(weight: float = 2.0) -> Head:
    rng = np.random.default_rng(1)
    protos = Prototypes(
        l2_normalise(rng.standard_normal((5, 4)).astype(np.float32)),
        np.array([0, 0, 1, 2, 2], dtype=np.int64),
        weight,
    )
    return replace(make_head(lexical=True), prototypes=protos)


def test_round_trip_keeps_the_prototypes(tmp_path: Path) -> None:
    head = with_prototypes()
    path = save_head(head, tmp_path)
    meta = json.loads(path.read_text())
    assert meta["format"] == 2
    assert meta["prototypes"] == {"weight": 2.0, "count": 5}
    loaded = load_head(path)
    assert loaded.prototypes is not None
    assert loaded.prototypes.weight == 2.0
    x = np.array([[0.3, -1.0, 0.5, 2.0]], dtype=np.float32)
    want = head.batch_logits(x, ["red shoes"])
    assert not np.allclose(want, replace(head, prototypes=None).batch_logits(x, ["red shoes"]))
    # Stored as float16: a cosine moves by ~1e-3, times the weight.
    np.testing.assert_allclose(loaded.batch_logits(x, ["red shoes"]), want, atol=1e-2)


def test_format_1_loads_and_an_unknown_format_is_refused(tmp_path: Path) -> None:
    path = save_head(make_head(), tmp_path)
    meta = json.loads(path.read_text())
    del meta["prototypes"]
    path.write_text(json.dumps({**meta, "format": 1}))
    assert load_head(path).prototypes is None
    path.write_text(json.dumps({**meta, "format": 3}))
    with pytest.raises(HeadError, match="head format 3; this EmbArk reads formats 1, 2"):
        load_head(path)


def test_prototypes_of_the_wrong_shape_are_refused() -> None:
    bad = Prototypes(np.eye(2, 4, dtype=np.float32), np.array([0, 1], dtype=np.int64), 1.0)
    with pytest.raises(HeadError, match="prototypes do not match 3 labels x 4"):
        replace(make_head(), prototypes=bad)
