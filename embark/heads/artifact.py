"""A categorizer head on disk, and in memory: save, load, and the revision binding.

A head is a linear classifier over one embedding model's vectors, optionally plus sparse lexical
(TF-IDF) features of the same text. It is stored as two files, one version each:

    heads/<name>/<version>.npz    weights (labels x dim), bias, the lexical part if any
                                  (vocabulary, idf, weights) and the label prototypes if any
                                  (``prototypes.py``: vectors, owner); plain arrays, no pickles
    heads/<name>/<version>.json   labels, model name and REVISION, dim, training figures

A head is bound to the embedding model revision it was trained on: vectors of another revision
live in another space, so ``check_revision`` refuses it (FAILED_PRECONDITION) rather than serve
confident nonsense. Versions are integers; the directory loader serves the highest.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embark.catalog import Catalog
from embark.errors import EmbarkError, PreconditionFailed
from embark.heads.prototypes import Prototypes

# Format 2 added the prototypes; format 1 heads (no prototypes) still load. A server older than
# format 2 refuses a format 2 head by name ("expected head format 1") rather than serve it
# without its prototypes.
HEAD_FORMAT = 2
READABLE_FORMATS = (1, 2)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

F32 = npt.NDArray[np.float32]


class HeadError(EmbarkError):
    """A head artifact is missing or malformed."""


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise HeadError(f"bad head name {name!r}: letters, digits, '.', '_', '-'; at most 64")
    return name


@dataclass(frozen=True, slots=True)
class Lexical:
    """TF-IDF features of the raw text, computed exactly as scikit-learn's ``TfidfVectorizer``
    (lowercase; ``word`` tokens ``(?u)\\b\\w\\w+\\b`` or ``char_wb`` n-grams; sublinear tf;
    l2 norm), so a head trained with scikit-learn serves with numpy alone."""

    analyzer: str  # "word" | "char_wb"
    ngram: tuple[int, int]
    vocabulary: Mapping[str, int]
    idf: F32
    weights: F32  # labels x len(vocabulary)
    sublinear_tf: bool = True

    def features(self, text: str) -> tuple[npt.NDArray[np.int64], F32]:
        """Sparse (column indices, values) of one text; values l2-normalised."""
        counts: dict[int, int] = {}
        for gram in self._grams(text.lower()):
            j = self.vocabulary.get(gram)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        if not counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        if self.sublinear_tf:
            tf = 1.0 + np.log(tf)
        values = tf * self.idf[cols]
        values /= math.sqrt(float(values @ values)) or 1.0
        return cols, values.astype(np.float32)

    def _grams(self, text: str) -> list[str]:
        low, high = self.ngram
        if self.analyzer == "word":
            tokens = re.findall(r"(?u)\b\w\w+\b", text)
            grams: list[str] = []
            for n in range(low, high + 1):
                grams.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
            return grams
        grams = []
        for word in text.split():
            padded = f" {word} "
            for n in range(low, high + 1):
                if len(padded) <= n:
                    # scikit-learn counts a word no longer than n once, whole, then stops
                    grams.append(padded)
                    break
                grams.extend(padded[i : i + n] for i in range(len(padded) - n + 1))
        return grams


@dataclass(frozen=True, slots=True)
class Head:
    """A loaded head: ``logits = weights @ vector + bias (+ lexical weights @ tfidf(text))
    (+ prototype weight x best cosine with each label's prototypes)``."""

    name: str
    version: int
    labels: tuple[str, ...]
    model: str
    revision: str
    dim: int
    weights: F32  # labels x dim
    bias: F32  # labels
    lexical: Lexical | None = None
    prototypes: Prototypes | None = None
    info: Mapping[str, Any] = field(default_factory=dict)  # training figures, label titles

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.weights.shape != (n, self.dim) or self.bias.shape != (n,):
            raise HeadError(
                f"head {self.name}: weights {self.weights.shape} / bias {self.bias.shape} do not "
                f"match {n} labels x dim {self.dim}"
            )
        if self.lexical is not None and self.lexical.weights.shape != (
            n,
            len(self.lexical.vocabulary),
        ):
            raise HeadError(f"head {self.name}: lexical weights do not match its vocabulary")
        protos = self.prototypes
        if protos is not None and (protos.labels != n or protos.vectors.shape[1] != self.dim):
            raise HeadError(f"head {self.name}: prototypes do not match {n} labels x {self.dim}")

    def logits(self, vector: F32, text: str | None = None) -> F32:
        row: F32 = self.batch_logits(vector[np.newaxis, :], [text])[0]
        return row

    def batch_logits(self, vectors: F32, texts: Sequence[str | None]) -> F32:
        """Logits for a batch: row i scores ``vectors[i]`` with ``texts[i]``'s lexical features."""
        out = vectors @ self.weights.T + self.bias
        if self.lexical is not None:
            for i, text in enumerate(texts):
                if not text:
                    continue
                cols, values = self.lexical.features(text)
                if cols.size:
                    out[i] += self.lexical.weights[:, cols] @ values
        if self.prototypes is not None:
            out += self.prototypes.weight * self.prototypes.scores(vectors)
        return out.astype(np.float32, copy=False)

    def probabilities(self, vector: F32, text: str | None = None) -> F32:
        return softmax(self.logits(vector, text))


def softmax(logits: F32) -> F32:
    """Numerically stable softmax over the last axis."""
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    out: F32 = (exp / np.sum(exp, axis=-1, keepdims=True)).astype(np.float32, copy=False)
    return out


def top_k(probabilities: F32, labels: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The k most probable labels, best first (ties: the earlier label first)."""
    k = max(0, min(k, len(labels)))
    if k == 0:
        return []
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(labels[i], float(probabilities[i])) for i in order]


def check_revision(head: Head, catalog: Catalog) -> None:
    """Raise FAILED_PRECONDITION unless the catalog serves the head's model at its revision."""
    spec = catalog.require(head.model)
    if spec.revision != head.revision:
        raise PreconditionFailed(
            f"head {head.name!r} v{head.version} was trained on {head.model}@{head.revision}; the "
            f"catalog serves {head.model}@{spec.revision}: retrain it (`embark heads train`)"
        )
    if spec.dim != head.dim:
        raise PreconditionFailed(
            f"head {head.name!r} expects {head.dim}-d vectors; {head.model} has {spec.dim}"
        )


def next_version(directory: Path, name: str) -> int:
    return max(versions(directory, name), default=0) + 1


def versions(directory: Path, name: str) -> list[int]:
    folder = directory / check_name(name)
    return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())


def save_head(head: Head, directory: Path) -> Path:
    """Write ``<directory>/<name>/<version>.{npz,json}``; returns the JSON path. The arrays are
    written first, so a reader that finds the JSON finds complete weights."""
    folder = directory / check_name(head.name)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, npt.NDArray[Any]] = {
        "weights": head.weights.astype(np.float32),
        "bias": head.bias.astype(np.float32),
    }
    meta: dict[str, Any] = {
        "format": HEAD_FORMAT,
        "name": head.name,
        "version": head.version,
        "labels": list(head.labels),
        "model": head.model,
        "revision": head.revision,
        "dim": head.dim,
        "lexical": None,
        "info": dict(head.info),
    }
    if head.lexical is not None:
        lex = head.lexical
        vocab = sorted(lex.vocabulary, key=lex.vocabulary.__getitem__)
        arrays |= {
            "lexical_vocabulary": np.array(vocab, dtype=np.str_),
            "lexical_idf": lex.idf.astype(np.float32),
            "lexical_weights": lex.weights.astype(np.float32),
        }
        meta["lexical"] = {
            "analyzer": lex.analyzer,
            "ngram": list(lex.ngram),
            "sublinear_tf": lex.sublinear_tf,
            "size": len(vocab),
        }
    meta["prototypes"] = None
    if head.prototypes is not None:
        arrays |= {
            # float16 halves the file; a cosine moves by ~1e-3 at most: ~0.01 in the logits at
            # the default weight (7.5)
            "prototype_vectors": head.prototypes.vectors.astype(np.float16),
            "prototype_owner": head.prototypes.owner.astype(np.int64),
        }
        meta["prototypes"] = {"weight": head.prototypes.weight, "count": head.prototypes.owner.size}
    npz = folder / f"{head.version}.npz"
    tmp = npz.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, allow_pickle=False, **arrays)
    tmp.replace(npz)
    path = folder / f"{head.version}.json"
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def load_head(path: Path) -> Head:
    """Load one head from its JSON path (the arrays beside it)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        _check_format(meta, path)
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as arrays:
            lexical = None
            if (lex := meta.get("lexical")) is not None:
                vocab = arrays["lexical_vocabulary"].tolist()
                lexical = Lexical(
                    analyzer=str(lex["analyzer"]),
                    ngram=(int(lex["ngram"][0]), int(lex["ngram"][1])),
                    vocabulary={str(t): j for j, t in enumerate(vocab)},
                    idf=arrays["lexical_idf"].astype(np.float32),
                    weights=arrays["lexical_weights"].astype(np.float32),
                    sublinear_tf=bool(lex["sublinear_tf"]),
                )
            prototypes = None
            if (proto := meta.get("prototypes")) is not None:
                prototypes = Prototypes(
                    vectors=arrays["prototype_vectors"].astype(np.float32),
                    owner=arrays["prototype_owner"].astype(np.int64),
                    weight=float(proto["weight"]),
                )
            return Head(
                name=check_name(str(meta["name"])),
                version=int(meta["version"]),
                labels=tuple(str(label) for label in meta["labels"]),
                model=str(meta["model"]),
                revision=str(meta["revision"]),
                dim=int(meta["dim"]),
                weights=arrays["weights"].astype(np.float32),
                bias=arrays["bias"].astype(np.float32),
                lexical=lexical,
                prototypes=prototypes,
                info=dict(meta.get("info") or {}),
            )
    except HeadError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HeadError(f"cannot load head {path}: {exc}") from None


def _check_format(meta: Any, path: Path) -> None:
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise HeadError(
            f"{path}: head format {found!r}; this EmbArk reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}: upgrade it or retrain the head"
        )


def latest_heads(directory: Path) -> list[Path]:
    """The JSON path of each head's highest version under ``directory``."""
    if not directory.is_dir():
        return []
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and _NAME.match(p.name))
    return [
        folder / f"{numbers[-1]}.json"
        for folder in folders
        if (numbers := versions(directory, folder.name))
    ]
