"""``IndexingStore``: an ``EmbeddingStore`` that also feeds a ``SimilarityIndex`` on every write.

Wrapping the store (rather than changing its callers) is what lets KFC's writes and EmbArk's
read-through write-backs both reach the index without either knowing about it:
``embark.backends.open_store`` returns this wrapper when similarity search is on for a backend
whose index is a separate table (Cassandra). Reads go straight to the inner store: the hit path
never touches the index.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from embark import vectors
from embark.similar.base import SimilarityIndex
from embark.store.base import EmbeddingStore, StoredVector, StoreWrapper


class IndexingStore(StoreWrapper):
    """``inner`` for everything; ``put_many`` writes the store and the index concurrently and
    succeeds only when both did (both writes are idempotent, so the caller's retry repairs a
    half-done batch, exactly as for the store alone)."""

    def __init__(self, inner: EmbeddingStore, index: SimilarityIndex) -> None:
        super().__init__(inner)
        self.index = index

    async def put_many(self, rows: Sequence[StoredVector]) -> None:
        if not rows:
            return
        for row in rows:  # a bad row fails the batch before either write starts
            vectors.check(row.vector, row.dim)
        # Both run to the end (no cancellation mid-batch); the store's error is raised first,
        # as itself (callers handle BackendUnavailable, not an ExceptionGroup).
        results = await asyncio.gather(
            self._inner.put_many(rows), self.index.add(rows), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def close(self) -> None:
        await self.index.close()
        await self._inner.close()
