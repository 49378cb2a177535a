"""Evaluating a head design beside baselines fitted the same way, on splits that cannot flatter.

Splits, one set per seed (``make_splits``): ``random`` (stratified) and ``heldout-group`` (whole
groups held out; for CN2023 the HS4 heading: products of kinds never seen in training). Each has
three disjoint parts: train (70%), validation (10%) and test (20%). Every choice is made on
validation: the baselines' C is picked there from ``BASELINE_C``; the head's design was chosen
on validation and on the shop-title *dev* part by ``bench/heads_select.py``, and is passed in.
The test part is scored once per seed, and the table shows the mean and spread over seeds.

Sets scored (each with top-1, top-3, ECE and the section top-1 implied by the chapters):

    test          the split's test descriptions
    test-short    three words sampled from each test description (``word_sample``): a short
                  input made by a function unrelated to the training forms
    shop-dev      hand-written shop titles (heads/data/shop_titles.tsv), the part used for choices
    shop-report   the other part, never used for any choice

Methods, all with balanced class weights:

    tfidf       TF-IDF word 1-2 grams + logistic regression (the lexical baseline)
    embedding   logistic regression on the cached embedding alone (the embedding baseline)
    head        the served design as ``embark heads train`` fits it, scored through the numpy
                serving path (``Head.batch_logits``), so what Categorize answers

Written: ``results.json`` (every score of every seed, the means and spreads, the abstain
curve), ``results.md`` (the table), ``per_class.txt``, ``confusion.png`` (CN test) and
``confusion-shop.png`` (shop titles).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from embark.heads.artifact import softmax
from embark.heads.dataset import Example
from embark.heads.prototypes import prototype_rows
from embark.heads.scoring import F32, Scores, abstain_curve, score
from embark.heads.train import TrainConfig, augment_forms, fit_head, training_set

log = logging.getLogger(__name__)

METHODS = ("tfidf", "embedding", "head")
BASELINE_C = (1.0, 10.0, 100.0)
SEEDS = (0, 1, 2)
Embed = Callable[[Sequence[str]], npt.NDArray[np.float32]]
Predict = Callable[[Sequence[str]], F32]
_WORD = re.compile(r"[A-Za-z][A-Za-z-]{2,}")
_STOP = frozenset(
    "and the for with other than not from into that their its this excl incl".split()  # noqa: SIM905
)


@dataclass(frozen=True, slots=True)
class Split:
    name: str
    train: npt.NDArray[np.int64]
    val: npt.NDArray[np.int64]
    test: npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Result:
    """One method, fitted on one split of one seed, scored on one set."""

    split: str
    method: str
    seed: int
    set: str
    scores: Scores
    c: float
    fit_seconds: float


def make_splits(
    examples: Sequence[Example], *, seed: int = 0, test_size: float = 0.2, val_size: float = 0.1
) -> dict[str, Split]:
    """Disjoint train / validation / test index sets: ``random`` (stratified when every label
    has enough rows) and, when the examples carry groups, ``heldout-group``."""
    from sklearn.model_selection import GroupShuffleSplit, train_test_split  # type: ignore[import-untyped]

    labels = np.array([e.label for e in examples])
    index = np.arange(len(examples))
    counts = np.unique(labels, return_counts=True)[1]
    strat = counts.min() >= 3 and len(counts) <= val_size * len(labels)
    rest, test = train_test_split(
        index, test_size=test_size, random_state=seed, stratify=labels if strat else None
    )
    train, val = train_test_split(
        rest,
        test_size=val_size / (1 - test_size),
        random_state=seed,
        stratify=labels[rest] if strat else None,
    )
    out = {"random": Split("random", np.sort(train), np.sort(val), np.sort(test))}
    groups = np.array([e.group for e in examples])
    if all(groups) and len(set(groups)) >= 10:
        outer = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
        g_rest, g_test = next(outer.split(index, labels, groups))
        inner = GroupShuffleSplit(
            n_splits=1, test_size=val_size / (1 - test_size), random_state=seed
        )
        g_train, g_val = next(inner.split(g_rest, labels[g_rest], groups[g_rest]))
        out["heldout-group"] = Split(
            "heldout-group", np.sort(g_rest[g_train]), np.sort(g_rest[g_val]), np.sort(g_test)
        )
    return out


def word_sample(text: str, words: int = 3) -> str:
    """``words`` content words of ``text`` drawn at random (seeded by the text), kept in order:
    the CN "short" input. Unrelated to the training forms on purpose (cuts of the same text
    would score the augmentation against itself)."""
    found = [w for w in _WORD.findall(text) if w.lower() not in _STOP]
    if len(found) <= words:
        return " ".join(found) or text
    rng = random.Random(text)
    return " ".join(found[i] for i in sorted(rng.sample(range(len(found)), words)))


def _logreg(features: Any, labels: Sequence[str], c: float) -> Any:
    from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    clf = LogisticRegression(C=c, max_iter=300, class_weight="balanced")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(features, np.asarray(labels))
    return clf


def fit_method(
    method: str,
    train: Sequence[Example],
    embed: Embed,
    *,
    config: TrainConfig,
    c: float,
    model: str = "eval",
    revision: str = "eval",
) -> tuple[list[str], Predict]:
    """Fit ``method`` on ``train``; return its classes and a texts -> probabilities function."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-untyped]

    texts = [e.text for e in train]
    labels = [e.label for e in train]
    if method == "tfidf":
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        clf = _logreg(vectorizer.fit_transform(texts), labels, c)
        return [str(x) for x in clf.classes_], lambda t: clf.predict_proba(vectorizer.transform(t))
    if method == "embedding":
        clf = _logreg(embed(texts), labels, c)
        return [str(x) for x in clf.classes_], lambda t: clf.predict_proba(embed(t))
    if method != "head":
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    fit_texts, fit_labels, fit_weights = training_set(
        train, config.augment, config.augment_weight, config.forms
    )
    p_texts, p_labels, p_groups = prototype_rows(train, config.prototypes)
    head = fit_head(
        name="eval",
        version=1,
        texts=fit_texts,
        labels=fit_labels,
        sample_weight=fit_weights,
        vectors=embed(fit_texts),
        prototypes=(embed(p_texts), p_labels, p_groups) if p_texts else None,
        model=model,
        revision=revision,
        config=config,
    )
    return list(head.labels), lambda t: softmax(head.batch_logits(embed(t), list(t)))


