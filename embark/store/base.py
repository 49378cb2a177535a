"""The archive's interface. One small Protocol; one file per implementation beside it.

Every method is async: the gRPC front and KFC run on an event loop, and blocking drivers
(sqlite3) run in an executor inside their implementation, never on the loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from embark.errors import BackendUnavailable
from embark.keys import InputKind


@dataclass(frozen=True, slots=True)
class StoredVector:
    """A computed vector and what it was computed from. Writes are idempotent per key."""

    key: str
    model: str
    revision: str
    kind: InputKind
    input: str  # the canonical input, kept for debugging and export
    vector: bytes  # little-endian float32
    dim: int
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """A permanent per-item failure (404, not an image, ...). Expires by TTL so it is retried."""

    key: str
    model: str
    revision: str
    reason: str
    message: str
    failed_at_ms: int


Lookup = StoredVector | FailureRecord


class PartialLookup(BackendUnavailable):
    """``get_many`` could read only part of the keys (a memory tier answered, the archive did
    not): ``found`` holds what was read; the other keys are unknown, not missing."""

    def __init__(self, found: Mapping[str, Lookup], message: str) -> None:
        super().__init__(f"archive read failed: {message}")
        self.found = found


@runtime_checkable
class EmbeddingStore(Protocol):
    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Lookup]:
        """Look keys up. Absent keys are absent from the result; a stored vector wins over a
        failure record for the same key. Raises BackendUnavailable when the store is down."""
        ...

    async def put_many(self, rows: Sequence[StoredVector]) -> None:
        """Write vectors (idempotent: same key, same vector). A written vector supersedes any
        failure record of its key. Raises BackendUnavailable; nothing is half-acknowledged."""
        ...

    async def put_failures(self, rows: Sequence[FailureRecord]) -> None:
        """Record permanent failures; they expire after the store's failure TTL."""
        ...

    async def scan(self, model: str, revision: str) -> Sequence[StoredVector]:
        """Every stored vector of one model revision (for export and head training)."""
        ...

    async def ping(self) -> None:
        """Return when the store answers; raise BackendUnavailable otherwise (readiness)."""
        ...

    async def close(self) -> None:
        """Release connections. Idempotent."""
        ...


class StoreWrapper:
    """An ``EmbeddingStore`` around ``inner`` that passes every call through: the base of the
    stores that change one thing (the LRU tier, float16 writes, the similarity index), so each
    says only what it changes."""

    def __init__(self, inner: EmbeddingStore) -> None:
        self._inner = inner

    @property
    def inner(self) -> EmbeddingStore:
        return self._inner

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Lookup]:
        return await self._inner.get_many(keys)

    async def put_many(self, rows: Sequence[StoredVector]) -> None:
        await self._inner.put_many(rows)

    async def put_failures(self, rows: Sequence[FailureRecord]) -> None:
        await self._inner.put_failures(rows)

    async def scan(self, model: str, revision: str) -> Sequence[StoredVector]:
        return await self._inner.scan(model, revision)

    async def ping(self) -> None:
        await self._inner.ping()

    async def close(self) -> None:
        await self._inner.close()
