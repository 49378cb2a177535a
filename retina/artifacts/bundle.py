"""Model bundles: `retina models pack` / `unpack`. Build the models once, ship the bytes.

A bundle is one uncompressed tar (int8 ONNX weights barely compress) holding a built artifacts
directory as it is (catalog.json and every file the catalog's models use) plus MANIFEST.json:
the bundle format, its version (a digest of every file's path and sha256, so equal contents give
the same version on any machine), the models and revisions of the catalog, and each file's
sha256 and size. Unpacking refuses anything the manifest does not vouch for (a missing, extra,
changed or non-regular file, a path outside the directory) before the target directory is
touched, then moves the verified directory into place; the previous one is kept beside it as
``<dir>.previous`` for a rollback. The image build (`--build-arg MODELS=bundle`), and every host,
serve the same bytes and therefore the same revisions, whatever machine built them.

This module does not know how models are built or loaded: it packs whatever the directory and
its catalog hold.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retina.errors import ArtifactError

BUNDLE_FORMAT = "embark-model-bundle/1"
MANIFEST = "MANIFEST.json"
CATALOG = "catalog.json"
# Left behind by an interrupted build or by tools; never part of what is served.
_SKIPPED_SUFFIXES = (".tmp", ".lock", ".partial")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Bundle:
    """What a bundle holds: its version, the models at their revisions, and its files."""

    version: str
    models: dict[str, str]  # name -> revision
    files: dict[str, tuple[str, int]]  # relative path -> (sha256, bytes)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "version": self.version,
            "models": self.models,
            "files": {p: {"sha256": h, "bytes": n} for p, (h, n) in sorted(self.files.items())},
        }

    @classmethod
    def from_json(cls, doc: Any) -> Bundle:
        if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
            raise ArtifactError(f"not a model bundle (expected format {BUNDLE_FORMAT!r})")
        try:
            files = {p: (str(f["sha256"]), int(f["bytes"])) for p, f in doc["files"].items()}
            bundle = cls(str(doc["version"]), dict(doc["models"]), files)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"malformed bundle manifest: {exc!r}") from None
        if bundle.version != _version(bundle.files):
            raise ArtifactError("bundle manifest: its version does not match its files")
        return bundle


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _version(files: dict[str, tuple[str, int]]) -> str:
    digest = hashlib.sha256()
    for path, (sha, _) in sorted(files.items()):
        digest.update(f"{path}\0{sha}\n".encode())
    return f"b-{digest.hexdigest()[:16]}"


def _catalog_models(catalog: Path) -> dict[str, str]:
    try:
        doc = json.loads(catalog.read_text(encoding="utf-8"))
        return {str(m["name"]): str(m["revision"]) for m in doc["models"]}
    except FileNotFoundError:
        raise ArtifactError(f"no {CATALOG} in {catalog.parent}: build the models first") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"unreadable {catalog}: {exc!r}") from None


def _files(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        if path.name.endswith(_SKIPPED_SUFFIXES):
            continue
        yield path


def describe(directory: Path) -> Bundle:
    """The manifest ``directory`` would be packed with."""
    models = _catalog_models(directory / CATALOG)
    files = {
        p.relative_to(directory).as_posix(): (_sha256(p), p.stat().st_size)
        for p in _files(directory)
    }
    return Bundle(_version(files), models, files)


def pack(directory: Path, out: Path | None = None) -> tuple[Path, Bundle]:
    """Write ``directory`` as a bundle to ``out`` (a file, or a folder to name it in; default:
    the current directory) and return its path and manifest."""
    bundle = describe(directory)
    if out is None or out.is_dir():
        out = (out or Path()) / f"embark-models-{bundle.version}.tar"
    manifest = json.dumps(bundle.to_json(), indent=2).encode()
    tmp = out.with_name(out.name + ".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mode = len(manifest), 0o644
        tar.addfile(info, io.BytesIO(manifest))
        for rel in sorted(bundle.files):
            info = tar.gettarinfo(directory / rel, arcname=rel)
            # Owner and time are of the packing machine; they are not part of the bundle.
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o644
            with (directory / rel).open("rb") as f:
                tar.addfile(info, f)
    tmp.replace(out)
    return out, bundle


def unpack(source: Path, directory: Path, *, replace: bool = False) -> Bundle:
    """Verify ``source`` completely, then make it ``directory``. An existing non-empty
    ``directory`` is kept as ``<directory>.previous`` with ``replace``, refused without it."""
    if directory.exists() and any(directory.iterdir()) and not replace:
        raise ArtifactError(f"{directory} is not empty: pass --replace to swap it for the bundle")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        bundle = _extract_verified(source, staging)
        if directory.exists():
            previous = directory.with_name(directory.name + ".previous")
            shutil.rmtree(previous, ignore_errors=True)
            directory.rename(previous)
        staging.chmod(0o755)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return bundle


def _extract_verified(source: Path, staging: Path) -> Bundle:
    try:
        tar = tarfile.open(source, "r:")  # noqa: SIM115 (closed below, errors mapped)
    except (OSError, tarfile.TarError) as exc:
        raise ArtifactError(f"cannot read bundle {source}: {exc}") from None
    with tar:
        members = tar.getmembers()
        if not members or members[0].name != MANIFEST or not members[0].isfile():
            raise ArtifactError(f"{source}: {MANIFEST} must be the bundle's first member")
        reader = tar.extractfile(members[0])
        assert reader is not None  # a regular file, checked above
        try:
            bundle = Bundle.from_json(json.loads(reader.read()))
        except ValueError as exc:
            raise ArtifactError(f"{source}: unreadable {MANIFEST}: {exc}") from None
        seen: set[str] = set()
        for member in members[1:]:
            rel = member.name
            target = (staging / rel).resolve()
            if not member.isfile() or staging.resolve() not in target.parents:
                raise ArtifactError(f"{source}: refused member {rel!r} (not a plain file inside)")
            if rel not in bundle.files or rel in seen:
                raise ArtifactError(f"{source}: {rel!r} is not in the manifest (or repeated)")
            seen.add(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            data = tar.extractfile(member)
            assert data is not None
            digest = hashlib.sha256()
            with target.open("wb") as out:
                while chunk := data.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            target.chmod(0o644)
            if (digest.hexdigest(), member.size) != bundle.files[rel]:
                raise ArtifactError(f"{source}: {rel} does not match its manifest hash")
    missing = sorted(set(bundle.files) - seen)
    if missing:
        raise ArtifactError(f"{source}: files in the manifest are missing: {missing[:5]}")
    if _catalog_models(staging / CATALOG) != bundle.models:
        raise ArtifactError(f"{source}: its catalog does not list the manifest's models")
    for sub in staging.rglob("*"):
        if sub.is_dir():
            sub.chmod(0o755)
    return bundle
