"""The similarity commands of `embark` (hooked in by embark/cli.py):

embark similar --model M --text T [--top-k K]      ask a running EmbArk for T's neighbours
embark dedupe FILE --model M --threshold T          duplicate clusters of a file (CSV/JSON)
embark index backfill [--model M]                   put already stored vectors into the index
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from embark.clientargs import add_client_args, client_from
from embark.errors import InvalidInput


def add_commands(sub: Any) -> None:
    similar = sub.add_parser("similar", help="the stored items nearest to an input or a key")
    _client_args(similar)
    similar.add_argument("--model", required=True)
    what = similar.add_mutually_exclusive_group(required=True)
    what.add_argument("--text")
    what.add_argument("--image-url")
    what.add_argument("--key", help="the key of a stored item")
    similar.add_argument("--top-k", type=int, default=10)
    similar.add_argument("--min-score", type=float, help="cosine floor, -1..1")
    similar.add_argument("--wait-ms", type=int, default=0, help="read-through deadline")
    similar.add_argument("--json", action="store_true")
    similar.set_defaults(run=_similar)

    dedupe = sub.add_parser("dedupe", help="group a file's lines into duplicate clusters")
    _client_args(dedupe)
    dedupe.add_argument("file", type=Path, help="one input a line (text, or image URLs)")
    dedupe.add_argument("--model", required=True)
    dedupe.add_argument(
        "--threshold",
        type=float,
        required=True,
        help="cosine at or above which two lines are duplicates (docs/similarity.md)",
    )
    dedupe.add_argument("--kind", choices=("text", "image"), default="text")
    dedupe.add_argument("--format", choices=("csv", "json"), default="csv")
    dedupe.add_argument("--out", type=Path, help="default: standard output")
    dedupe.add_argument("--wait-ms", type=int, default=10_000, help="read-through per call")
    dedupe.add_argument(
        "--timeout-s", type=float, default=300.0, help="give up on PENDING lines after this"
    )
    dedupe.set_defaults(run=_dedupe)

    index = sub.add_parser("index", help="the similarity index")
    index_sub = index.add_subparsers(required=True, metavar="ACTION")
    backfill = index_sub.add_parser(
        "backfill", help="index vectors stored before the index existed (settings: EMBARK_*)"
    )
    backfill.add_argument("--model", action="append", help="only these models (repeatable)")
    backfill.add_argument("--batch", type=int, default=500)
    backfill.add_argument("--no-progress", action="store_true")
    backfill.set_defaults(run=_index_backfill)


def _client_args(cmd: argparse.ArgumentParser) -> None:
    add_client_args(cmd)  # --target/EMBARK_TARGET, --token, TLS: as every client command
    cmd.add_argument("--no-progress", action="store_true")


def _similar(args: argparse.Namespace) -> int:
    from embark_api.v1 import embark_pb2

    with client_from(args, args.wait_ms) as client:
        response = client.find_similar(
            args.model,
            text=args.text,
            image_url=args.image_url,
            key=args.key,
            top_k=args.top_k,
            min_score=args.min_score,
            wait_ms=args.wait_ms,
        )
    status = embark_pb2.Status.Name(response.status)
    found = [
        {"key": n.key, "score": n.score, "input": n.input.text or n.input.image_url}
        for n in response.neighbours
    ]
    if args.json:
        print(json.dumps({"status": status, "key": response.key, "neighbours": found}))
        return 0
    print(f"{status:<8} {response.model}@{response.revision} key={response.key}")
    if response.reason:
        print(f"reason: {response.reason}")
    for n in found:
        print(f"{n['score']:+.4f}  {n['key']}  {n['input']}")
    return 0


def _dedupe(args: argparse.Namespace) -> int:
    from embark.similar.dedupe import dedupe, read_lines, to_csv, to_json

    lines = read_lines(args.file)
    with client_from(args, args.wait_ms) as client:
        report = dedupe(
            client,
            args.model,
            lines,
            args.threshold,
            kind=args.kind,
            wait_ms=args.wait_ms,
            timeout_s=args.timeout_s,
            progress=not args.no_progress,
        )
    text = to_csv(report) if args.format == "csv" else to_json(report) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    duplicates = sum(len(c) for c in report.clusters)
    print(
        f"{report.lines} lines: {len(report.clusters)} clusters holding {duplicates} lines,"
        f" {len(report.unembedded)} not embedded",
        file=sys.stderr,
    )
    return 0


def _index_backfill(args: argparse.Namespace) -> int:
    from embark.catalog import Catalog
    from embark.settings import EmbarkSettings

    settings = EmbarkSettings()
    catalog = Catalog.load(settings.catalog)
    names = args.model or list(catalog)
    specs = [catalog.require(name) for name in names]
    if settings.store.backend == "sqlite":
        print("the SQLite archive is searched in place: nothing to backfill")
        return 0
    if args.batch <= 0:
        raise InvalidInput("--batch must be positive")
    total = asyncio.run(_backfill(settings, specs, args.batch, not args.no_progress))
    print(f"{total} vectors indexed")
    return 0


async def _backfill(settings: Any, specs: list[Any], batch: int, progress: bool) -> int:
    from embark.backends import open_store
    from embark.similar.indexing import IndexingStore

    store = await open_store(settings.store.model_copy(update={"similarity_search": True}))
    assert isinstance(store, IndexingStore)  # Cassandra with search on
    total = 0
    try:
        for spec in specs:
            rows = await store.inner.scan(spec.name, spec.revision)
            with tqdm(
                total=len(rows), desc=f"index {spec.name}", unit="vector", disable=not progress
            ) as bar:
                for start in range(0, len(rows), batch):
                    chunk = rows[start : start + batch]
                    await store.index.add(chunk)
                    bar.update(len(chunk))
            total += len(rows)
    finally:
        await store.close()
    return total
