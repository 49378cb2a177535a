"""Prototype scores blended with the head's logistic regression, chosen on validation only.

    .venv/bin/python -m bench.heads_protos --artifacts ../main/artifacts --seed 0 fit
    .venv/bin/python -m bench.heads_protos --artifacts ../main/artifacts blend

``fit`` fits the default head (``TrainConfig()``) on the train part of one seed's splits and
keeps its logits on every scored set (validation, test, shop dev, shop report) in
``bench/cache`` (not committed: the cost is the fit, minutes each on two shared cores).
``blend`` then scores, for each candidate prototype design, the head's logits plus a weight
times the prototype log-probabilities (``embark.heads.prototypes``), chooses the design and
weight on validation (random and held-out headings) and the shop-title dev part only, and
writes every score of every seed to ``bench/results/heads-<model>/protos.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.heads_cache import TextVectors
from bench.stack import machine
from embark.heads.artifact import softmax
from embark.heads.dataset import Example, cn_examples, load_cn2023, load_shop_titles, section_of
from embark.heads.evaluate import Split, make_splits
from embark.heads.prototypes import DESIGNS, build_prototypes, prototype_rows
from embark.heads.scoring import score
from embark.heads.train import TrainConfig, fit_head, training_set

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / "cache"
SETS = ("val", "test", "shop-dev", "shop-report")
WEIGHTS = (0.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 40.0)
# Which training rows make prototypes, and how they are grouped into one centroid each.
DESIGNS = [d for d in DESIGNS if d != "none"]
SECTION_WEIGHTS = (0.0, 0.5)


def section_logits(logits: np.ndarray, classes: list[str], weight: float) -> np.ndarray:
    """Hierarchical consistency: each chapter's logit plus ``weight`` x the log-probability of
    its section (the sum of its chapters' probabilities)."""
    if weight == 0:
        return logits
    p = softmax(logits.astype(np.float32))
    sections = [section_of(c) for c in classes]
    names = sorted(set(sections))
    member = np.zeros((len(classes), len(names)), dtype=np.float32)
    for i, sec in enumerate(sections):
        member[i, names.index(sec)] = 1.0
    per_section = p @ member  # inputs x sections
    return logits + weight * np.log(np.maximum(per_section @ member.T, 1e-9))


def logits_path(model: str, seed: int, split: str) -> Path:
    """Where ``fit`` keeps the default head's logits of one seed's split."""
    return CACHE / f"protos-{model}-seed{seed}-{split}.npz"


def scored_sets(
    examples: Sequence[Example], split: Split, shop: Sequence[Example]
) -> dict[str, tuple[list[str], list[str]]]:
    """Texts and truths of the scored sets (``SETS``): validation, test, shop dev, shop report."""
    rows = {
        "val": [examples[i] for i in split.val],
        "test": [examples[i] for i in split.test],
        "shop-dev": [e for e in shop if e.group == "dev"],
        "shop-report": [e for e in shop if e.group == "report"],
    }
    return {k: ([e.text for e in v], [e.label for e in v]) for k, v in rows.items()}


def fit_logits(
    embed: TextVectors,
    train: Sequence[Example],
    sets: dict[str, tuple[list[str], list[str]]],
    model: str,
    path: Path,
) -> float:
    """Fit the default head's regression (``TrainConfig()``: its forms, no prototypes) on
    ``train``, keep its logits on each of ``sets`` in ``path``, and return the fit's seconds."""
    config = TrainConfig()
    texts, labels, weights = training_set(
        train, config.augment, config.augment_weight, config.forms
    )
    head = fit_head(
        name="eval",
        version=1,
        texts=texts,
        labels=labels,
        sample_weight=weights,
        vectors=embed(texts),
        model=model,
        revision="eval",
        config=config,
    )
    logits = {k: head.batch_logits(embed(t), t) for k, (t, _) in sets.items()}
    np.savez(path, classes=np.asarray(head.labels), **logits)
    return float(head.info["fit_seconds"])


def blend(artifacts: Path, model: str, seeds: list[int]) -> None:
    embed = TextVectors(artifacts, model)
    examples = cn_examples(load_cn2023(CACHE))
    shop = load_shop_titles()
    started = machine()
    rows: list[dict[str, object]] = []
    for seed in seeds:
        for split in make_splits(examples, seed=seed).values():
            path = logits_path(model, seed, split.name)
            if not path.exists():
                continue
            saved = np.load(path)
            classes = [str(c) for c in saved["classes"]]
            train = [examples[i] for i in split.train]
            sets = scored_sets(examples, split, shop)
            truth = {k: labels for k, (_, labels) in sets.items()}
            vectors = {k: embed(texts) for k, (texts, _) in sets.items()}
            for design in DESIGNS:
                p_texts, p_labels, p_groups = prototype_rows(train, design)
                protos = build_prototypes(embed(p_texts), p_labels, p_groups, classes, 1.0)
                sims = {k: protos.scores(v) for k, v in vectors.items()}
                for weight in WEIGHTS:
                    for sec in SECTION_WEIGHTS:
                        if design != DESIGNS[0] and weight == 0:
                            continue  # the plain head: scored once
                        row: dict[str, object] = {
                            "seed": seed,
                            "split": split.name,
                            "design": design,
                            "weight": weight,
                            "section_weight": sec,
                        }
                        for name in SETS:
                            logits = section_logits(saved[name] + weight * sims[name], classes, sec)
                            s = score(softmax(logits.astype(np.float32)), classes, truth[name])
                            for metric in ("top1", "top3", "ece"):
                                row[f"{name} {metric}"] = round(getattr(s, metric), 4)
                        rows.append(row)
                print(seed, split.name, design, flush=True)
    doc: dict[str, Any] = {"machine": started, "rows": rows}
    doc["chosen"] = choose(rows)
    print("chosen:", doc["chosen"])
    doc["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = RESULTS / f"heads-{model}"
    out.mkdir(parents=True, exist_ok=True)
    write_doc(out / "protos.json", doc)
    print(protos_table(doc))


def write_doc(path: Path, doc: dict[str, Any]) -> None:
    """JSON with one scored row a line: small diffs, greppable."""
    head = {k: v for k, v in doc.items() if k != "rows"}
    rows = ",\n".join(json.dumps(r) for r in doc["rows"])
    path.write_text(json.dumps(head, indent=1)[:-2] + f',\n "rows": [\n{rows}\n]}}\n')


Key = tuple[str, float, float]


def _means(rows: list[dict[str, Any]]) -> dict[tuple[Key, str], dict[str, list[float]]]:
    """(design, weight, section weight), split -> metric -> one value per seed."""
    out: dict[tuple[Key, str], dict[str, list[float]]] = {}
    for r in rows:
        key = (str(r["design"]), float(r["weight"]), float(r["section_weight"]))
        into = out.setdefault((key, str(r["split"])), {})
        for metric, value in r.items():
            if " " in metric:
                into.setdefault(metric, []).append(float(value))
    return out


# Serving cost of a design: prototypes per label, hence bytes streamed per call (CN2023
# chapters: label 97, heading 1,167, nearest 9,759 x 384 float32, 15 MB: memory-bound).
COST = {"label": 0, "heading": 1, "heading+forms": 1, "nearest": 2, "nearest+forms": 2}


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Among designs whose mean held-out-heading validation top-1 is at most one point below the
    plain head's: those whose mean shop-dev top-1 (random split's train, over seeds) is within
    one seed standard deviation of the best one's; of these, the cheapest to serve (``COST``),
    then the best shop-dev top-1."""
    means = _means(rows)
    plain: Key = ("label", 0.0, 0.0)
    held = "val top1"
    floor = float(np.mean(means[(plain, "heldout-group")][held])) - 0.01
    ok = [
        key
        for (key, split) in means
        if split == "heldout-group" and float(np.mean(means[(key, split)][held])) >= floor
    ]
    dev = {k: np.array(means[(k, "random")]["shop-dev top1"]) for k in ok}
    top = max(ok, key=lambda k: float(dev[k].mean()))
    bar = float(dev[top].mean() - dev[top].std(ddof=1))
    near = [k for k in ok if float(dev[k].mean()) >= bar]
    best = min(near, key=lambda k: (COST[k[0]], -float(dev[k].mean())))
    return {
        "design": best[0], "weight": best[1], "section_weight": best[2], "rule": choose.__doc__,
        "best_dev": {"design": top[0], "weight": top[1], "section_weight": top[2]},
    }  # fmt: skip


def protos_table(doc: dict[str, Any]) -> str:
    """The plain head, the chosen design, and each design at the chosen weight: mean ± sd."""
    means = _means(doc["rows"])
    chosen = doc["chosen"]
    at = (float(chosen["weight"]), float(chosen["section_weight"]))
    keys: list[Key] = [("label", 0.0, 0.0), *((design, *at) for design in DESIGNS)]
    cols = ["val top1", "test top1", "test top3", "test ece", "shop-dev top1", "shop-dev top3",
            "shop-report top1", "shop-report top3", "shop-report ece"]  # fmt: skip
    heads = " | ".join(c.replace("top", "top-") for c in cols)
    lines = [
        f"| split | prototypes | weight | seeds | {heads} |",
        "| --- | --- | --- | --- |" + " --- |" * len(cols),
    ]  # fmt: skip
    for split in ("random", "heldout-group"):
        for key in keys:
            metrics = means.get((key, split))
            if not metrics:
                continue
            cells = []
            for c in cols:
                v = np.array(metrics[c])
                one = "{:.3f}" if "ece" in c else "{:.1%}"
                cells.append(f"{one} ± {one}".format(v.mean(), v.std(ddof=1)))
            name = "none" if key[1] == 0 else key[0]
            mark = (
                " (chosen)"
                if key == (chosen["design"], chosen["weight"], chosen["section_weight"])
                else ""
            )
            seeds = len(metrics[cols[0]])
            lines.append(f"| {split} | {name}{mark} | {key[1]:g} | {seeds} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def fit(artifacts: Path, model: str, seed: int, only: str | None) -> None:
    embed = TextVectors(artifacts, model)
    examples = cn_examples(load_cn2023(CACHE))
    shop = load_shop_titles()
    # The default head's regression alone, without the training titles (bench/heads_titles.py
    # adds them, and reuses these fits as its weight 0).
    for split in make_splits(examples, seed=seed).values():
        if only and split.name != only:
            continue
        path = logits_path(model, seed, split.name)
        if path.exists():
            continue
        train = [examples[i] for i in split.train]
        seconds = fit_logits(embed, train, scored_sets(examples, split, shop), model, path)
        print(seed, split.name, seconds, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated (blend)")
    parser.add_argument("action", choices=("fit", "blend", "table"))
    args = parser.parse_args()
    if args.action == "fit":
        fit(args.artifacts, args.model, args.seed, args.split)
    elif args.action == "table":
        doc = json.loads((RESULTS / f"heads-{args.model}" / "protos.json").read_text())
        print(protos_table(doc), end="")
    else:
        blend(args.artifacts, args.model, [int(x) for x in args.seeds.split(",")])


if __name__ == "__main__":
    main()
