"""The artifact build orchestrator and the catalog file: which models exist (the definitions,
``retina.artifacts.definition``), how each is built and loaded, where its artifact lives, and
``<artifacts>/catalog.json``.

Layout of an artifacts directory::

    catalog.json                         what EmbArk, KFC and ``retina serve`` read
    <model>/<inputs digest[:16]>/        one complete build: the builder's files + report.json

A build is keyed by its builder's ``inputs_digest()`` (source bytes, builder version, settings),
so running ``retina models build`` again with nothing changed rebuilds nothing. A build is
written to a temporary sibling directory and renamed into place, so a crash never leaves a
half-written artifact where a complete one is expected; ``report.json`` is written last and its
presence marks a complete build.

A model's *revision* is ``r-`` + the first 16 hex digits of SHA-256 over the build report's
``defines``: the canonical JSON of what defines the vectors (source weights' hashes,
preprocessing, pooling, served precision, dtype, truncation, recipe version), never the built
bytes, which differ between machines and quantizer versions. Building one definition twice, on
any machine, gives one revision; changing pooling or precision gives another (new cache keys).
The built files are pinned beside it by ``artifact_sha256`` (SHA-256 over each file's name and
hash): the serving loader recomputes that, so a catalog never vouches for files it did not see,
and every host that serves a revision serves the same bytes.

The catalog format is EmbArk's (``embark.catalog``), written here without importing EmbArk
(Retina depends on the generated stubs only): ``{"format": 1, "models": [{"name", "kind", "dim",
"revision", "oov" (base64 of little-endian float32), "precision", "dtype", "dimensions",
"parity", "fold_case", "artifact_sha256", ...}], "defined": [names defined but not built]}``;
the other keys of an entry (``artifact_dir``, ``model``, ``size_bytes``, ...) are Retina's.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

import numpy as np

from retina.artifacts.base import BuildReport, ModelBuilder, Parity
from retina.artifacts.definition import ModelEntry, load_definitions
from retina.encoders import image as image_encoder
from retina.encoders import text as text_encoder
from retina.encoders.base import Encoder, EncoderKind
from retina.errors import ArtifactError
from retina.settings import RetinaSettings

logger = logging.getLogger(__name__)

CATALOG_FILE: Final = "catalog.json"
CATALOG_FORMAT: Final = 1
REPORT_FILE: Final = "report.json"
REPORT_FORMAT: Final = 2
# Digest prefix naming a build directory: 64 bits make a collision between builds of one
# model practically impossible while keeping paths readable.
DIGEST_DIR_CHARS: Final = 16
REVISION_PREFIX: Final = "r-"

AnyEncoder: TypeAlias = Encoder[Any]


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """What a loader needs besides the artifact directory."""

    name: str
    revision: str
    intra_op_threads: int = 2
    max_text_tokens: int = 256
    max_image_pixels: int = image_encoder.DEFAULT_MAX_PIXELS


EncoderLoader: TypeAlias = Callable[[Path, LoadOptions], AnyEncoder]


@dataclass(frozen=True, slots=True)
class CatalogModel:
    """A model Retina knows how to build (``new_builder``) and serve (``load``)."""

    name: str
    kind: EncoderKind
    new_builder: Callable[[], ModelBuilder]
    load: EncoderLoader


@dataclass(frozen=True, slots=True)
class BuiltModel:
    """One model after ``build_all``: the builder's report plus what the orchestrator adds."""

    report: BuildReport
    revision: str
    inputs_digest: str
    artifact_dir: Path
    cached: bool  # True when an existing build was reused
    oov: bytes  # little-endian float32 x dim
    artifact_sha256: str = ""  # the built files, pinned (see the module docstring)


def _load_text(artifact_dir: Path, options: LoadOptions) -> AnyEncoder:
    return text_encoder.load(
        artifact_dir,
        name=options.name,
        revision=options.revision,
        intra_op_threads=options.intra_op_threads,
        max_tokens=options.max_text_tokens,
    )


def _load_image(artifact_dir: Path, options: LoadOptions) -> AnyEncoder:
    return image_encoder.ImageEncoder.load(
        artifact_dir,
        name=options.name,
        revision=options.revision,
        intra_op_threads=options.intra_op_threads,
        max_pixels=options.max_image_pixels,
    )


# Serving needs only the kind: every text artifact and every image artifact has one layout.
LOADERS: Final[Mapping[EncoderKind, EncoderLoader]] = {"text": _load_text, "image": _load_image}


