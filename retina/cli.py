"""The ``retina`` command: ``retina models add | list | build | validate | bench | pack |
unpack`` and ``retina serve``.

Which models exist comes from the definition files (``retina.artifacts.definition``): the
built-ins, then ``./models.toml`` (or the files given with ``--models``). ``pack``/``unpack``
ship what a build made as one versioned bundle (``retina.artifacts.bundle``).

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
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from retina.artifacts.base import Parity
from retina.artifacts.build import (
    BuiltModel,
    Validation,
    build_all,
    default_registry,
    read_catalog,
    validate_all,
)
from retina.artifacts.definition import (
    BUILTIN_FILE,
    USER_FILE,
    add_definition,
    default_files,
    load_definitions,
)
from retina.errors import ArtifactError, RetinaError
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
        elif args.models_command == "add":
            _add(args)
        elif args.models_command == "list":
            _list(args, settings)
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
    _definition_commands(model_commands, build, validate)
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
    registry = default_registry(_definition_files(args))
    checked = validate_all(args.artifacts or settings.artifacts_dir, args.only, registry=registry)
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
    table = [("model", "kind", "b1 ms", "batch", "items/s", "x one by one", "batches")]
    table += [
        (
            r.name,
            r.kind,
            f"{r.ms_b1:.2f}",
            str(r.batch),
            f"{r.items_per_s:.0f}",
            f"{r.batch_gain:.2f}",
            r.batches,
        )
        for r in rows
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
    threads = settings.intra_op_threads
    registry = default_registry(_definition_files(args), intra_op_threads=threads)
    built = build_all(artifacts, args.only, args.force, registry=registry)
    print(format_table(built))
    print(f"\ncatalog: {artifacts / 'catalog.json'}")


def format_table(built: Sequence[BuiltModel]) -> str:
    """The build summary: one row per model."""
    header = (
        "model",
        "kind",
        "dim",
        "precision",
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
                r.precision,
                f"{r.size_bytes / 1e6:.1f}",
                f"{r.parity.cos_min:.4f} / {r.parity.cos_mean:.4f} (n={r.parity.n})",
                r.parity.reference,
                f"{r.latency_ms_b1:.1f}",
                b.revision,
                "cached" if b.cached else "built",
            )
        )
    return _table(rows)


# --- model definitions: `retina models add | list`, and --models on build/validate ----------


def _definition_commands(
    model_commands: Any, build: argparse.ArgumentParser, validate: argparse.ArgumentParser
) -> None:
    models_help = (
        f"a model definition file (repeatable; default: the built-ins and ./{USER_FILE} "
        "when it exists)"
    )
    for sub in (build, validate):
        sub.add_argument("--models", action="append", type=Path, metavar="FILE", help=models_help)
    add = model_commands.add_parser(
        "add",
        help=f"define a model (validated, appended to ./{USER_FILE}); then `retina models build`",
        description="Write a model definition without editing TOML by hand. Every field of "
        "the definition format can be given with --set KEY=VALUE (VALUE in TOML syntax, "
        "e.g. --set 'preprocessing={size=224, layout=\"nhwc\"}'); see the README's "
        "'Bring your own model'.",
    )
    add.add_argument("name", help="the model's catalog name (lowercase, digits, . _ -)")
    add.add_argument("--kind", choices=("text", "image"), required=True)
    add.add_argument("--source", help="text: a Hugging Face layout directory (or .zip)")
    add.add_argument("--onnx", help="an ONNX file (image models; optional for text)")
    add.add_argument("--output", help="the tensor that is the embedding (image models)")
    add.add_argument("--pooling", choices=("mean", "cls", "last"))
    add.add_argument("--precision", choices=("int8", "fp32", "auto"))
    add.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="fields")
    add.add_argument("--file", type=Path, default=USER_FILE, help="definition file to write")
    listing = model_commands.add_parser(
        "list", help="every defined model and whether it is built (from catalog.json)"
    )
    _artifact_arguments(listing)
    listing.add_argument("--models", action="append", type=Path, metavar="FILE", help=models_help)


def _definition_files(args: argparse.Namespace) -> list[Path] | None:
    """``--models`` files after the built-ins; None (the defaults) when none were given."""
    files: list[Path] | None = getattr(args, "models", None)
    return None if not files else [BUILTIN_FILE, *files]


def _add(args: argparse.Namespace) -> None:
    fields: dict[str, Any] = {"kind": args.kind}
    for key in ("source", "onnx", "output", "pooling", "precision"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    for item in args.fields:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ArtifactError(f"--set expects KEY=VALUE, got {item!r}")
        fields[key.strip()] = _toml_value(raw)
    entry = add_definition(args.file, args.name, fields)
    print(f"defined {entry.name} ({entry.definition.kind}) in {args.file}")
    print(f"next: retina models build --only {entry.name}")


def _toml_value(raw: str) -> Any:
    """A --set value in TOML syntax; a bare word is taken as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _list(args: argparse.Namespace, settings: RetinaSettings) -> None:
    files = _definition_files(args)
    definitions = load_definitions(files)
    try:
        entries, _ = read_catalog(args.artifacts or settings.artifacts_dir)
    except ArtifactError:
        entries = []
    built = {str(e.get("name")): e for e in entries}
    rows = [
        ("model", "kind", "defined in", "dim", "precision", "parity mean", "revision", "status")
    ]
    for name in sorted(set(definitions) | set(built)):
        entry, definition = built.get(name), definitions.get(name)
        origin = "-" if definition is None else _origin(definition.origin)
        kind = definition.definition.kind if definition else str(entry and entry.get("kind"))
        if entry is None:
            rows.append((name, kind, origin, "-", "-", "-", "-", "defined, not built"))
            continue
        parity = entry.get("parity") or {}
        rows.append(
            (
                name,
                kind,
                origin,
                str(entry.get("dim")),
                str(entry.get("precision", "-")),
                f"{parity.get('cos_mean', float('nan')):.4f}",
                str(entry.get("revision")),
                "built" if definition is not None else "built, no longer defined",
            )
        )
    print(_table(rows))
    print(f"\ndefinitions: {', '.join(str(f) for f in files or default_files())}")


def _origin(path: Path) -> str:
    return "built-in" if path == BUILTIN_FILE.resolve() else str(path)
