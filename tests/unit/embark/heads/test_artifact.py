"""Head artifacts: save/load round trip, the revision binding, softmax and top-k, and the numpy
TF-IDF serving path against scikit-learn's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embark import vectors
from embark.catalog import Catalog, ModelSpec
from embark.errors import PreconditionFailed, UnknownHead
from embark.heads.artifact import (
    Head,
    HeadError,
    Lexical,
    check_revision,
    latest_heads,
    load_head,
    next_version,
    save_head,
    softmax,
    top_k,
)
from embark.heads.service import load_registry

SPEC = ModelSpec("minilm", "text", 4, "rev-a", vectors.to_bytes([0.0] * 4, 4))
CATALOG = Catalog({SPEC.name: SPEC})


def make_head(
    name: str = "shop", *, version: int = 1, revision: str = "rev-a", lexical: bool = False
) -> Head:
    rng = np.random.default_rng(0)
    lex = None
    if lexical:
        lex = Lexical(
            analyzer="word",
            ngram=(1, 2),
            vocabulary={"red": 0, "shoes": 1, "red shoes": 2},
            idf=np.array([1.0, 2.0, 3.0], dtype=np.float32),
            weights=rng.standard_normal((3, 3)).astype(np.float32),
        )
    return Head(
        name=name,
        version=version,
        labels=("a", "b", "c"),
        model="minilm",
        revision=revision,
        dim=4,
        weights=rng.standard_normal((3, 4)).astype(np.float32),
        bias=np.array([0.1, 0.0, -0.1], dtype=np.float32),
        lexical=lex,
        info={"train_rows": 10},
    )


@pytest.mark.parametrize("lexical", [False, True])
def test_save_load_round_trip(tmp_path: Path, lexical: bool) -> None:
    head = make_head(lexical=lexical)
    path = save_head(head, tmp_path)
    assert path == tmp_path / "shop" / "1.json"
    loaded = load_head(path)
    assert (loaded.name, loaded.version, loaded.labels) == ("shop", 1, ("a", "b", "c"))
    assert (loaded.model, loaded.revision, loaded.dim) == ("minilm", "rev-a", 4)
    np.testing.assert_array_equal(loaded.weights, head.weights)
    x = np.ones(4, dtype=np.float32)
    np.testing.assert_allclose(
        loaded.probabilities(x, "Red shoes"), head.probabilities(x, "Red shoes"), rtol=1e-6
    )
    assert json.loads(path.read_text())["revision"] == "rev-a"


def test_versions_increase_and_the_latest_is_served(tmp_path: Path) -> None:
    save_head(make_head(version=1), tmp_path)
    assert next_version(tmp_path, "shop") == 2
    save_head(make_head(version=2, revision="rev-b"), tmp_path)
    assert latest_heads(tmp_path) == [tmp_path / "shop" / "2.json"]
    assert latest_heads(tmp_path / "missing") == []


def test_a_head_refuses_another_revision() -> None:
    check_revision(make_head(), CATALOG)
    with pytest.raises(PreconditionFailed, match=r"trained on minilm@rev-b.*serves minilm@rev-a"):
        check_revision(make_head(revision="rev-b"), CATALOG)


def test_registry_refuses_at_load_and_at_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_head(make_head("good"), tmp_path)
    save_head(make_head("stale", revision="rev-old"), tmp_path)
    registry = load_registry(tmp_path, CATALOG)
    assert set(registry.heads) == {"good"}
    assert "head stale refused" in caplog.text
    assert registry.require("good").name == "good"
    with pytest.raises(PreconditionFailed, match="rev-old"):
        registry.require("stale")
    with pytest.raises(UnknownHead, match="unknown head 'nope'; loaded heads: good"):
        registry.require("nope")


def test_a_corrupt_head_is_refused_not_fatal(tmp_path: Path) -> None:
    save_head(make_head("broken"), tmp_path)
    (tmp_path / "broken" / "1.npz").write_bytes(b"not an npz")
    with pytest.raises(HeadError):
        load_head(tmp_path / "broken" / "1.json")
    registry = load_registry(tmp_path, CATALOG)
    assert registry.heads == {}
    assert "broken" in registry.refused


def test_shapes_are_checked() -> None:
    with pytest.raises(HeadError, match="do not match"):
        Head(
            "x",
            1,
            ("a", "b"),
            "minilm",
            "rev-a",
            4,
            np.zeros((3, 4), np.float32),
            np.zeros(3, np.float32),
        )


def test_softmax_is_stable_and_sums_to_one() -> None:
    p = softmax(np.array([1000.0, 1000.0, -1000.0], dtype=np.float32))
    np.testing.assert_allclose(p, [0.5, 0.5, 0.0], atol=1e-6)
    batch = softmax(np.random.default_rng(1).standard_normal((5, 7)).astype(np.float32))
    np.testing.assert_allclose(batch.sum(axis=1), 1.0, rtol=1e-5)


def test_top_k_orders_and_clamps() -> None:
    p = np.array([0.1, 0.6, 0.3], dtype=np.float32)
    assert [label for label, _ in top_k(p, ["a", "b", "c"], 2)] == ["b", "c"]
    assert len(top_k(p, ["a", "b", "c"], 10)) == 3
    assert top_k(p, ["a", "b", "c"], 0) == []
    assert top_k(p, ["a", "b", "c"], 1)[0][1] == pytest.approx(0.6)


@pytest.mark.parametrize(("analyzer", "ngram"), [("word", (1, 2)), ("char_wb", (2, 4))])
def test_lexical_features_match_scikit_learn(analyzer: str, ngram: tuple[int, int]) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    corpus = [
        "Pure-bred breeding horses",
        "Live cattle of a weight <= 80 kg (excl. pure-bred for breeding)",
        "Frozen trout, weighing more than 1,2 kg each",
        "Men's leather boots",
    ]
    vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=ngram, sublinear_tf=True)
    vectorizer.fit(corpus)
    lex = Lexical(
        analyzer=analyzer,
        ngram=ngram,
        vocabulary={str(t): int(j) for t, j in vectorizer.vocabulary_.items()},
        idf=vectorizer.idf_.astype(np.float32),
        weights=np.zeros((1, len(vectorizer.vocabulary_)), dtype=np.float32),
    )
    for text in [*corpus, "breeding horses horses, a x", "nothing known here zzz"]:
        expected = vectorizer.transform([text]).toarray()[0]
        cols, values = lex.features(text)
        got = np.zeros_like(expected)
        got[cols] = values
        np.testing.assert_allclose(got, expected, atol=1e-6)