def evaluate(
    examples: Sequence[Example],
    embed: Embed,
    *,
    model: str,
    config: TrainConfig,
    out_dir: Path,
    shop: Sequence[Example] = (),
    extra_train: Sequence[Example] = (),
    methods: Sequence[str] = METHODS,
    seeds: Sequence[int] = SEEDS,
    progress: bool = True,
) -> list[Result]:
    """Fit and score each method on each split of each seed; write the report into ``out_dir``.
    ``shop`` examples carry their part ("dev" or "report") as their group. ``extra_train``
    (the training titles) joins every split's train part, never a validation or test part."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    texts = [e.text for e in examples]
    shorts = [word_sample(t) for t in texts]
    forms = [f for t in texts for f in augment_forms(t, config.forms)] if config.augment else []
    shop_texts = [e.text for e in shop]
    extra = [e.text for e in extra_train]
    extra += [f for t in extra for f in augment_forms(t, config.forms)] if config.augment else []
    embed(list(dict.fromkeys([*texts, *shorts, *forms, *shop_texts, *extra])))  # one fetch
    shop_parts = {p: [e for e in shop if e.group == p] for p in ("dev", "report")}
    results: list[Result] = []
    kept: dict[str, tuple[F32, list[str], list[str]]] = {}
    jobs = [(s, m) for s in seeds for m in methods]
    for seed, method in tqdm(jobs, desc="fits", unit="fit", disable=not progress):
        for split in make_splits(examples, seed=seed).values():
            train = [examples[i] for i in split.train] + list(extra_train)
            grid = BASELINE_C if method != "head" else (config.c,)
            best: tuple[float, float, list[str], Predict, float] | None = None
            for c in grid:
                started = time.perf_counter()
                classes, predict = fit_method(method, train, embed, config=config, c=c)
                seconds = time.perf_counter() - started
                val = [examples[i] for i in split.val]
                top1 = score(predict([e.text for e in val]), classes, [e.label for e in val]).top1
                if best is None or top1 > best[0]:
                    best = (top1, c, classes, predict, seconds)
            assert best is not None
            _, c, classes, predict, seconds = best
            sets: dict[str, tuple[list[str], list[str]]] = {
                name: ([pick[i] for i in items], [examples[i].label for i in items])
                for name, items, pick in (
                    ("val", split.val, texts),
                    ("test", split.test, texts),
                    ("test-short", split.test, shorts),
                )
            }
            for part, members in shop_parts.items():
                if members:
                    sets[f"shop-{part}"] = ([e.text for e in members], [e.label for e in members])
            for name, (items_text, truth) in sets.items():
                p = predict(items_text)
                res = Result(split.name, method, seed, name, score(p, classes, truth), c, seconds)
                log.info("%s", res)
                results.append(res)
                if method == "head" and seed == seeds[0] and split.name == "random":
                    kept[name] = (p, classes, truth)
    write_report(
        out_dir, results, kept, model=model, config=config, examples=len(examples),
        extra_train=len(extra_train),
    )  # fmt: skip
    return results


def summary(results: Sequence[Result]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of each (split, method, set)."""
    groups: dict[tuple[str, str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.split, r.method, r.set), []).append(r)
    out = []
    for (split, method, name), rows in groups.items():
        entry: dict[str, Any] = {"split": split, "method": method, "set": name, "seeds": len(rows)}
        for metric in ("top1", "top3", "ece", "section_top1"):
            values = np.array([getattr(r.scores, metric) for r in rows], dtype=np.float64)
            entry[metric] = float(values.mean())
            entry[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        entry["c"] = sorted({r.c for r in rows})
        entry["rows"] = rows[0].scores.rows
        out.append(entry)
    return out


def markdown_table(results: Sequence[Result]) -> str:
    """One row per (split, method); cells are mean ± standard deviation over seeds."""
    table = {(e["split"], e["method"], e["set"]): e for e in summary(results)}
    rows = sorted({(k[0], k[1]) for k in table}, key=lambda k: (k[0], METHODS.index(k[1])))
    cols = [
        ("test", "top1", "test top-1"),
        ("test", "top3", "test top-3"),
        ("test", "ece", "test ECE"),
        ("test-short", "top1", "short top-1"),
        ("shop-dev", "top1", "shop-dev top-1"),
        ("shop-dev", "top3", "shop-dev top-3"),
        ("shop-report", "top1", "shop-report top-1"),
        ("shop-report", "top3", "shop-report top-3"),
        ("shop-report", "ece", "shop-report ECE"),
        ("shop-report", "section_top1", "shop-report section"),
    ]
    cols = [c for c in cols if any((r[0], r[1], c[0]) in table for r in rows)]
    seeds = max((e["seeds"] for e in table.values()), default=0)
    lines = [
        f"| split | method | C | {' | '.join(c[2] for c in cols)} |",
        "| --- | --- | --- |" + " --- |" * len(cols),
    ]
    for split, method in rows:
        cells = []
        for name, metric, _ in cols:
            e = table.get((split, method, name))
            if e is None:
                cells.append("")
            elif metric == "ece":
                cells.append(f"{e[metric]:.3f} ± {e[metric + '_std']:.3f}")
            else:
                cells.append(f"{e[metric]:.1%} ± {e[metric + '_std']:.1%}")
        c = ",".join(f"{x:g}" for x in table[(split, method, "test")]["c"])
        lines.append(f"| {split} | {method} | {c} | {' | '.join(cells)} |")
    return "\n".join(lines) + f"\n\nmean ± standard deviation over {seeds} seeds\n"


def write_report(
    out_dir: Path,
    results: Sequence[Result],
    kept: dict[str, Any],
    *,
    model: str,
    config: TrainConfig,
    examples: int,
    extra_train: int = 0,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "model": model,
        "config": asdict(config),
        "examples": examples,
        "extra_train": extra_train,
        "baseline_c_grid": list(BASELINE_C),
        "summary": summary(results),
        "results": [
            {**{k: v for k, v in asdict(r).items() if k != "scores"}, **asdict(r.scores)}
            for r in results
        ],
    }
    if "shop-report" in kept:
        doc["abstain_shop_report"] = abstain_curve(*kept["shop-report"])
    (out_dir / "results.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out_dir / "results.md").write_text(markdown_table(results), encoding="utf-8")
    if "test" in kept:
        p, classes, truth = kept["test"]
        predicted = [classes[i] for i in p.argmax(axis=1)]
        write_per_class(out_dir / "per_class.txt", truth, predicted)
        write_confusion(out_dir / "confusion.png", truth, predicted, classes, "CN2023 test")
    shop_parts = [kept[k] for k in ("shop-dev", "shop-report") if k in kept]
    if shop_parts:
        classes = shop_parts[0][1]
        truth = [t for part in shop_parts for t in part[2]]
        predicted = [classes[i] for part in shop_parts for i in part[0].argmax(axis=1)]
        shown = sorted(set(truth) | set(predicted))
        write_confusion(out_dir / "confusion-shop.png", truth, predicted, shown, "shop titles")


def write_per_class(path: Path, truth: Sequence[str], predicted: Sequence[str]) -> None:
    from sklearn.metrics import classification_report  # type: ignore[import-untyped]

    report = classification_report(truth, predicted, zero_division=0, digits=3)
    path.write_text(str(report), encoding="utf-8")


def write_confusion(
    path: Path, truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str], what: str
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
    ax.set_title(f"head, random split, {what} (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
