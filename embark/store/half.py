"""Half-precision storage (``EMBARK_STORE__VECTOR_DTYPE=float16``, KFC the same): vectors are
written to the archive as float16, half the bytes on disk and on the wire from the archive;
every reader gets float32 back (the stores widen float16 rows on read, ``vectors.widen``), so
the API, the LRU and the categorizer heads see one form. Rows written as float32 before the
switch (or by a writer configured otherwise) still read: the length says which form a row is.

Fidelity, measured by `python -m bench.archive`: cosine against the float32 vector >= 0.9999 on
unit vectors (float16 keeps 11 significant bits a component).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from embark import vectors
from embark.store.base import StoredVector, StoreWrapper


class HalfPrecisionWrites(StoreWrapper):
    """``EmbeddingStore`` that narrows every written vector to float16 before ``inner`` writes
    it; everything else is ``inner``'s."""

    async def put_many(self, rows: Sequence[StoredVector]) -> None:
        for row in rows:
            vectors.check(row.vector, row.dim)  # float32 in, as from every encoder
        await self._inner.put_many(
            [dataclasses.replace(row, vector=vectors.narrow(row.vector)) for row in rows]
        )
