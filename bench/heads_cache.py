"""Text embeddings for the head experiments, computed once in process and cached.

``embark heads eval`` fetches its embeddings through a running EmbArk (read-through), as a user
would. The selection runs (``bench/heads_select.py``) fit dozens of heads on the same ~40k
texts, so they read a table instead: ``bench/cache/heads-<model>.npz`` (gitignored), seeded
from the similarity corpus cache (``bench/similar_corpus.py``, the same CN2023 texts) when it
is there, and grown with the served artifact in process (``retina``'s encoder, no server) for
any text it lacks. Keys are ``embark.keys.canonical_text``, as in the archive.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from embark.keys import canonical_text

CACHE_DIR = Path(__file__).parent / "cache"


class TextVectors:
    """A text -> vector table for one model: the seed corpus (read-only, memory-mapped) plus
    what this table computed itself (persisted under ``bench/cache``)."""

    def __init__(self, artifacts: Path, model: str, cache_dir: Path = CACHE_DIR) -> None:
        self._artifacts, self._model = artifacts, model
        self._path = cache_dir / f"heads-{model}.npz"
        self._own: dict[str, npt.NDArray[np.float32]] = {}
        self._seed: dict[str, int] = {}
        self._seed_rows: npt.NDArray[np.float32] = np.zeros((0, 0), dtype=np.float32)
        self._encoder: object | None = None
        cache_dir.mkdir(parents=True, exist_ok=True)
        if self._path.exists():
            saved = np.load(self._path)
            self._own = dict(zip(saved["texts"].tolist(), saved["vectors"], strict=True))
        seed_txt = cache_dir / f"{model}-100k.txt"
        seed_npy = cache_dir / f"{model}-100k.npy"
        if seed_txt.exists() and seed_npy.exists():
            texts = seed_txt.read_text(encoding="utf-8").split("\n")
            self._seed = {t: i for i, t in enumerate(texts)}
            self._seed_rows = np.load(seed_npy, mmap_mode="r")

    def _row(self, key: str) -> npt.NDArray[np.float32]:
        if (row := self._own.get(key)) is not None:
            return row
        return np.asarray(self._seed_rows[self._seed[key]])

    def __call__(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        keys = [canonical_text(t) for t in texts]
        missing = [k for k in dict.fromkeys(keys) if k not in self._own and k not in self._seed]
        if missing:
            self._compute(missing)
        return np.stack([self._row(k) for k in keys]).astype(np.float32)

    def _compute(self, texts: list[str]) -> None:
        from retina.artifacts.build import load_encoders
        from retina.settings import RetinaSettings

        if self._encoder is None:
            settings = RetinaSettings(artifacts_dir=self._artifacts, models=(self._model,))
            self._encoder = load_encoders(self._artifacts, settings)[self._model]
        encoder: object = self._encoder
        ordered = sorted(texts, key=len)  # less padding per batch
        started = time.perf_counter()
        for start in range(0, len(ordered), 128):
            chunk = ordered[start : start + 128]
            rows = encoder.infer([encoder.preprocess(t) for t in chunk])  # type: ignore[attr-defined]
            for text, row in zip(chunk, rows, strict=True):
                self._own[text] = np.asarray(row, dtype=np.float32)
            if (start // 128) % 20 == 19:
                done = start + len(chunk)
                rate = done / (time.perf_counter() - started)
                print(f"embedded {done}/{len(ordered)} ({rate:.0f}/s)", file=sys.stderr)
                self.save()  # an interrupted run keeps what it computed
        self.save()

    def save(self) -> None:
        tmp = self._path.with_suffix(f".{os.getpid()}.npz")  # two runs may save at once
        texts = np.array(list(self._own), dtype=object).astype(np.str_)
        np.savez(tmp, texts=texts, vectors=np.stack(list(self._own.values())))
        tmp.replace(self._path)
