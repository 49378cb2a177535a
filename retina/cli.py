"""The ``retina`` command: ``retina models build | validate | bench | pack | unpack`` and
``retina serve``.

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

from retina.artifacts.base import Parity
from retina.artifacts.build import BuiltModel, Validation, build_all, validate_all
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
        elif args.models_command == "validate":
            return _validate(args, settings)
        elif args.models_command == "bench":
            _bench(args, settings)
        elif args.models_command in ("pack", "unpack"):
            _bundle(args, settings)
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
    _artifact_arguments(
        build, only_help="build only this model (repeatable); other catalog entries are kept"
    )
    build.add_argument("--force", action="store_true", help="rebuild even if nothing changed")
    validate = model_commands.add_parser(
        "validate",
        help="re-check the built models against their parity gates (nothing is rebuilt)",
        description="For every catalog model (or those named with --only): check that the "
        "files are the ones the catalog vouches for and that the build is not stale, and "
        "measure the parity against the fp32 reference again. Exits 1 if any model fails.",
    )
    bench = model_commands.add_parser(
        "bench",
        help="a quick latency table of the built models, loaded as `retina serve` loads them",
    )
    bench.add_argument("--runs", type=int, default=30, help="timed runs per measurement")
    for sub in (validate, bench):
        _artifact_arguments(sub)
    pack = model_commands.add_parser(
        "pack",
        help="write the built artifacts and catalog as one versioned bundle (with file hashes)",
    )
    pack.add_argument("--artifacts", type=Path, default=None, metavar="DIR")
    pack.add_argument("--out", type=Path, default=None, metavar="FILE|DIR", help="default: .")
    unpack = model_commands.add_parser(
        "unpack",
        help="verify a bundle's hashes and make it the artifacts directory",
    )
    unpack.add_argument("bundle", type=Path)
    unpack.add_argument("--artifacts", type=Path, default=None, metavar="DIR")
    unpack.add_argument(
        "--replace", action="store_true", help="keep the current directory as DIR.previous"
    )

    commands.add_parser(
        "serve",
        help="run the Retina gRPC server (configured by RETINA_* environment variables)",
    )
    return parser


def _artifact_arguments(
    parser: argparse.ArgumentParser, *, only_help: str = "only this model (repeatable)"
) -> None:
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=None,
        metavar="DIR",
        help="artifacts directory (default: RETINA_ARTIFACTS_DIR, else ./artifacts)",
    )
    parser.add_argument("--only", action="append", metavar="NAME", help=only_help)


def _bundle(args: argparse.Namespace, settings: RetinaSettings) -> None:
    from retina.artifacts import bundle

    directory = args.artifacts or settings.artifacts_dir
    if args.models_command == "pack":
        path, packed = bundle.pack(directory, args.out)
        print(f"{path}  {packed.version}  {len(packed.files)} files")
    else:
        packed = bundle.unpack(args.bundle, directory, replace=args.replace)
        print(f"{directory}  {packed.version}  verified {len(packed.files)} files")
    for name, revision in sorted(packed.models.items()):
        print(f"  {name:<20} {revision}")


def _validate(args: argparse.Namespace, settings: RetinaSettings) -> int:
    checked = validate_all(args.artifacts or settings.artifacts_dir, args.only)
    print(format_validation(checked))
    return EXIT_OK if all(v.ok for v in checked) else EXIT_FAILED


def format_validation(checked: Sequence[Validation]) -> str:
    rows = [("model", "revision", "parity now min/mean", "at build", "result")]
    rows += [
        (
            v.name,
            v.revision,
            _parity_cell(v.parity),
            _parity_cell(v.built_parity),
            "ok" if v.problem is None else f"FAIL: {v.problem}",
        )
        for v in checked
    ]
    return _table(rows)


def _parity_cell(parity: Parity | None) -> str:
    return "-" if parity is None else f"{parity.cos_min:.4f} / {parity.cos_mean:.4f}"


def _bench(args: argparse.Namespace, settings: RetinaSettings) -> None:
    from retina.artifacts.timing import TEXT_SEQ_LEN, bench_catalog

    if args.only:
        settings = settings.model_copy(update={"models": tuple(args.only)})
    rows = bench_catalog(args.artifacts or settings.artifacts_dir, settings, runs=args.runs)
    table = [("model", "kind", "b1 ms", "batch", "items/s")]
    table += [
        (r.name, r.kind, f"{r.ms_b1:.2f}", str(r.batch), f"{r.items_per_s:.0f}") for r in rows
    ]
    print(_table(table))
    print(
        f"\n{settings.intra_op_threads} intra-op threads; text at {TEXT_SEQ_LEN} tokens. "
        "Full comparison with PyTorch and fp32: make bench-encoders"
    )


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


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
    return _table(rows)
