"""``retina models bench``: a quick latency table of the built catalog models, as served.

Each model is loaded exactly as ``retina serve`` loads it (``load_encoders``: same sessions,
threads and revision checks) and timed on ``infer`` alone: one item (text: 64 tokens; image:
one 224x224 picture) and one batch (text: 32 items of 64 tokens; image: 16). Medians after a
warm-up. It is a smoke-level measurement for operators; ``bench/encoders.py`` is the full
comparison (PyTorch, fp32, int8) with ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from PIL import Image

from retina.artifacts.build import load_encoders
from retina.encoders import image as image_encoder
from retina.encoders.base import Encoder
from retina.encoders.text import TokenizedText
from retina.settings import RetinaSettings

TEXT_SEQ_LEN: Final = 64
TEXT_BATCH: Final = 32
IMAGE_BATCH: Final = 16
# Any text longer than 64 tokens: its first 63 tokens and [SEP] are the timed input.
_LONG_TEXT: Final = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)


@dataclass(frozen=True, slots=True)
class BenchRow:
    name: str
    kind: str
    ms_b1: float
    batch: int
    items_per_s: float
    # How ``infer`` runs a batch: "padded" (rows independent) or "one by one" (a model whose
    # activation scales would couple the rows of a padded batch: dynamic int8 text).
    batches: str = "padded"

    @property
    def batch_gain(self) -> float:
        """Batch throughput over one-by-one throughput (1000 / b1 ms)."""
        return self.items_per_s * self.ms_b1 / 1e3


def sample_item(encoder: Encoder[Any]) -> object:
    """A representative prepared input: 64 tokens of text, or a 224x224 picture."""
    if encoder.kind == "image":
        picture = Image.effect_mandelbrot((320, 240), (-2.0, -1.2, 1.0, 1.2), 64).convert("RGB")
        return image_encoder.to_model_input(picture)
    ids = np.asarray(encoder.preprocess(_LONG_TEXT).ids)
    return TokenizedText(np.concatenate([ids[: TEXT_SEQ_LEN - 1], ids[-1:]]))


def median_seconds(fn: Callable[[], object], runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def bench_catalog(artifacts_dir: Path, settings: RetinaSettings, *, runs: int) -> list[BenchRow]:
    """Time every model ``settings.models`` selects (all in the catalog when empty)."""
    return [
        _bench_one(name, encoder, runs)
        for name, encoder in sorted(load_encoders(artifacts_dir, settings).items())
    ]


def _bench_one(name: str, encoder: Encoder[Any], runs: int) -> BenchRow:
    item = sample_item(encoder)
    batch = [item] * (IMAGE_BATCH if encoder.kind == "image" else TEXT_BATCH)
    b1 = median_seconds(lambda: encoder.infer([item]), runs)
    bn = median_seconds(lambda: encoder.infer(batch), max(3, runs // 5))
    coupled = bool(getattr(encoder, "batch_coupled", False))
    return BenchRow(
        name,
        encoder.kind,
        b1 * 1e3,
        len(batch),
        len(batch) / bn,
        batches="one by one" if coupled else "padded",
    )
