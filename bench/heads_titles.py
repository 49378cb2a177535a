"""Hand-written training titles beside CN2023, chosen on validation and shop dev only.

    .venv/bin/python -m bench.heads_titles --artifacts ../main/artifacts --seed 0 fit
    .venv/bin/python -m bench.heads_titles --artifacts ../main/artifacts blend

The shop-title errors left by the prototypes turn on shop vocabulary the nomenclature never
uses (brands, product names, pack formats). ``embark/heads/data/train_titles.tsv`` holds shop
titles written for *training* (CC0; written without sight of ``shop_titles.tsv``, the dev and
report set, which stays out of every fit). ``fit`` fits the default head's regression on each
split's CN2023 train part plus the titles at each sample weight in ``TITLE_WEIGHTS`` and keeps
its logits on validation, test, shop dev and shop report in ``bench/cache`` (weight 0 is
``bench.heads_protos``' own fit, reused). ``blend`` adds the label prototypes, with or without
the titles among them, scores every combination and seed, chooses on held-out-heading
validation and shop dev (``choose``) and writes ``bench/results/heads-<model>/titles.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.heads_cache import TextVectors
from bench.heads_protos import CACHE, RESULTS, SETS, fit_logits, logits_path, scored_sets, write_doc
from bench.stack import machine
from embark.heads.artifact import softmax
from embark.heads.dataset import (
    TRAIN_TITLES,
    Example,
    cn_examples,
    load_cn2023,
    load_examples,
    load_shop_titles,
    load_train_titles,
)
from embark.heads.evaluate import make_splits
from embark.heads.prototypes import build_prototypes, prototype_rows
from embark.heads.scoring import score
from embark.heads.train import TrainConfig

TITLE_WEIGHTS = (0.0, 1.0, 3.0, 10.0)
PROTO_WEIGHTS = (5.0, 7.5, 10.0, 15.0, 20.0)
# Whether the titles are also among the label prototypes (the default design, heading+forms:
# the titles' group is "titles", so one centroid per chapter of its titles and their forms).
TITLE_PROTOS = ("no", "yes")


def with_weight(examples: Sequence[Example], weight: float) -> list[Example]:
    """``examples`` counting ``weight`` each in a fit (none at 0)."""
    return [dataclasses.replace(e, weight=weight) for e in examples] if weight > 0 else []


def _cache(model: str, titles: str, weight: float, seed: int, split: str) -> Path:
    if weight == 0:  # the default head's regression without titles: bench.heads_protos fits it
        return logits_path(model, seed, split)
    return CACHE / f"titles-{model}-{titles}-w{weight:g}-seed{seed}-{split}.npz"


def _tag(titles: Path | None) -> str:
    """A titles file's short content hash: its fits are cached apart from another file's."""
    return hashlib.blake2b((titles or TRAIN_TITLES).read_bytes(), digest_size=4).hexdigest()


def fit(
    artifacts: Path, model: str, seed: int, titles: Path | None, weights: Sequence[float]
) -> None:
    embed = TextVectors(artifacts, model)
    examples = cn_examples(load_cn2023(CACHE))
    shop = load_shop_titles()
    extra = load_train_titles(titles)
    for split in make_splits(examples, seed=seed).values():
        sets = scored_sets(examples, split, shop)
        for weight in weights:
            path = _cache(model, _tag(titles), weight, seed, split.name)
            if path.exists():
                continue
            train = [examples[i] for i in split.train] + with_weight(extra, weight)
            seconds = fit_logits(embed, train, sets, model, path)
            print(seed, split.name, weight, seconds, flush=True)


def blend(artifacts: Path, model: str, seeds: list[int], titles: Path | None) -> None:
    embed = TextVectors(artifacts, model)
    examples = cn_examples(load_cn2023(CACHE))
    shop = load_shop_titles()
    extra = load_train_titles(titles)
    started = machine()
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        for split in make_splits(examples, seed=seed).values():
            sets = scored_sets(examples, split, shop)
            vectors = {k: embed(t) for k, (t, _) in sets.items()}
            train = [examples[i] for i in split.train]
            for weight in TITLE_WEIGHTS:
                path = _cache(model, _tag(titles), weight, seed, split.name)
                if not path.exists():
                    continue
                saved = np.load(path)
                classes = [str(c) for c in saved["classes"]]
                # A head fitted on the titles has their labels, so their prototypes too (a
                # held-out chapter may exist through the titles alone).
                for where in TITLE_PROTOS if weight == 0 else ("yes",):
                    # (a held-out split can hold out a whole chapter: the regression fitted
                    # without titles has no such class, and its prototypes cannot add one)
                    known = [e for e in extra if e.label in classes]
                    rows_of = train + (known if where == "yes" else [])
                    p_texts, p_labels, p_groups = prototype_rows(rows_of, TrainConfig().prototypes)
                    protos = build_prototypes(embed(p_texts), p_labels, p_groups, classes, 1.0)
                    sims = {k: protos.scores(v) for k, v in vectors.items()}
                    for p_weight in PROTO_WEIGHTS:
                        row: dict[str, Any] = {
                            "seed": seed,
                            "split": split.name,
                            "titles_weight": weight,
                            "title_protos": where,
                            "proto_weight": p_weight,
                            "prototypes": len(protos.owner),
                        }
                        for name in SETS:
                            logits = saved[name] + p_weight * sims[name]
                            s = score(softmax(logits.astype(np.float32)), classes, sets[name][1])
                            for metric in ("top1", "top3", "ece"):
                                row[f"{name} {metric}"] = round(getattr(s, metric), 4)
                        rows.append(row)
            print(seed, split.name, flush=True)
    doc: dict[str, Any] = {"machine": started, "titles": len(extra), "rows": rows}
    doc["chosen"] = choose(rows)
    print("chosen:", doc["chosen"])
    doc["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = RESULTS / f"heads-{model}"
    out.mkdir(parents=True, exist_ok=True)
    write_doc(out / ("titles.json" if titles is None else f"titles-{titles.stem}.json"), doc)
    print(titles_table(doc))


Key = tuple[float, str, float]
DEFAULT: Key = (0.0, "no", 5.0)  # the head as it was: no titles, heading+forms at 5


def _means(rows: Sequence[dict[str, Any]]) -> dict[tuple[Key, str], dict[str, list[float]]]:
    """(titles weight, title prototypes, prototype weight), split -> metric -> one per seed."""
    out: dict[tuple[Key, str], dict[str, list[float]]] = {}
    for r in rows:
        key = (float(r["titles_weight"]), str(r["title_protos"]), float(r["proto_weight"]))
        into = out.setdefault((key, str(r["split"])), {})
        for metric, value in r.items():
            if " " in metric:
                into.setdefault(metric, []).append(float(value))
    return out


def choose(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Among settings whose mean held-out-heading validation top-1 is at most one point below
    the head without titles (``DEFAULT``): the best mean shop-dev top-1 (random split's train),
    ties to the fewer prototypes (the cheaper to serve)."""
    means = _means(rows)
    held = "val top1"
    floor = float(np.mean(means[(DEFAULT, "heldout-group")][held])) - 0.01
    ok = [
        key
        for (key, split) in means
        if split == "heldout-group" and float(np.mean(means[(key, split)][held])) >= floor
    ]
    cost = {"no": 0, "yes": 1}
    dev = {k: round(float(np.mean(means[(k, "random")]["shop-dev top1"])), 4) for k in ok}
    best = max(ok, key=lambda k: (dev[k], -cost[k[1]]))
    return {"titles_weight": best[0], "title_protos": best[1], "proto_weight": best[2],
            "rule": choose.__doc__}  # fmt: skip


