"""The similarity index's interface: one small Protocol, one file per implementation beside it.

An index answers "which stored vectors of this model revision are nearest to this vector?".
Its space is one model revision (``Space``): vectors of two revisions are never compared, as
they are never served for each other. The score is always the **cosine similarity in [-1, 1]**
(1: same direction), whatever the backend computes natively (Cassandra's ``similarity_cosine``
returns (1 + cos) / 2 and is converted back by ``cosine_from_unit``).

Vectors reach an index through ``add``, called by ``IndexingStore.put_many`` after every store
write (KFC's and read-through's alike), and through ``embark index backfill`` for rows written
before the index existed. An implementation that searches the store's own table (SQLite) needs
no separate write and makes ``add`` a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from embark.store.base import StoredVector

# Cassandra's ANN queries return at most 1,000 rows; every backend keeps the same bound so a
# request valid on one is valid on all.
MAX_K: Final = 1000

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Space:
    """One model revision: what an index is partitioned by."""

    model: str
    revision: str
    dim: int


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A stored item near the query: its key, its canonical input, and the cosine in [-1, 1]."""

    key: str
    input: str
    score: float


@runtime_checkable
class SimilarityIndex(Protocol):
    async def add(self, rows: Sequence[StoredVector]) -> None:
        """Make stored vectors searchable (idempotent per key). Raises BackendUnavailable."""
        ...

    async def search(self, space: Space, query: F32, k: int) -> list[Neighbour]:
        """At most ``k`` (1..MAX_K) stored vectors of ``space`` nearest to ``query`` by cosine,
        best first. An unknown or empty space answers []. Raises BackendUnavailable."""
        ...

    async def close(self) -> None:
        """Release what the index holds. Idempotent."""
        ...


def unit_rows(matrix: F32) -> F32:
    """Rows scaled to unit length (zero rows stay zero): their dot products are cosines."""
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    out: F32 = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    return out


def cosine_from_unit(similarity: float) -> float:
    """Cassandra's ``similarity_cosine`` ((1 + cos) / 2, in [0, 1]) as the cosine in [-1, 1]."""
    return 2.0 * similarity - 1.0
