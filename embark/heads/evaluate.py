"""Evaluating a head design on labelled data, beside baselines fitted in the same run.

Two splits: a random stratified 80/20, and one holding out whole groups (for CN2023 the HS4
heading: the test products are of kinds never seen in training, the harder and more honest
case). Each is scored on the full test texts and on their shortened forms (``shorten``: the
first words of the first clause, the nearest thing in this data to a short, shop-style product
title). Methods:

    tfidf       TF-IDF word 1-2 grams + logistic regression (the lexical baseline)
    embedding   logistic regression on the cached embedding alone (the embedding baseline)
    head-noaug  the served design (embedding + TF-IDF, balanced) without shortened training forms
    head        the served design as ``embark heads train`` fits it

Scores are top-1 and top-3 accuracy; the head's scores come from the numpy serving path
(``Head.probabilities``), not from scikit-learn, so they are what Categorize answers. Written:
``results.json``, ``results.md`` (the table), ``per_class.txt`` and ``confusion.png``.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from embark.heads.artifact import Head, softmax
from embark.heads.dataset import Example
from embark.heads.train import TrainConfig, fit_head, shorten, training_set

log = logging.getLogger(__name__)

METHODS = ("tfidf", "embedding", "head-noaug", "head")
Embed = Callable[[Sequence[str]], npt.NDArray[np.float32]]


@dataclass(frozen=True, slots=True)
class Score:
    split: str
    method: str
    top1: float
    top3: float
    short_top1: float
    short_top3: float
    train_rows: int
    test_rows: int
    seconds: float


def make_splits(
    examples: Sequence[Example], *, seed: int = 0, test_size: float = 0.2
) -> dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    from sklearn.model_selection import GroupShuffleSplit, train_test_split  # type: ignore[import-untyped]

    labels = np.array([e.label for e in examples])
    index = np.arange(len(examples))
    counts = np.unique(labels, return_counts=True)[1]
    stratify = labels if counts.min() >= 2 and len(counts) <= test_size * len(labels) else None
    train, test = train_test_split(index, test_size=test_size, random_state=seed, stratify=stratify)
    out = {"random": (np.sort(train), np.sort(test))}
    groups = np.array([e.group for e in examples])
    if all(groups) and len(set(groups)) >= 5:
        gss = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
        g_train, g_test = next(gss.split(index, labels, groups))
        out["heldout-group"] = (np.sort(g_train), np.sort(g_test))
    return out


def short_form(text: str) -> str:
    forms = shorten(text)
    return forms[-1] if forms else text


def _topk_scores(
    probabilities: npt.NDArray[np.float32], classes: Sequence[str], truth: Sequence[str]
) -> tuple[float, float]:
    order = np.argsort(-probabilities, axis=1)[:, :3]
    names = np.asarray(classes)[order]
    truth_arr = np.asarray(truth)
    top1 = float(np.mean(names[:, 0] == truth_arr))
    top3 = float(np.mean((names == truth_arr[:, None]).any(axis=1)))
    return top1, top3


def head_probabilities(
    head: Head, vectors: npt.NDArray[np.float32], texts: Sequence[str]
) -> npt.NDArray[np.float32]:
    """The serving path, batched: embedding mat-mul plus each text's lexical features."""
    return softmax(head.batch_logits(vectors, texts))