def _new_builder(entry: ModelEntry, intra_op_threads: int) -> Callable[[], ModelBuilder]:
    # The build toolchain (quantization, calibration images, the torch-free weight readers) is
    # imported only when a build runs: serving needs the encoders, never the builders.
    def new() -> ModelBuilder:
        if entry.definition.kind == "text":
            from retina.artifacts.text_source import text_builder

            return text_builder(entry, intra_op_threads=intra_op_threads)
        from retina.artifacts.image import image_builder

        return image_builder(entry)

    return new


def registry_from(
    definitions: Mapping[str, ModelEntry], *, intra_op_threads: int = 2
) -> dict[str, CatalogModel]:
    """One CatalogModel per definition: built by the kind's builder, loaded by its loader."""
    return {
        name: CatalogModel(
            name,
            entry.definition.kind,
            _new_builder(entry, intra_op_threads),
            LOADERS[entry.definition.kind],
        )
        for name, entry in definitions.items()
    }


def default_registry(
    files: Iterable[Path] | None = None, *, intra_op_threads: int = 2
) -> dict[str, CatalogModel]:
    """The models of the definition files (default: built-ins, then ./models.toml)."""
    return registry_from(load_definitions(files), intra_op_threads=intra_op_threads)


def revision_of(defines: str) -> str:
    """``r-`` + 16 hex digits of SHA-256 over what defines the vectors (canonical JSON)."""
    return REVISION_PREFIX + hashlib.sha256(defines.encode("utf-8")).hexdigest()[:16]


