"""A deterministic fake encoder for unit tests: no model, no ONNX, same vector for same input.

It implements the ``Encoder`` protocol exactly as the real encoders do (``preprocess`` raises
ItemFailed for the one item, ``infer`` returns L2-normalised float32 rows), so the service and
server can be tested without building artifacts. Integration tests never use it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Collection, Sequence

import numpy as np
import numpy.typing as npt

from retina.encoders.base import EncoderKind
from retina.errors import ItemFailed

FAIL_REASON = "fake_failure"


def fake_vector(raw: str | bytes, dim: int) -> npt.NDArray[np.float32]:
    """The vector the fake gives ``raw``: seeded by its SHA-256, unit length."""
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
    vec = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return (vec / np.linalg.norm(vec)).astype(np.float32)


class FakeEncoder:
    """``Encoder[str | bytes]``: preprocessing is the identity, except that empty inputs and
    inputs listed in ``fail_on`` raise ItemFailed. ``batches`` records the size of every
    ``infer`` call, so tests can check that survivors are inferred as one batch."""

    def __init__(
        self,
        *,
        name: str = "fake-text",
        kind: EncoderKind = "text",
        dim: int = 8,
        revision: str = "r-fake",
        fail_on: Collection[str | bytes] = (),
    ) -> None:
        self.name = name
        self.kind: EncoderKind = kind
        self.dim = dim
        self.revision = revision
        self._fail_on = frozenset(fail_on)
        self._lock = threading.Lock()
        self.batches: list[int] = []

    def preprocess(self, raw: str | bytes) -> str | bytes:
        if not raw:
            raise ItemFailed("empty_input", "the input is empty")
        if raw in self._fail_on:
            raise ItemFailed(FAIL_REASON, "this input is configured to fail")
        return raw

    def infer(self, batch: Sequence[str | bytes]) -> npt.NDArray[np.float32]:
        # infer runs in executor threads; the lock keeps the record consistent.
        with self._lock:
            self.batches.append(len(batch))
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([fake_vector(item, self.dim) for item in batch])

    def oov(self) -> npt.NDArray[np.float32]:
        return fake_vector(b"", self.dim)
