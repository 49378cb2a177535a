"""A corpus of real text embeddings for the similarity benchmarks, built once and cached.

    .venv/bin/python -m bench.similar_corpus --artifacts /work/main/artifacts --count 100000

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


def embed(texts: list[str], artifacts: Path, model: str) -> npt.NDArray[np.float32]:
    from retina.artifacts.build import load_encoders
    from retina.settings import RetinaSettings

    settings = RetinaSettings(artifacts_dir=artifacts, models=(model,))
    encoder = load_encoders(artifacts, settings)[model]
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    started = time.perf_counter()
    step = 256
    for i in range(0, len(texts), step):
        batch = [encoder.preprocess(t) for t in texts[i : i + step]]
        out[i : i + len(batch)] = encoder.infer(batch)  # type: ignore[arg-type]
        if (i // step) % 20 == 0:
            rate = (i + len(batch)) / (time.perf_counter() - started)
            print(f"{i + len(batch)}/{len(texts)} texts, {rate:.0f}/s", file=sys.stderr)
    return out


def load_corpus(name: str) -> tuple[list[str], npt.NDArray[np.float32]]:
    """The cached corpus ``name``: its texts and their (n, dim) L2-normalised vectors."""
    texts = (CACHE_DIR / f"{name}.txt").read_text(encoding="utf-8").split("\n")
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
    texts = corpus_texts(args.count)
    print(f"{len(texts)} texts", file=sys.stderr)
    vectors = embed(texts, args.artifacts, args.model)
    CACHE_DIR.mkdir(exist_ok=True)
    np.save(CACHE_DIR / f"{args.name}.npy", vectors)
    (CACHE_DIR / f"{args.name}.txt").write_text("\n".join(texts), encoding="utf-8")
    print(f"wrote {CACHE_DIR / args.name}.npy {vectors.shape}", file=sys.stderr)


if __name__ == "__main__":
    main()