def artifact_sha256(artifact_dir: Path, files: Iterable[str]) -> str:
    """SHA-256 over each built file's name and content hash, in name order."""
    h = hashlib.sha256()
    for rel in sorted(set(files)):
        with (artifact_dir / rel).open("rb") as f:
            h.update(rel.encode() + b"\0" + hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def build_all(
    artifacts_dir: Path,
    names: Iterable[str] | None = None,
    force: bool = False,
    *,
    intra_op_threads: int = 2,
    registry: Mapping[str, CatalogModel] | None = None,
) -> list[BuiltModel]:
    """Build (or reuse) each named model, then rewrite ``catalog.json``.

    ``names=None`` builds every registered model. Models of an existing catalog that are not
    rebuilt now keep their entries, so ``--only`` updates one model without dropping others.
    ``force`` rebuilds even when a complete build for the same inputs exists.
    Raises ArtifactError for an unknown name or a failed build (the catalog is then
    untouched). ``registry`` defaults to the definition files (``default_registry``).
    """
    if registry is None:
        registry = default_registry(intra_op_threads=intra_op_threads)
    selected = list(registry) if names is None else list(dict.fromkeys(names))
    unknown = [n for n in selected if n not in registry]
    if unknown:
        raise ArtifactError(
            f"unknown model(s) {', '.join(unknown)}; known: {', '.join(sorted(registry))}"
        )
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    built = [
        _build_one(artifacts_dir, registry[n], force=force, intra_op_threads=intra_op_threads)
        for n in selected
    ]
    entries = {b.report.name: _catalog_entry(artifacts_dir, b) for b in built}
    for entry in _read_catalog_entries(artifacts_dir, missing_ok=True):
        name = str(entry.get("name"))
        if name not in entries and name in registry and _entry_dir(artifacts_dir, entry).is_dir():
            entries[name] = entry
    defined = sorted(set(registry) - set(entries))
    _write_catalog(artifacts_dir, [entries[n] for n in sorted(entries)], defined)
    return built


@dataclass(frozen=True, slots=True)
class Validation:
    """``retina models validate`` for one catalog model: the parity measured now (None when it
    could not be measured), the parity its build recorded, and what is wrong (None: passes)."""

    name: str
    revision: str
    parity: Parity | None
    built_parity: Parity | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def validate_all(
    artifacts_dir: Path,
    names: Iterable[str] | None = None,
    *,
    registry: Mapping[str, CatalogModel] | None = None,
) -> list[Validation]:
    """Re-check built models against their gates without rebuilding anything: the files are
    the ones the catalog vouches for (revision recomputed), the build is not stale (its
    builder's inputs digest is unchanged) and the parity, measured again against the fp32
    reference, is above the gate. ``names=None`` checks every catalog model. Problems are
    reported per model, not raised; an unreadable catalog raises ArtifactError."""
    if registry is None:
        registry = default_registry()
    entries = {str(e.get("name")): e for e in _read_catalog_entries(artifacts_dir)}
    out: list[Validation] = []
    for name in list(names) if names is not None else sorted(entries):
        entry = entries.get(name)
        model = registry.get(name)
        if entry is None or model is None:
            problem = "not in the catalog" if entry is None else "unknown to this Retina"
            out.append(Validation(name, "", None, None, problem))
            continue
        out.append(_validate_one(artifacts_dir, model, entry))
    return out


def _validate_one(artifacts_dir: Path, model: CatalogModel, entry: Mapping[str, Any]) -> Validation:
    revision = str(entry.get("revision", ""))
    artifact_dir = _entry_dir(artifacts_dir, entry)
    complete = _read_complete_build(artifact_dir)
    if complete is None:
        return Validation(model.name, revision, None, None, f"no intact build in {artifact_dir}")
    report, built_revision, _ = complete
    if built_revision != revision:
        mismatch = f"the catalog says {revision}, the build is {built_revision}"
        return Validation(model.name, revision, None, report.parity, mismatch)
    builder = model.new_builder()
    problem = None
    if builder.inputs_digest() != entry.get("inputs_digest"):
        problem = "stale: the model's inputs changed since this build; run `retina models build`"
    try:
        parity = builder.validate(artifact_dir)
    except ArtifactError as exc:
        return Validation(model.name, revision, None, report.parity, exc.message)
    return Validation(model.name, revision, parity, report.parity, problem)


def load_encoders(
    artifacts_dir: Path,
    settings: RetinaSettings,
    *,
    registry: Mapping[str, CatalogModel] | None = None,
) -> dict[str, AnyEncoder]:
    """Load the encoders ``settings.models`` names (all in the catalog when empty) from the
    catalog in ``artifacts_dir``. Blocking (it opens ONNX sessions): call it in a thread from
    async code. Raises ArtifactError when the catalog or an artifact is missing or does not
    match what the catalog says. Each model is loaded by its kind's loader (``registry``, for
    tests, overrides that per name)."""
    entries = {str(e.get("name")): e for e in _read_catalog_entries(artifacts_dir)}
    wanted = list(settings.models) or sorted(entries)
    if not wanted:
        raise ArtifactError(f"the catalog in {artifacts_dir} lists no models")
    encoders: dict[str, AnyEncoder] = {}
    for name in wanted:
        entry = entries.get(name)
        if entry is None:
            raise ArtifactError(
                f"model {name!r} is not in {artifacts_dir / CATALOG_FILE} "
                f"(it has: {', '.join(sorted(entries)) or 'none'}); "
                f"run `retina models build --only {name}`"
            )
        kind = entry.get("kind")
        if registry is not None:
            model = registry.get(name)
            loader = model.load if model is not None else None
        else:
            loader = LOADERS.get(kind) if kind in ("text", "image") else None
        if loader is None:
            raise ArtifactError(f"catalog model {name!r} ({kind}) is unknown to this Retina")
        encoders[name] = _load_one(artifacts_dir, name, loader, entry, settings)
    return encoders


# --- building -----------------------------------------------------------------------------


def _build_one(
    artifacts_dir: Path, model: CatalogModel, *, force: bool, intra_op_threads: int
) -> BuiltModel:
    builder = model.new_builder()
    if (builder.name, builder.kind) != (model.name, model.kind):
        raise ArtifactError(
            f"registry entry {model.name!r} ({model.kind}) got a builder for "
            f"{builder.name!r} ({builder.kind})"
        )
    digest = builder.inputs_digest()
    out_dir = artifacts_dir / model.name / digest[:DIGEST_DIR_CHARS]
    cached = None if force else _read_complete_build(out_dir)
    if cached is not None:
        report, revision, files_sha = cached
        logger.info("%s: reusing %s", model.name, out_dir)
    else:
        report, revision, files_sha = _build_into(out_dir, builder, digest)
    oov = _compute_oov(model, out_dir, report, revision, intra_op_threads)
    return BuiltModel(
        report=report,
        revision=revision,
        inputs_digest=digest,
        artifact_dir=out_dir,
        cached=cached is not None,
        oov=oov,
        artifact_sha256=files_sha,
    )


def _build_into(out_dir: Path, builder: ModelBuilder, digest: str) -> tuple[BuildReport, str, str]:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Same parent, so the final rename is atomic (one filesystem) and never copies.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        logger.info("%s: building into %s", builder.name, tmp)
        report = builder.build(tmp)
        _check_report(report, builder, tmp)
        revision = revision_of(report.defines)
        files_sha = artifact_sha256(tmp, (report.model, *report.files))
        _write_json(tmp / REPORT_FILE, _report_to_dict(report, revision, digest, files_sha))
        # mkdtemp creates 0700; the server may run as another user than the build.
        tmp.chmod(0o755)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report, revision, files_sha


def _check_report(report: BuildReport, builder: ModelBuilder, out_dir: Path) -> None:
    if (report.name, report.kind) != (builder.name, builder.kind) or report.dim <= 0:
        raise ArtifactError(
            f"{builder.name}: the build reported {report.name}/{report.kind}/{report.dim}, "
            f"expected {builder.name}/{builder.kind}"
        )
    if not report.defines:
        raise ArtifactError(f"{builder.name}: the build did not say what defines its vectors")
    for rel in (report.model, *report.files):
        if not (out_dir / rel).is_file():
            raise ArtifactError(f"{builder.name}: the build did not produce {rel}")


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` (a forced or broken build) is moved aside
    first, since rename cannot replace a non-empty directory, then deleted."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _read_complete_build(out_dir: Path) -> tuple[BuildReport, str, str] | None:
    """The report of a complete, intact build in ``out_dir``, or None to (re)build."""
    path = out_dir / REPORT_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        report, revision = _report_from_dict(doc)
        pinned = str(doc["artifact_sha256"])
        missing = [r for r in (report.model, *report.files) if not (out_dir / r).is_file()]
        if missing:
            logger.warning("%s: incomplete build (missing %s); rebuilding", out_dir, missing)
            return None
        actual = artifact_sha256(out_dir, (report.model, *report.files))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("%s: unreadable %s (%s); rebuilding", out_dir, REPORT_FILE, exc)
        return None
    if actual != pinned or revision != revision_of(report.defines):
        logger.warning("%s: files changed since the build; rebuilding", out_dir)
        return None
    return report, revision, pinned


def _compute_oov(
    model: CatalogModel, out_dir: Path, report: BuildReport, revision: str, threads: int
) -> bytes:
    encoder = model.load(
        out_dir, LoadOptions(name=model.name, revision=revision, intra_op_threads=threads)
    )
    if encoder.dim != report.dim:
        raise ArtifactError(
            f"{model.name}: the encoder has dim {encoder.dim}, the build {report.dim}"
        )
    vec = np.asarray(encoder.oov(), dtype="<f4")
    if vec.shape != (report.dim,) or not np.all(np.isfinite(vec)):
        raise ArtifactError(f"{model.name}: bad OOV vector of shape {vec.shape}")
    return vec.tobytes()


def _report_to_dict(
    report: BuildReport, revision: str, digest: str, files_sha: str
) -> dict[str, Any]:
    doc = dataclasses.asdict(report)
    doc["files"] = list(report.files)
    doc.update(
        format=REPORT_FORMAT, revision=revision, inputs_digest=digest, artifact_sha256=files_sha
    )
    return doc


def _report_from_dict(doc: Any) -> tuple[BuildReport, str]:
    if not isinstance(doc, dict) or doc.get("format") != REPORT_FORMAT:
        raise ValueError(f"not a report of format {REPORT_FORMAT}")
    kind = doc["kind"]
    if kind not in ("text", "image"):
        raise ValueError(f"bad kind {kind!r}")
    p = doc["parity"]
    report = BuildReport(
        name=str(doc["name"]),
        kind=kind,
        dim=int(doc["dim"]),
        model=str(doc["model"]),
        preprocessing_version=str(doc["preprocessing_version"]),
        size_bytes=int(doc["size_bytes"]),
        parity=Parity(
            cos_min=float(p["cos_min"]),
            cos_mean=float(p["cos_mean"]),
            n=int(p["n"]),
            reference=str(p["reference"]),
        ),
        latency_ms_b1=float(doc["latency_ms_b1"]),
        files=tuple(str(f) for f in doc.get("files", ())),
        extra=dict(doc.get("extra", {})),
        defines=str(doc["defines"]),
        precision=str(doc.get("precision", "int8")),
        dtype=str(doc.get("dtype", "float32")),
        fold_case=bool(doc.get("fold_case", False)),
        dimensions=doc.get("dimensions"),
    )
    return report, str(doc["revision"])


# --- the catalog file ---------------------------------------------------------------------


def _catalog_entry(artifacts_dir: Path, built: BuiltModel) -> dict[str, Any]:
    r = built.report
    return {
        # The keys EmbArk reads.
        "name": r.name,
        "kind": r.kind,
        "dim": r.dim,
        "revision": built.revision,
        "oov": base64.b64encode(built.oov).decode("ascii"),
        "precision": r.precision,
        "dtype": r.dtype,
        "dimensions": r.dimensions,
        "fold_case": r.fold_case,
        "artifact_sha256": built.artifact_sha256,
        # Retina's own. Relative, so an artifacts tree can be moved or mounted elsewhere.
        "artifact_dir": built.artifact_dir.relative_to(artifacts_dir).as_posix(),
        "model": r.model,
        # The runtime that serves it (a text definition's `backend`): read off the model file.
        "backend": {".xml": "openvino", ".npz": "native"}.get(Path(r.model).suffix, "onnxruntime"),
        "preprocessing_version": r.preprocessing_version,
        "inputs_digest": built.inputs_digest,
        "size_bytes": r.size_bytes,
        "latency_ms_b1": r.latency_ms_b1,
        "parity": dataclasses.asdict(r.parity),
    }


def _entry_dir(artifacts_dir: Path, entry: Mapping[str, Any]) -> Path:
    return artifacts_dir / str(entry.get("artifact_dir", ""))


def _read_catalog_entries(artifacts_dir: Path, *, missing_ok: bool = False) -> list[dict[str, Any]]:
    path = artifacts_dir / CATALOG_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing_ok:
            return []
        raise ArtifactError(f"no catalog at {path}; run `retina models build` first") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != CATALOG_FORMAT:
        raise ArtifactError(f"{path}: not a catalog of format {CATALOG_FORMAT}")
    models = doc.get("models")
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise ArtifactError(f"{path}: 'models' must be a list of objects")
    return models


def _write_catalog(
    artifacts_dir: Path, entries: list[dict[str, Any]], defined: list[str] | None = None
) -> None:
    doc = {"format": CATALOG_FORMAT, "models": entries, "defined": defined or []}
    _write_json(artifacts_dir / CATALOG_FILE, doc)


def read_catalog(artifacts_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The catalog's built entries and the names defined but not built."""
    entries = _read_catalog_entries(artifacts_dir)
    doc = json.loads((artifacts_dir / CATALOG_FILE).read_text(encoding="utf-8"))
    return entries, [str(n) for n in doc.get("defined", [])]


def _write_json(path: Path, doc: object) -> None:
    """Write via a temporary file and rename: readers see the old file or the new one, never
    a partial one."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- loading for serving ------------------------------------------------------------------


def _load_one(
    artifacts_dir: Path,
    name: str,
    loader: EncoderLoader,
    entry: Mapping[str, Any],
    settings: RetinaSettings,
) -> AnyEncoder:
    try:
        kind, dim = entry["kind"], int(entry["dim"])
        revision, model_file = str(entry["revision"]), str(entry["model"])
        pinned = str(entry["artifact_sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(
            f"catalog entry {name!r} is malformed ({exc}); rebuild with `retina models build`"
        ) from None
    artifact_dir = _entry_dir(artifacts_dir, entry)
    model_path = artifact_dir / model_file
    if not model_path.is_file():
        raise ArtifactError(
            f"{name}: missing {model_path}; run `retina models build --only {name}`"
        )
    complete = _read_complete_build(artifact_dir)
    # Recomputed, not trusted: a catalog must never vouch for files other than those it saw,
    # or vectors of two builds could be stored under one revision.
    if complete is None or complete[2] != pinned or complete[1] != revision:
        raise ArtifactError(
            f"{name}: the files in {artifact_dir} are not the build the catalog pins "
            f"({revision}, artifact {pinned[:16]}); rebuild with `retina models build`"
        )
    encoder = loader(
        artifact_dir,
        LoadOptions(
            name=name,
            revision=revision,
            intra_op_threads=settings.intra_op_threads,
            max_text_tokens=settings.max_text_tokens,
            max_image_pixels=settings.max_image_pixels,
        ),
    )
    if encoder.dim != dim or encoder.revision != revision or encoder.kind != kind:
        raise ArtifactError(
            f"{name}: loaded {encoder.kind}/{encoder.dim}/{encoder.revision}, "
            f"the catalog says {kind}/{dim}/{revision}"
        )
    return encoder
