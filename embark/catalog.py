"""The model catalog: model name -> kind, dimension, revision and OOV vector, read from one file.

``retina models build`` writes the file (``<artifacts>/catalog.json``) after building and
validating every model; EmbArk and KFC only read it. The format is a contract between them:

    {
      "format": 1,
      "models": [
        {"name": "minilm-l6", "kind": "text", "dim": 384,
         "revision": "<hash of what defines the vectors>",
         "oov": "<base64 of little-endian float32 x dim>",
         "precision": "int8", "dtype": "float32", "dimensions": null,
         "parity": {"cos_mean": 0.997, ...}, "fold_case": true,
         "artifact_sha256": "<the built files, pinned>", ...}
      ],
      "defined": ["<models defined but not built>"]
    }

The keys after ``oov`` are optional (older catalogs lack them). Keys not listed here
(artifact paths, build figures) belong to Retina and are ignored.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from embark import vectors
from embark.errors import EmbarkError, UnknownModel
from embark.keys import InputKind

CATALOG_FORMAT = 1

log = logging.getLogger(__name__)


class CatalogError(EmbarkError):
    """The catalog file is missing or malformed."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What EmbArk knows of a model: enough to key, check and answer, never to run it."""

    name: str
    kind: InputKind
    dim: int
    revision: str
    oov: bytes  # little-endian float32 x dim: what a miss answers
    precision: str = ""  # int8 | fp32: what the build served ("" in older catalogs)
    dtype: str = "float32"  # the vectors' precision (float16: exactly representable in half)
    dimensions: int | None = None  # Matryoshka truncation, when the definition asked for one
    parity: float | None = None  # cosine mean vs the fp32 reference, from the build's gate
    # The model ignores letter case (its tokenizer lowercases): keys may fold case too.
    fold_case: bool = False
    artifact_sha256: str = ""  # the built files the revision was served from

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise CatalogError(f"model {self.name!r}: dimension must be positive, got {self.dim}")
        vectors.check(self.oov, self.dim)


class Catalog(Mapping[str, ModelSpec]):
    """An immutable name -> ModelSpec mapping; ``catalog.require(name)`` raises NOT_FOUND."""

    def __init__(self, models: Mapping[str, ModelSpec], defined: Iterable[str] = ()) -> None:
        self._models = dict(models)
        # Defined in a model definition but not built (yet, or its build failed its gate).
        self.defined = frozenset(defined) - set(self._models)

    def __getitem__(self, name: str) -> ModelSpec:
        return self._models[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def require(self, name: str) -> ModelSpec:
        try:
            return self._models[name]
        except KeyError:
            known = ", ".join(sorted(self._models)) or "none"
            if name in self.defined:
                raise UnknownModel(
                    f"model {name!r} is defined but not built; run `retina models build "
                    f"--only {name}` and reload (built models: {known})"
                ) from None
            # Echo at most 64 characters of a client-supplied name (a fuzzer sends megabytes).
            shown = repr(name[:64]) + ("..." if len(name) > 64 else "")
            raise UnknownModel(f"unknown model {shown}; known models: {known}") from None

    @classmethod
    def load(cls, path: Path) -> Catalog:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CatalogError(
                f"no catalog at {path}; run `retina models build` to create it"
            ) from None
        except (OSError, ValueError) as exc:
            raise CatalogError(f"cannot read catalog {path}: {exc}") from None
        return cls.from_dict(doc, source=str(path))

    @classmethod
    def from_dict(cls, doc: object, source: str = "<catalog>") -> Catalog:
        if not isinstance(doc, dict) or doc.get("format") != CATALOG_FORMAT:
            raise CatalogError(f"{source}: expected a catalog of format {CATALOG_FORMAT}")
        entries = doc.get("models", [])
        if not isinstance(entries, list):
            raise CatalogError(f'{source}: "models" must be a list, got {type(entries).__name__}')
        models: dict[str, ModelSpec] = {}
        for entry in entries:
            try:
                parity = entry.get("parity")
                dimensions = entry.get("dimensions")
                spec = ModelSpec(
                    name=str(entry["name"]),
                    kind=_kind(entry["kind"]),
                    dim=int(entry["dim"]),
                    revision=str(entry["revision"]),
                    oov=base64.b64decode(entry["oov"], validate=True),
                    precision=str(entry.get("precision", "")),
                    dtype=_dtype(entry.get("dtype", "float32")),
                    dimensions=None if dimensions is None else int(dimensions),
                    parity=float(parity["cos_mean"]) if isinstance(parity, dict) else None,
                    fold_case=entry.get("fold_case", False) is True,
                    artifact_sha256=str(entry.get("artifact_sha256", "")),
                )
            except (KeyError, TypeError, ValueError, AttributeError, EmbarkError) as exc:
                raise CatalogError(f"{source}: bad model entry {entry!r:.80}: {exc}") from None
            if spec.name in models:
                raise CatalogError(f"{source}: model {spec.name!r} is listed twice")
            models[spec.name] = spec
        defined = doc.get("defined", [])
        if not isinstance(defined, list):
            raise CatalogError(f'{source}: "defined" must be a list of model names')
        return cls(models, defined=(str(n) for n in defined))


def _dtype(value: object) -> str:
    if value not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {value!r}")
    return str(value)


def _kind(value: object) -> InputKind:
    if value == "text":
        return "text"
    if value == "image":
        return "image"
    raise ValueError(f"kind must be text or image, got {value!r}")


def model_entry(spec: ModelSpec) -> dict[str, object]:
    """The catalog-file form of a spec (used by writers and tests)."""
    return {
        "name": spec.name,
        "kind": spec.kind,
        "dim": spec.dim,
        "revision": spec.revision,
        "oov": base64.b64encode(spec.oov).decode("ascii"),
    }


def reload_on_sighup(
    path: Path | None, apply: Callable[[Catalog | None], None]
) -> Callable[[], None]:
    """Changing what a service serves without a restart: on SIGHUP, read the catalog at
    ``path`` again and hand it to ``apply`` (the service swaps it in between two calls).
    ``apply`` gets None when there is no catalog to read (``path`` None: `embark dev`, whose
    in-process encoders cannot follow) or when it is unreadable or malformed (logged; the current
    one is kept), so it can still reload what hangs on the catalog (heads). One handler per
    process: SIGHUP has one. Call from the event loop's thread; returns the function that
    removes the handler (a no-op where signals cannot be handled, e.g. a loop in a thread)."""
    loop = asyncio.get_running_loop()

    def on_hangup() -> None:
        catalog: Catalog | None = None
        if path is not None:
            try:
                # A few KB of JSON: read on the loop, so no call sees half a reload.
                catalog = Catalog.load(path)
            except CatalogError as exc:
                log.warning("catalog reload failed, keeping the current one: %s", exc.message)
            else:
                served = ", ".join(f"{n}@{s.revision}" for n, s in sorted(catalog.items()))
                log.info("catalog reloaded from %s: %s", path, served or "no models")
        apply(catalog)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        log.debug("no SIGHUP reload here: %s", exc)
        return lambda: None

    def stop() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return stop
