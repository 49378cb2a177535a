"""The similarity index on Cassandra 5: a ``vector<float, dim>`` table per model revision with a
COSINE SAI index, searched with ``ORDER BY v ANN OF ? LIMIT k``.

Layout, beside the store's tables in the same keyspace (created by ``embark schema apply`` with
``EMBARK_STORE__SIMILARITY_SEARCH=true``, from the catalog):

    vec_<model>_<hash of model and revision>   key PRIMARY KEY -> input, v vector<float, dim>
    + CREATE INDEX ... ON (v) USING 'sai' WITH OPTIONS = {'similarity_function': 'COSINE'}

Why a table per model revision and not one shared table: a vector column has one fixed
dimension; an ANN query over a whole table needs no filter (a filter on a revision column
would cut recall and add latency); and a retired revision's table is dropped whole, while its
rows age out by the same TTL as the store's. Why a second table rather than a vector column on
``embeddings``: the hit path reads ``embeddings`` by key and must not get slower, nor carry
the SAI index's cost; the hit path never reads these tables.

Rows are written by ``add`` beside the store's own rows (``IndexingStore``, one write per
vector, same TTL) and hold the input too, so a search answers keys, inputs and scores in one
query. Cassandra's ``similarity_cosine`` returns (1 + cos) / 2; ``search`` answers the cosine.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from cassandra import InvalidRequest
from cassandra.cqltypes import FloatType, VectorType

from embark.errors import PreconditionFailed
from embark.similar.base import F32, Neighbour, Space, cosine_from_unit
from embark.store.base import StoredVector
from embark.store.cassandra import CassandraStore

log = logging.getLogger(__name__)

_SLUG = re.compile(r"[^a-z0-9]+")
_RETRY_MISSING_S: Final = 60.0
_MODEL_CHARS: Final = 24  # vec_ + 24 + _ + 12 hex = 41, under Cassandra's 48-character limit


def table_name(model: str, revision: str) -> str:
    """The vector table of one model revision: readable model prefix, collision-free hash."""
    slug = _SLUG.sub("_", model.lower()).strip("_")[:_MODEL_CHARS] or "m"
    digest = hashlib.blake2b(f"{model}\0{revision}".encode(), digest_size=6).hexdigest()
    return f"vec_{slug}_{digest}"


def schema_statements(keyspace: str, spaces: Iterable[Space]) -> list[str]:
    """CQL creating the vector table and its ANN index of each model revision (idempotent)."""
    statements: list[str] = []
    for spec in spaces:
        table = table_name(spec.model, spec.revision)
        statements += [
            f"CREATE TABLE IF NOT EXISTS {keyspace}.{table} ("
            f" key text PRIMARY KEY, input text, v vector<float, {spec.dim}>)",
            f"CREATE INDEX IF NOT EXISTS {table}_ann ON {keyspace}.{table} (v) USING 'sai'"
            " WITH OPTIONS = {'similarity_function': 'COSINE'}",
        ]
    return statements


def _serialize_float_vector(cls: Any, value: npt.ArrayLike, protocol_version: int) -> bytes:
    arr = np.asarray(value, dtype=">f4")
    if arr.shape != (cls.vector_size,):
        raise ValueError(f"vector of {arr.size} values for a vector<float, {cls.vector_size}>")
    return arr.tobytes()


def _fast_vectors(statement: Any) -> Any:
    """``statement`` with its ``vector<float, n>`` bind markers serialised by numpy.

    The driver's ``VectorType.serialize`` packs a Python float at a time: 1.6 ms of client CPU
    per 384-d vector on this 2-core box, as much as Cassandra's own indexing of the row (the
    figure behind this function). The wire form is simply n big-endian float32, which numpy
    writes in microseconds. Only the bound column's type is swapped, per statement."""
    for i, column in enumerate(statement.column_metadata):
        kind = column.type
        if (
            isinstance(kind, type)
            and issubclass(kind, VectorType)
            and getattr(kind, "subtype", None) is FloatType
        ):
            fast = type(kind.__name__, (kind,), {"serialize": classmethod(_serialize_float_vector)})
            statement.column_metadata[i] = column._replace(type=fast)
    return statement


class _Statements:
    __slots__ = ("insert", "search")

    def __init__(self, insert: Any, search: Any) -> None:
        self.insert, self.search = insert, search


class CassandraSimilarityIndex:
    """``SimilarityIndex`` on the store's own session (no second connection pool)."""

    def __init__(self, store: CassandraStore) -> None:
        self._store = store
        # (model, revision) -> its prepared statements.
        self._prepared: dict[tuple[str, str], _Statements] = {}
        # (model, revision) -> when its table was found missing: asked again after
        # _RETRY_MISSING_S, so a running KFC picks up a schema applied after it started.
        self._missing: dict[tuple[str, str], float] = {}

    async def _statements(self, model: str, revision: str) -> _Statements | None:
        space = (model, revision)
        missing_since = self._missing.get(space)
        if missing_since is not None and time.monotonic() - missing_since < _RETRY_MISSING_S:
            return None
        if space not in self._prepared:
            # {ks} and the table name are validated identifiers; every value is a bind marker.
            table = "{ks}." + table_name(model, revision)
            try:
                insert, search = await asyncio.to_thread(
                    lambda: (
                        _fast_vectors(
                            self._store.prepare(
                                f"INSERT INTO {table} (key, input, v) VALUES (?, ?, ?) USING TTL ?",  # noqa: S608
                                write=True,
                            )
                        ),
                        _fast_vectors(
                            self._store.prepare(
                                f"SELECT key, input, similarity_cosine(v, ?) FROM {table}"  # noqa: S608
                                " ORDER BY v ANN OF ? LIMIT ?",
                                write=False,
                            )
                        ),
                    )
                )
            except InvalidRequest:
                # Expected until the schema is applied: a message, not a traceback.
                log.error(  # noqa: TRY400
                    "no similarity table for %s@%s: run `embark schema apply` with"
                    " EMBARK_STORE__SIMILARITY_SEARCH=true, then `embark index backfill`",
                    model,
                    revision,
                )
                self._missing[space] = time.monotonic()
                return None
            self._missing.pop(space, None)
            self._prepared[space] = _Statements(insert, search)
        return self._prepared[space]

    async def add(self, rows: Sequence[StoredVector]) -> None:
        ttl = self._store.config.vector_ttl_s
        writes: list[tuple[Any, tuple[Any, ...]]] = []
        for row in rows:
            statements = await self._statements(row.model, row.revision)
            values = np.frombuffer(row.vector, dtype="<f4")
            # COSINE cannot index a zero vector (Cassandra refuses the write); it has no
            # direction, so it has no neighbours either.
            if statements is None or not values.any():
                continue
            writes.append((statements.insert, (row.key, row.input, values, ttl)))
        if writes:
            await self._store.write(writes, "similarity index write")

    async def search(self, space: Space, query: F32, k: int) -> list[Neighbour]:
        statements = await self._statements(space.model, space.revision)
        if statements is None:
            raise PreconditionFailed(
                f"similarity search is not set up for {space.model}@{space.revision}:"
                " run `embark schema apply` with EMBARK_STORE__SIMILARITY_SEARCH=true"
            )
        vector = np.asarray(query, dtype=np.float32)
        rows = await self._store.execute(statements.search, (vector, vector, k), "search")
        return [Neighbour(key, input_, cosine_from_unit(score)) for key, input_, score in rows]

    async def close(self) -> None:
        """Nothing of its own: the store owns the session."""
