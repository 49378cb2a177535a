"""The ``retina`` command: ``retina models build`` and ``retina serve``.

Settings come from ``RETINA_*`` environment variables, read once here and passed down. Expected
failures (no catalog, a failed build, bad settings) print one line to stderr and exit 1; usage
errors exit 2 (argparse's convention); a traceback means a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from retina.artifacts.build import BuiltModel, build_all
from retina.errors import RetinaError
from retina.server import serve
from retina.settings import RetinaSettings

EXIT_OK = 0
EXIT_FAILED = 1


def main(argv: Sequence[str] | None = None) -> int:
    # A model-hub lookup would spend ~70 s in retries before failing; Retina reads its models
    # from installed packages only. Set before anything imports huggingface code.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = _parser().parse_args(argv)
    # Our own logs at INFO; third parties (onnxruntime's quantizer logs every node to the
    # root logger) only at WARNING.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("retina").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        settings = RetinaSettings()
    except ValidationError as exc:
        print(f"retina: invalid RETINA_* settings:\n{exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        if args.command == "serve":
            asyncio.run(serve(settings))
        else:
            _build(args, settings)
    except RetinaError as exc:
        print(f"retina: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130  # the shell's convention for SIGINT
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retina", description="Retina: EmbArk's encoders.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="model artifacts")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    build = model_commands.add_parser(
        "build",
        help="build (or reuse) the model artifacts and write catalog.json",
        description="Build every catalog model (or those named with --only) into the artifacts "
        "directory and rewrite catalog.json. A model whose inputs have not changed is reused, "
        "not rebuilt.",
    )
    build.add_argument(
        "--artifacts",
        type=Path,
        default=None,
        metavar="DIR",
        help="artifacts directory (default: RETINA_ARTIFACTS_DIR, else ./artifacts)",
    )
    build.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="build only this model (repeatable); other catalog entries are kept",
    )
    build.add_argument("--force", action="store_true", help="rebuild even if nothing changed")

    commands.add_parser(
        "serve",
        help="run the Retina gRPC server (configured by RETINA_* environment variables)",
    )
    return parser


def _build(args: argparse.Namespace, settings: RetinaSettings) -> None:
    artifacts: Path = args.artifacts or settings.artifacts_dir
    built = build_all(artifacts, args.only, args.force, intra_op_threads=settings.intra_op_threads)
    print(format_table(built))
    print(f"\ncatalog: {artifacts / 'catalog.json'}")


def format_table(built: Sequence[BuiltModel]) -> str:
    """The build summary: one row per model."""
    header = (
        "model",
        "kind",
        "dim",
        "size MB",
        "parity min/mean",
        "vs",
        "b1 ms",
        "revision",
        "status",
    )
    rows = [header]
    for b in built:
        r = b.report
        rows.append(
            (
                r.name,
                r.kind,
                str(r.dim),
                f"{r.size_bytes / 1e6:.1f}",
                f"{r.parity.cos_min:.4f} / {r.parity.cos_mean:.4f} (n={r.parity.n})",
                r.parity.reference,
                f"{r.latency_ms_b1:.1f}",
                b.revision,
                "cached" if b.cached else "built",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
