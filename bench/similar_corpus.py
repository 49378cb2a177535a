"""A corpus of real text embeddings for the similarity benchmarks, built once and cached.

    .venv/bin/python -m bench.similar_corpus --artifacts artifacts --count 100000

Texts, all from packages installed from the registries: the CN2023 product descriptions
(``embark.heads.dataset.load_cn2023``), their shortened shop-title forms
(``embark.heads.train.shorten``), then docstring sentences of the installed Python packages
(read with ``ast``, never imported), canonicalised and de-duplicated. They are embedded with the
served MiniLM-L6 artifact in process (no server) and cached as ``<name>.npy`` + ``<name>.txt``
under ``bench/cache/`` (gitignored): at ~400 texts/s on two shared cores, 100k texts take
minutes, and every benchmark run after the first reads the cache.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from embark.heads.dataset import load_cn2023
from embark.heads.train import shorten
from embark.keys import canonical_text

CACHE_DIR = Path(__file__).parent / "cache"
_CHECKPOINT = 5120
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORDY = re.compile(r"^[A-Za-z][A-Za-z ,;:'()\-]{18,160}[.]?$")


def docstring_sentences(roots: list[Path]) -> Iterator[str]:
    """Plain-English sentences from the docstrings of the ``.py`` files under ``roots``."""
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                continue
            for node in ast.walk(tree):
                if not isinstance(
                    node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
                ):
                    continue
                doc = ast.get_docstring(node)
                if not doc:
                    continue
                for para in doc.split("\n\n"):
                    for sentence in _SENTENCE.split(" ".join(para.split())):
                        if _WORDY.match(sentence):
                            yield sentence


def corpus_texts(count: int) -> list[str]:
    seen: dict[str, None] = {}
    entries = load_cn2023()
    for entry in entries:
        seen.setdefault(canonical_text(entry.description), None)
    for entry in entries:
        for form in shorten(entry.description):
            seen.setdefault(canonical_text(form), None)
    site = Path(np.__file__).parent.parent
    roots = [site / name for name in ("sklearn", "scipy", "matplotlib", "numpy", "skimage")]
    roots += [
        Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    ]
    for sentence in docstring_sentences([r for r in roots if r.is_dir()]):
        if len(seen) >= count:
            break
        seen.setdefault(canonical_text(sentence), None)
    texts = [t for t in seen if t][:count]
    if len(texts) < count:
        print(f"only {len(texts)} distinct texts available", file=sys.stderr)
    return texts


def embed(texts: list[str], artifacts: Path, model: str, partial: Path) -> npt.NDArray[np.float32]:
    """Vectors of ``texts``, saved to ``partial`` every ``_CHECKPOINT`` texts so an interrupted
    run resumes where it stopped. Texts go in a random order, sorted by length within each
    checkpoint (less padding per batch): every checkpoint holds a random sample of the corpus,
    usable on its own (``load_corpus(..., partial=True)``) when a run is cut short."""
    from retina.artifacts.build import load_encoders
    from retina.settings import RetinaSettings

    settings = RetinaSettings(artifacts_dir=artifacts, models=(model,))
    encoder = load_encoders(artifacts, settings)[model]
    shuffled = np.random.default_rng(0).permutation(len(texts)).tolist()
    order: list[int] = []
    for start in range(0, len(shuffled), _CHECKPOINT):
        order += sorted(shuffled[start : start + _CHECKPOINT], key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    done = 0
    if partial.exists():
        saved = np.load(partial)
        done = int(saved["done"])
        out[:] = saved["vectors"]
    started, first = time.perf_counter(), done
    step = 128
    for i in range(done, len(texts), step):
        rows = order[i : i + step]
        out[rows] = encoder.infer([encoder.preprocess(texts[r]) for r in rows])  # type: ignore[misc]
        done = i + len(rows)
        if done % _CHECKPOINT == 0 or done == len(texts):
            np.savez(partial, vectors=out, done=done, order=np.asarray(order))
            rate = (done - first) / (time.perf_counter() - started)
            print(f"{done}/{len(texts)} texts, {rate:.0f}/s", file=sys.stderr, flush=True)
    return out


def load_corpus(name: str, *, partial: bool = False) -> tuple[list[str], npt.NDArray[np.float32]]:
    """The cached corpus ``name``: its texts and their (n, dim) L2-normalised vectors; with
    ``partial``, the random sample an unfinished run has embedded so far."""
    texts = (CACHE_DIR / f"{name}.txt").read_text(encoding="utf-8").split("\n")
    if partial and not (CACHE_DIR / f"{name}.npy").exists():
        saved = np.load(CACHE_DIR / f"{name}.partial.npz")
        rows = saved["order"][: int(saved["done"])]
        return [texts[i] for i in rows], saved["vectors"][rows]
    vectors = np.load(CACHE_DIR / f"{name}.npy")
    if len(texts) != len(vectors):
        raise SystemExit(f"corpus {name}: {len(texts)} texts but {len(vectors)} vectors")
    return texts, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--name", default="minilm-l6-100k")
    args = parser.parse_args()
    CACHE_DIR.mkdir(exist_ok=True)
    text_file = CACHE_DIR / f"{args.name}.txt"
    if text_file.exists():
        texts = text_file.read_text(encoding="utf-8").split("\n")
    else:
        texts = corpus_texts(args.count)
        text_file.write_text("\n".join(texts), encoding="utf-8")
    print(f"{len(texts)} texts", file=sys.stderr, flush=True)
    vectors = embed(texts, args.artifacts, args.model, CACHE_DIR / f"{args.name}.partial.npz")
    np.save(CACHE_DIR / f"{args.name}.npy", vectors)
    print(f"wrote {CACHE_DIR / args.name}.npy {vectors.shape}", file=sys.stderr)


if __name__ == "__main__":
    main()
