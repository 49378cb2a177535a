"""Choosing the head's design on validation data only, and the final multi-seed report.

    .venv/bin/python -m bench.heads_select --artifacts ../main/artifacts select
    .venv/bin/python -m bench.heads_select --artifacts ../main/artifacts report

``select`` fits each candidate design (``CANDIDATES``) on the train part of one seed's splits
and chooses (``choose``) on the validation parts (random and held-out headings) and on the
shop-title dev part only; the test parts and the shop-title report part are scored and written
beside them, never read by the choice. ``report`` runs ``embark.heads.evaluate``
(3 seeds, baselines with C picked on validation) for the chosen design and for the first design,
writing ``bench/results/heads-<model>/`` (the same report ``embark heads eval`` writes through a
running EmbArk). Embeddings come from ``bench.heads_cache`` (in process, cached), so the figures
are those of the served artifact without a server in the loop.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from bench.heads_cache import TextVectors
from embark.heads.dataset import cn_examples, load_cn2023, load_shop_titles
from embark.heads.evaluate import evaluate, fit_method, make_splits, markdown_table
from embark.heads.scoring import score
from embark.heads.train import TrainConfig, augment_forms

RESULTS = Path(__file__).parent / "results"
FIRST = TrainConfig(forms="shorten", augment_weight=0.1)
CANDIDATES: dict[str, TrainConfig] = {
    "first (shorten 0.1)": FIRST,
    "title 0.1": TrainConfig(forms="title", augment_weight=0.1),
    "title 0.3": TrainConfig(forms="title", augment_weight=0.3),
    "title 1.0": TrainConfig(forms="title", augment_weight=1.0),
    "title 0.3, C=3": TrainConfig(forms="title", augment_weight=0.3, c=3.0),
    "title 0.3, emb x2": TrainConfig(forms="title", augment_weight=0.3, embedding_weight=2.0),
    "title 0.3, no lexical": TrainConfig(forms="title", augment_weight=0.3, ngram_max=0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--only", help="comma-separated candidate names (select)")
    parser.add_argument("--seed", type=int, default=0, help="the splits' seed (select)")
    parser.add_argument("action", choices=("select", "report"))
    args = parser.parse_args()
    embed = TextVectors(args.artifacts, args.model)
    examples = cn_examples(load_cn2023(Path(__file__).parent / "cache"))
    shop = load_shop_titles()
    out = RESULTS / f"heads-{args.model}"
    out.mkdir(parents=True, exist_ok=True)
    if args.action == "report":
        chosen = json.loads((out / "select.json").read_text())["chosen"]
        config = TrainConfig(**chosen["config"])
        results = evaluate(examples, embed, model=args.model, config=config, out_dir=out, shop=shop)
        print(markdown_table(results), end="")
        return
    dev = [e for e in shop if e.group == "dev"]
    report = [e for e in shop if e.group == "report"]
    done: dict[str, dict[str, object]] = {}
    path = out / "select.json"
    if path.exists():
        done = json.loads(path.read_text())["candidates"]
    wanted = args.only.split(",") if args.only else list(CANDIDATES)
    embed(  # one batched fill of the cache: every text any candidate fits on or is scored on
        list(
            dict.fromkeys(
                [e.text for e in examples]
                + [f for e in examples for f in augment_forms(e.text, "title")]
                + [e.text for e in shop]
            )
        )
    )
    for split in make_splits(examples, seed=args.seed).values():
        train = [examples[i] for i in split.train]
        sets = {
            "val": [examples[i] for i in split.val],
            "test": [examples[i] for i in split.test],
            "shop-dev": dev,
            "shop-report": report,
        }
        for name in wanted:
            config = CANDIDATES[name]
            row = done.setdefault(name, {"config": asdict(config)})
            started = time.perf_counter()
            classes, predict = fit_method("head", train, embed, config=config, c=config.c)
            row[f"{split.name} fit s"] = round(time.perf_counter() - started, 1)
            for set_name, items in sets.items():
                s = score(predict([e.text for e in items]), classes, [e.label for e in items])
                for metric in ("top1", "top3", "ece"):
                    row[f"{split.name} {set_name} {metric}"] = round(getattr(s, metric), 4)
            print(split.name, name, {k: v for k, v in row.items() if k.startswith(split.name)})
            path.write_text(json.dumps({"seed": args.seed, "candidates": done}, indent=2) + "\n")
    chosen = choose(done)
    print("chosen:", chosen["name"])
    path.write_text(
        json.dumps({"seed": args.seed, "candidates": done, "chosen": chosen}, indent=2) + "\n"
    )


def choose(done: dict[str, dict[str, object]]) -> dict[str, object]:
    """The best shop-dev top-1 (random split's train) among designs that lose at most one point
    of held-out-heading validation top-1 against the first design."""
    first = done.get("first (shorten 0.1)")
    held = "heldout-group val top1"
    floor = float(first[held]) - 0.01 if first else 0.0  # type: ignore[arg-type]
    ok = {n: r for n, r in done.items() if float(r[held]) >= floor}  # type: ignore[arg-type]
    name = max(ok, key=lambda n: float(ok[n]["random shop-dev top1"]))  # type: ignore[arg-type]
    return {"name": name, "config": ok[name]["config"], "rule": choose.__doc__}


if __name__ == "__main__":
    main()
