"""The `embark` command: serve, ask, and administer.

embark serve                         the gRPC front (store and queue from EMBARK_* settings)
embark dev                           everything in one process on embedded backends
embark demo                          start `embark dev`, show a miss turn into a hit, exit
embark get --model M --text T        ask a running EmbArk for one embedding
                                     (client commands: --target/EMBARK_TARGET, --token, TLS
                                     flags, exit 3 on FAILED/DROPPED; see embark/clientargs.py)
embark models                        the models a running EmbArk serves (ListModels)
embark schema apply                  create the Cassandra keyspace and tables (and the Kafka
                                     topics when the queue is Kafka), with their replication
embark heads train|eval|list         categorizer heads (see embark/heads/cli.py)
embark categorize --head H --text T  top-k labels of a head for one input
embark backfill FILE / export FILE   fill the archive / export vectors as NPZ
embark similar / dedupe FILE         nearest stored items; duplicate clusters of a file
embark index backfill                index vectors stored before similarity search was on
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from embark.clientargs import add_client_args, client_from, exit_code
from embark.errors import EmbarkError
from embark.heads.cli import add_commands as add_heads_commands
from embark.similar.cli import add_commands as add_similar_commands


def main(argv: Sequence[str] | None = None) -> int:
    # Encoders and tokenizers must never reach for a model hub; everything is local.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args))
    except EmbarkError as exc:
        print(f"embark: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embark", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"embark {_version()}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gRPC front (settings from EMBARK_*)")
    serve.set_defaults(run=_serve)

    for name, help_text in (
        ("dev", "EmbArk, KFC and Retina in one process on embedded backends"),
        ("demo", "start `embark dev`, show PENDING then HIT for a text and an image, exit"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--data-dir", default="data", help="where the SQLite archive lives")
        cmd.add_argument("--artifacts", default="artifacts", help="built models and catalog")
        cmd.add_argument(
            "--host",
            default="127.0.0.1",
            help="bind address (0.0.0.0 in a container, to be reached through a published port)",
        )
        cmd.add_argument("--port", type=int, default=50051, help="gRPC port (0: any free port)")
        cmd.add_argument(
            "--allow-private-addresses",
            action="store_true",
            help="let Retina fetch images from loopback/private addresses (local testing only)",
        )
        cmd.add_argument("--heads-dir", default="heads", help="categorizer heads to serve")
        cmd.add_argument(
            "--http-port",
            type=int,
            default=None,
            help="HTTP port (OpenAI-compatible /v1/embeddings; 0: any free port); default"
            " EMBARK_HTTP_PORT, else 8000 (any free port if 8000 is taken)",
        )
        cmd.set_defaults(run=_onebox(name))

    get = sub.add_parser("get", help="ask a running EmbArk for an embedding")
    add_client_args(get)
    get.add_argument("--model", required=True)
    what = get.add_mutually_exclusive_group(required=True)
    what.add_argument("--text")
    what.add_argument("--image-url")
    get.add_argument("--wait-ms", type=int, default=0, help="read-through deadline (0: never)")
    get.add_argument("--dtype", choices=("float32", "float16", "int8", "binary"), default="float32")
    get.add_argument("--json", action="store_true", help="print the whole vector as JSON")
    get.set_defaults(run=_get)

    _add_models_command(sub)

    add_heads_commands(sub)  # heads train|eval|list, categorize, backfill, export
    add_similar_commands(sub)  # similar, dedupe, index backfill

    schema = sub.add_parser("schema", help="Cassandra schema")
    schema_sub = schema.add_subparsers(required=True, metavar="ACTION")
    apply = schema_sub.add_parser(
        "apply", help="create keyspace, tables and (queue kafka) topics (idempotent)"
    )
    apply.set_defaults(run=_schema_apply)
    return parser


def _get(args: argparse.Namespace) -> int:
    with client_from(args, args.wait_ms) as client:
        result = client.get(
            args.model,
            text=args.text,
            image_url=args.image_url,
            wait_ms=args.wait_ms,
            dtype=args.dtype,
        )
    values = result.array()
    if args.json:
        doc = {
            "status": result.status,
            "model": result.model,
            "revision": result.revision,
            "key": result.key,
            "reason": result.reason,
            "dtype": result.dtype,
            "vector": values.tolist(),
        }
        print(json.dumps(doc))
    else:
        head = ", ".join(f"{v:+.4f}" for v in values[:6])
        print(f"{result.status:<8} {result.model}@{result.revision} dim={result.dim} [{head}, ...]")
        if result.reason:
            print(f"reason: {result.reason}")
    return exit_code([result.status])


def _add_models_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = sub.add_parser("models", help="list the models a running EmbArk serves")
    add_client_args(models)
    models.add_argument("--json", action="store_true", help="one JSON object per model")
    models.set_defaults(run=_models)


def _models(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    with client_from(args) as client:
        models = client.list_models()
    if args.json:
        for m in models:
            print(json.dumps(MessageToDict(m, always_print_fields_with_no_presence=True)))
        return 0
    rows = [("model", "kind", "dim", "precision", "parity", "dtype", "revision", "read-through")]
    for m in models:
        if not m.built:
            rows.append((m.name, "-", "-", "-", "-", "-", "defined, not built", "-"))
            continue
        rows.append(
            (
                m.name,
                m.kind,
                str(m.dim),
                m.precision or "-",
                f"{m.parity:.4f}" if m.parity else "-",
                m.dtype,
                m.revision,
                "yes" if m.read_through else "no",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _serve(args: argparse.Namespace) -> int:
    from embark.server.workers import run
    from embark.settings import EmbarkSettings

    return run(EmbarkSettings())


def _schema_apply(args: argparse.Namespace) -> int:
    from embark.settings import EmbarkSettings
    from embark.store.cassandra import apply_schema

    settings = EmbarkSettings()
    extra: list[str] = []
    if settings.store.similarity_search:  # a vector table per catalog model revision
        from embark.catalog import Catalog
        from embark.similar.base import Space
        from embark.similar.cassandra import schema_statements

        spaces = [Space(m.name, m.revision, m.dim) for m in Catalog.load(settings.catalog).values()]
        extra = schema_statements(settings.store.cassandra.keyspace, spaces)
    cassandra = settings.store.cassandra
    apply_schema(cassandra, extra)
    print(f"schema applied: keyspace {cassandra.keyspace} (replication {cassandra.replication})")
    if settings.queue.backend == "kafka":
        # The topics too, so their replication is an operator's deliberate step like the
        # keyspace's, not whatever the first service to start happened to create.
        from embark.queue.kafka import ensure_topics

        kafka = settings.queue.kafka
        asyncio.run(ensure_topics(kafka))
        print(
            f"topics ensured: {kafka.jobs_topic}, {kafka.dead_letter_topic} "
            f"({kafka.partitions} partitions, replication "
            f"{kafka.replication_factor or 'broker default'}, min.insync.replicas "
            f"{kafka.min_insync_replicas or 'broker default'})"
        )
    return 0


def _version() -> str:
    try:
        return importlib.metadata.version("embark")
    except importlib.metadata.PackageNotFoundError:  # a source checkout, not installed
        return "unknown"


def _onebox(command: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        # `onebox` is the composition root that wires EmbArk, KFC and Retina into one process.
        # It is imported by name so that the embark package itself never imports retina or kfc.
        onebox = importlib.import_module("onebox")
        code: int = onebox.run(command, args)
        return code

    return run
