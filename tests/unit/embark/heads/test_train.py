"""Fitting a head: the numpy serving path gives scikit-learn's probabilities, and the
training forms (shortened or title-like) are added with their weight."""

from __future__ import annotations

import numpy as np
import pytest

from embark.heads.artifact import Head, softmax
from embark.heads.dataset import Example
from embark.heads.train import TrainConfig, fit_head, shorten, training_set


def test_shorten_makes_title_like_forms() -> None:
    text = "Live cattle of a weight <= 80 kg (excl. pure-bred for breeding), for slaughter"
    assert shorten(text) == [
        "Live cattle of a weight <= 80 kg, for slaughter",
        "Live cattle of a weight <= 80 kg",
        "Live cattle of a",
    ]
    assert shorten("Live asses") == []


def test_training_set_adds_shortened_forms() -> None:
    examples = [Example("Fresh cut roses, for bouquets", "06"), Example("Horses", "01")]
    assert training_set(examples, augment=False) == (
        ["Fresh cut roses, for bouquets", "Horses"],
        ["06", "01"],
        [1.0, 1.0],
    )
    texts, labels, weights = training_set(examples, augment=True, augment_weight=0.1)
    assert "Fresh cut roses" in texts
    assert labels[texts.index("Fresh cut roses")] == "06"
    assert weights[:2] == [1.0, 1.0]
    assert weights[texts.index("Fresh cut roses")] == 0.1
    assert training_set(examples, augment=True, augment_weight=0.0)[0] == texts[:2]


def test_an_example_counts_its_own_weight_and_its_forms_that_times_augment_weight() -> None:
    examples = [Example("Fresh cut roses, for bouquets", "06", weight=3.0), Example("Horses", "01")]
    texts, _, weights = training_set(examples, augment=True, augment_weight=0.1)
    assert weights[:2] == [3.0, 1.0]
    assert weights[texts.index("Fresh cut roses")] == pytest.approx(0.3)


def test_sample_weights_and_balance_change_the_fit() -> None:
    texts, labels, vecs = synthetic()

    def fit(keep: list[int], config: TrainConfig, weight: list[float] | None = None) -> Head:
        return fit_head(
            name="t",
            version=1,
            texts=[texts[i] for i in keep],
            labels=[labels[i] for i in keep],
            vectors=vecs[keep],
            model="m",
            revision="r",
            config=config,
            sample_weight=weight,
        )

    every = list(range(len(texts)))
    config = TrainConfig(ngram_max=0, balanced=False)
    plain = fit(every, config)
    ones = fit(every, config, [1.0] * len(every))
    np.testing.assert_allclose(plain.weights, ones.weights, rtol=1e-4, atol=1e-5)
    light = fit(every, config, [0.1] * len(every))
    assert np.abs(light.weights).sum() < np.abs(plain.weights).sum()  # relatively more penalty
    # An unbalanced set: balanced class weights raise the bias of the rare label.
    keep = [i for i, y in enumerate(labels) if y != "c" or i < 9]
    skew = fit(keep, config)
    fair = fit(keep, TrainConfig(ngram_max=0))
    assert fair.bias[2] - fair.bias[0] > skew.bias[2] - skew.bias[0]
    assert fair.info["config"]["balanced"] is True
    with pytest.raises(ValueError, match="one weight per text"):
        fit(every, config, [1.0])


def synthetic(n: int = 60) -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    words = {"a": "horse cattle", "b": "trout tuna", "c": "whisky wine"}
    labels = [("a", "b", "c")[i % 3] for i in range(n)]
    texts = [f"{words[y]} item {i}" for i, y in enumerate(labels)]
    centers = {"a": 0, "b": 1, "c": 2}
    vecs = rng.standard_normal((n, 8)).astype(np.float32) * 0.5
    for i, y in enumerate(labels):
        vecs[i, centers[y]] += 2.0
    return texts, labels, vecs


def test_fit_head_serves_what_it_learned() -> None:
    texts, labels, vecs = synthetic()
    for config in (TrainConfig(min_df=1), TrainConfig(ngram_max=0)):
        head = fit_head(
            name="t",
            version=1,
            texts=texts,
            labels=labels,
            vectors=vecs,
            model="m",
            revision="r",
            config=config,
        )
        p = softmax(head.batch_logits(vecs, texts))
        assert head.labels == ("a", "b", "c")
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
        assert np.mean(np.array(head.labels)[p.argmax(axis=1)] == np.array(labels)) == 1.0
        single = head.probabilities(vecs[0], texts[0])
        np.testing.assert_allclose(single, p[0], rtol=1e-5, atol=1e-6)
        assert head.info["train_rows"] == len(texts)
        assert (head.lexical is None) == (config.ngram_max == 0)


def test_two_labels_make_a_softmax_pair() -> None:
    texts, labels, vecs = synthetic()
    keep = [i for i, y in enumerate(labels) if y != "c"]
    head = fit_head(
        name="t",
        version=1,
        texts=[texts[i] for i in keep],
        labels=[labels[i] for i in keep],
        vectors=vecs[keep],
        model="m",
        revision="r",
        config=TrainConfig(ngram_max=0),
    )
    assert head.weights.shape == (2, 8)
    assert head.labels[int(head.probabilities(vecs[0]).argmax())] == "a"


def test_training_set_title_forms() -> None:
    text = "Footwear with outer soles of rubber (excl. waterproof), for men, n.e.s."
    texts, labels, weights = training_set([Example(text, "64")], True, 0.3, forms="title")
    assert texts[0] == text
    assert weights[0] == 1.0
    assert "Footwear with outer soles of rubber, for men" in texts
    assert set(labels) == {"64"}
    assert set(weights[1:]) == {0.3}
    with pytest.raises(ValueError, match="forms must be one of"):
        training_set([Example(text, "64")], True, 0.3, forms="nope")