def _sklearn_fit(features: Any, labels: Sequence[str], c: float) -> Any:
    from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    clf = LogisticRegression(C=c, max_iter=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(features, np.asarray(labels))
    return clf


def evaluate(
    examples: Sequence[Example],
    embed: Embed,
    *,
    model: str,
    revision_of: Callable[[], str],
    config: TrainConfig,
    out_dir: Path,
    methods: Sequence[str] = METHODS,
    seed: int = 0,
    progress: bool = True,
) -> list[Score]:
    """Fit and score each method on each split; write the report files into ``out_dir``."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-untyped]

    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    texts = [e.text for e in examples]
    labels = [e.label for e in examples]
    shorts = [short_form(t) for t in texts]
    aug_texts = [form for t in texts for form in shorten(t)]
    table = dict(
        zip(
            all_texts := list(dict.fromkeys([*texts, *shorts, *aug_texts])),
            embed(all_texts),
            strict=True,
        )
    )

    revision = revision_of()  # known once the embeddings came back

    def vecs(items: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.stack([table[t] for t in items]).astype(np.float32)

    scores: list[Score] = []
    head_for_report: tuple[Head, list[str], list[str]] | None = None
    splits = make_splits(examples, seed=seed)
    jobs = [(s, m) for s in splits for m in methods]
    for split, method in tqdm(jobs, desc="evaluation", disable=not progress):
        train, test = splits[split]
        tr_texts = [texts[i] for i in train]
        tr_labels = [labels[i] for i in train]
        te_texts = [texts[i] for i in test]
        te_short = [shorts[i] for i in test]
        te_labels = [labels[i] for i in test]
        started = time.perf_counter()
        if method == "tfidf":
            vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
            clf = _sklearn_fit(vectorizer.fit_transform(tr_texts), tr_labels, config.c)
            classes = [str(c) for c in clf.classes_]
            p_full = clf.predict_proba(vectorizer.transform(te_texts))
            p_short = clf.predict_proba(vectorizer.transform(te_short))
            rows = len(tr_texts)
        elif method == "embedding":
            clf = _sklearn_fit(vecs(tr_texts), tr_labels, config.c)
            classes = [str(c) for c in clf.classes_]
            p_full = clf.predict_proba(vecs(te_texts))
            p_short = clf.predict_proba(vecs(te_short))
            rows = len(tr_texts)
        else:
            cfg = config if method == "head" else replace(config, augment=False)
            fit_texts, fit_labels, fit_weights = training_set(
                [examples[i] for i in train], cfg.augment, cfg.augment_weight
            )
            head = fit_head(
                name="eval",
                version=1,
                texts=fit_texts,
                labels=fit_labels,
                sample_weight=fit_weights,
                vectors=vecs(fit_texts),
                model=model,
                revision=revision,
                config=cfg,
            )
            classes = list(head.labels)
            p_full = head_probabilities(head, vecs(te_texts), te_texts)
            p_short = head_probabilities(head, vecs(te_short), te_short)
            rows = len(fit_texts)
            if method == "head" and split == "random":
                predicted = [classes[i] for i in np.argmax(p_full, axis=1)]
                head_for_report = (head, te_labels, predicted)
        top1, top3 = _topk_scores(p_full, classes, te_labels)
        s1, s3 = _topk_scores(p_short, classes, te_labels)
        score = Score(
            split, method, top1, top3, s1, s3, rows, len(test), time.perf_counter() - started
        )
        log.info("%s", score)
        scores.append(score)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(
        json.dumps(
            {
                "model": model,
                "revision": revision,
                "config": asdict(config),
                "seed": seed,
                "examples": len(examples),
                "scores": [asdict(s) for s in scores],
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    (out_dir / "results.md").write_text(markdown_table(scores), encoding="utf-8")
    if head_for_report is not None:
        head, truth, predicted = head_for_report
        write_per_class(out_dir / "per_class.txt", truth, predicted)
        write_confusion(out_dir / "confusion.png", truth, predicted, list(head.labels))
    return scores


def markdown_table(scores: Sequence[Score]) -> str:
    lines = [
        "| split | method | top-1 | top-3 | short top-1 | short top-3 | train rows | test rows "
        "| s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines.extend(
        f"| {s.split} | {s.method} | {s.top1:.1%} | {s.top3:.1%} | {s.short_top1:.1%} | "
        f"{s.short_top3:.1%} | {s.train_rows} | {s.test_rows} | {s.seconds:.0f} |"
        for s in scores
    )
    return "\n".join(lines) + "\n"


def write_per_class(path: Path, truth: Sequence[str], predicted: Sequence[str]) -> None:
    from sklearn.metrics import classification_report  # type: ignore[import-untyped]

    report = classification_report(truth, predicted, zero_division=0, digits=3)
    path.write_text(str(report), encoding="utf-8")


def write_confusion(
    path: Path, truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
) -> None:
    """A row-normalised confusion matrix as a PNG (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(truth, predicted, labels=list(labels)).astype(np.float64)
    matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1.0)
    size = max(6.0, len(labels) * 0.12)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels=list(labels), fontsize=5, rotation=90)
    ax.set_yticks(ticks, labels=list(labels), fontsize=5)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("head, random split (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