def titles_table(doc: dict[str, Any]) -> str:
    """The head without titles, then the chosen prototype weight's rows: mean ± sd."""
    means = _means(doc["rows"])
    chosen = doc["chosen"]
    keys: list[Key] = [DEFAULT]
    for weight in TITLE_WEIGHTS:
        for where in TITLE_PROTOS:
            key = (weight, where, float(chosen["proto_weight"]))
            if key not in keys:
                keys.append(key)
    cols = ["val top1", "test top1", "shop-dev top1", "shop-dev top3",
            "shop-report top1", "shop-report top3", "shop-report ece"]  # fmt: skip
    heads = " | ".join(c.replace("top", "top-") for c in cols)
    lines = [
        f"| split | titles weight | titles as prototypes | prototype weight | seeds | {heads} |",
        "| --- | --- | --- | --- | --- |" + " --- |" * len(cols),
    ]
    picked = _chosen_key(doc)
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
            mark = " (chosen)" if key == picked else ""
            seeds = len(metrics[cols[0]])
            lines.append(
                f"| {split} | {key[0]:g}{mark} | {key[1]} | {key[2]:g} | {seeds} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines) + "\n"


def report(doc: dict[str, Any]) -> str:
    """The doc's table (``make bench-report``)."""
    return titles_table(doc)


# Each batch of titles as it was measured (the files ``blend`` wrote for it), in order.
BATCHES = (
    ("1", "titles-batch1.json", "titles-batch1-strict07.json"),
    ("1-2", "titles-batch12.json", "titles-batch12-strict07.json"),
    ("1-3 (shipped)", "titles.json", "titles-strict07.json"),
)


def batches_table(folder: Path) -> str:
    """Per batch: the chosen setting's means (random split's train, 3 seeds), with the held-out
    split's test and the strict decontamination's report part beside."""
    lines = [
        "| batches | titles | titles weight | prototype weight | shop-dev top-1 | shop-dev top-3 "
        "| shop-report top-1 | shop-report top-3 | held-out test top-1 | strict: titles "
        "| strict: shop-report top-1 / top-3 |",
        "| --- |" + " --- |" * 10,
    ]
    for name, file, strict_file in BATCHES:
        doc = json.loads((folder / file).read_text())
        strict = json.loads((folder / strict_file).read_text())
        key = _chosen_key(doc)
        m, held = _means(doc["rows"])[(key, "random")], _means(doc["rows"])[(key, "heldout-group")]
        s = _means(strict["rows"])[(_chosen_key(strict), "random")]

        def pct(values: list[float]) -> str:
            return f"{np.mean(values):.1%} ± {np.std(values, ddof=1):.1%}"

        lines.append(
            f"| {name} | {doc['titles']:,} | {key[0]:g} | {key[2]:g} | {pct(m['shop-dev top1'])} "
            f"| {pct(m['shop-dev top3'])} | {pct(m['shop-report top1'])} "
            f"| {pct(m['shop-report top3'])} | {pct(held['test top1'])} | {strict['titles']:,} "
            f"| {np.mean(s['shop-report top1']):.1%} / {np.mean(s['shop-report top3']):.1%} |"
        )
    return "\n".join(lines) + "\n"


def _chosen_key(doc: dict[str, Any]) -> Key:
    c = doc["chosen"]
    return (float(c["titles_weight"]), str(c["title_protos"]), float(c["proto_weight"]))


# Titles this near an evaluation title (cosine under the served MiniLM-L6) are near-twins of it
# (the same product listed again: "Dried Red Lentils 1kg" and "Dried Red Split Lentils 1kg Bulk
# Pack" at 0.83) and are not shipped: they would score the evaluation against itself.
TWIN_COSINE = 0.8


def nearest_eval_cosine(embed: TextVectors, titles: Sequence[Example]) -> np.ndarray:
    """Each title's best cosine with any shop-title evaluation title (dev and report)."""
    shop = load_shop_titles()
    a, b = embed([e.text for e in titles]), embed([e.text for e in shop])
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a @ b.T).max(axis=1))


