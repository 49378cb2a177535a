"""The model catalog: model name -> kind, dimension, revision and OOV vector, read from one file.

``retina models build`` writes the file (``<artifacts>/catalog.json``) after building and
validating every model; EmbArk and KFC only read it. The format is a contract between them:

    {
      "format": 1,
      "models": [
        {"name": "minilm-l6", "kind": "text", "dim": 384,
         "revision": "<artifact content hash + preprocessing version>",
         "oov": "<base64 of little-endian float32 x dim>", ...}
      ]
    }

Keys not listed here (artifact paths, build figures) belong to Retina and are ignored.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from embark import vectors
from embark.errors import EmbarkError, UnknownModel
from embark.keys import InputKind

CATALOG_FORMAT = 1


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
    fold_case: bool = False  # its tokenizer lowercases, so text keys may too (keys.canonical_text)

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise CatalogError(f"model {self.name!r}: dimension must be positive, got {self.dim}")
        vectors.check(self.oov, self.dim)


class Catalog(Mapping[str, ModelSpec]):
    """An immutable name -> ModelSpec mapping; ``catalog.require(name)`` raises NOT_FOUND."""

    def __init__(self, models: Mapping[str, ModelSpec]) -> None:
        self._models = dict(models)

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
                spec = ModelSpec(
                    name=str(entry["name"]),
                    kind=_kind(entry["kind"]),
                    dim=int(entry["dim"]),
                    revision=str(entry["revision"]),
                    oov=base64.b64decode(entry["oov"], validate=True),
                )
            except (KeyError, TypeError, ValueError, EmbarkError) as exc:
                raise CatalogError(f"{source}: bad model entry {entry!r:.80}: {exc}") from None
            if spec.name in models:
                raise CatalogError(f"{source}: model {spec.name!r} is listed twice")
            models[spec.name] = spec
        return cls(models)


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