def decontaminate(
    artifacts: Path, model: str, source: Path, out: Path, below: float = TWIN_COSINE
) -> None:
    """Write ``source``'s titles without the near-twins of evaluation titles to ``out``."""
    titles = load_examples(str(source))
    near = nearest_eval_cosine(TextVectors(artifacts, model), titles)
    kept = [e for e, c in zip(titles, near, strict=True) if c < below]
    out.write_text(
        "text\tlabel\n" + "".join(f"{e.text}\t{e.label}\n" for e in kept), encoding="utf-8"
    )
    print(f"{len(kept)} of {len(titles)} titles kept; {len(titles) - len(kept)} near-twins out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--seed", type=int, default=0, help="the splits' seed (fit)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated (blend)")
    parser.add_argument("--titles", type=Path, help="training titles (default: the shipped set)")
    parser.add_argument("--out", type=Path, help="where decontaminate writes the kept titles")
    parser.add_argument("--twin-cosine", type=float, default=TWIN_COSINE, help="decontaminate")
    parser.add_argument("--weights", help="comma-separated titles weights (fit; default: all)")
    parser.add_argument("action", choices=("fit", "blend", "table", "decontaminate"))
    args = parser.parse_args()
    if args.action == "fit":
        weights = [float(w) for w in args.weights.split(",")] if args.weights else TITLE_WEIGHTS
        fit(args.artifacts, args.model, args.seed, args.titles, weights)
    elif args.action == "decontaminate":
        if args.titles is None or args.out is None:
            parser.error("decontaminate needs --titles (written) and --out (shipped)")
        decontaminate(args.artifacts, args.model, args.titles, args.out, args.twin_cosine)
    elif args.action == "table":
        doc = json.loads((RESULTS / f"heads-{args.model}" / "titles.json").read_text())
        print(titles_table(doc), end="")
    else:
        blend(args.artifacts, args.model, [int(x) for x in args.seeds.split(",")], args.titles)


if __name__ == "__main__":
    main()
