"""The embedded similarity index: exact cosine search with numpy over the SQLite store's rows.

Why exact and not an ANN library: an embedded archive is small (one process, one file), and a
matrix-vector product over 100k 384-d vectors takes milliseconds, with recall 1.0 by
definition, no index file to keep in step and no extra dependency (figures in
docs/similarity.md, from ``bench/similar.py``). Past a few million rows an archive belongs on
Cassandra anyway.

No second copy is written: the index reads the store's own ``embeddings`` table. Each space
(model revision) is loaded into memory the first time it is searched, and every search first
catches up with the rows written since (``rowid`` above the last one seen, a range read of the
``(model, revision)`` index), so writes by KFC, by read-through or by another process on the
same file become searchable without any hook, and ``add`` is a no-op. A key written again
(``INSERT OR REPLACE`` gives it a new rowid) overwrites its slot; expired rows are masked at
query time by their ``expires_at_ms``, as the store hides them on read.

Memory: 4 bytes x dim per vector (154 MB for 100k 384-d vectors), held while the process runs.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from embark import vectors
from embark.errors import BackendUnavailable
from embark.similar.base import F32, Neighbour, Space, unit_rows
from embark.store.base import StoredVector

T = TypeVar("T")

_INITIAL_CAPACITY = 1024


@dataclass
class _Matrix:
    """The loaded rows of one space: unit vectors in a growing array, and what they are."""

    dim: int
    keys: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    slot: dict[str, int] = field(default_factory=dict)
    last_rowid: int = 0
    unit: F32 = field(init=False)
    expires_ms: npt.NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        self.unit = np.zeros((_INITIAL_CAPACITY, self.dim), dtype=np.float32)
        self.expires_ms = np.zeros(_INITIAL_CAPACITY, dtype=np.int64)

    def put(self, key: str, input_: str, unit: F32, expires_ms: int) -> None:
        index = self.slot.get(key)
        if index is None:
            index = len(self.keys)
            if index == len(self.unit):  # double: appends stay amortised O(1)
                self.unit = np.concatenate([self.unit, np.zeros_like(self.unit)])
                self.expires_ms = np.concatenate([self.expires_ms, np.zeros_like(self.expires_ms)])
            self.keys.append(key)
            self.inputs.append(input_)
            self.slot[key] = index
        else:
            self.inputs[index] = input_
        self.unit[index] = unit
        self.expires_ms[index] = expires_ms


class SqliteSimilarityIndex:
    """``SimilarityIndex`` over a SQLite store file. Its own read connection and worker thread:
    a search never waits behind the store's writes (WAL lets readers run beside the writer)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-similar")
        self._conn: sqlite3.Connection | None = None
        self._spaces: dict[tuple[str, str], _Matrix] = {}
        self._closed = False

    async def open(self) -> SqliteSimilarityIndex:
        def connect() -> None:
            # The store creates the file and schema; the index only reads it.
            conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA query_only=ON")
            self._conn = conn

        await self._run(connect)
        return self

    async def add(self, rows: Sequence[StoredVector]) -> None:
        """Nothing to do: the next search reads rows from the store's table (see above)."""

    async def search(self, space: Space, query: F32, k: int) -> list[Neighbour]:
        return await self._run(lambda: self._search(space, query, k))

    async def close(self) -> None:
        if self._closed:
            return
        if self._conn is not None:
            conn = self._conn
            await self._run(conn.close)
            self._conn = None
        self._closed = True
        self._pool.shutdown(wait=True)

    # -- on the worker thread ----------------------------------------------------------------

    def _search(self, space: Space, query: F32, k: int) -> list[Neighbour]:
        matrix = self._catch_up(space)
        n = len(matrix.keys)
        if n == 0:
            return []
        scores = matrix.unit[:n] @ unit_rows(query.astype(np.float32).reshape(1, -1))[0]
        # Expired rows are invisible, as the store hides them on read.
        scores[matrix.expires_ms[:n] <= int(time.time() * 1000)] = -np.inf
        k = min(k, n)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [
            Neighbour(matrix.keys[i], matrix.inputs[i], float(scores[i]))
            for i in top
            if np.isfinite(scores[i])
        ]

    def _catch_up(self, space: Space) -> _Matrix:
        matrix = self._spaces.get((space.model, space.revision))
        if matrix is None:
            matrix = self._spaces[(space.model, space.revision)] = _Matrix(space.dim)
        cursor = self._db.execute(
            "SELECT rowid, key, input, vector, dim, expires_at_ms FROM embeddings"
            " WHERE model = ? AND revision = ? AND rowid > ? ORDER BY rowid",
            (space.model, space.revision, matrix.last_rowid),
        )
        while batch := cursor.fetchmany(4096):
            blobs = []
            for _, _, _, blob, dim, _ in batch:
                vectors.check_stored(blob, dim)
                if dim != space.dim:
                    raise vectors.DimensionMismatch(
                        f"{space.model}@{space.revision}: stored dim {dim}, expected {space.dim}"
                    )
                # float16 rows (EMBARK_STORE__VECTOR_DTYPE) read as float32, as the store's.
                blobs.append(vectors.widen(blob, dim))
            units = unit_rows(np.frombuffer(b"".join(blobs), dtype="<f4").reshape(-1, space.dim))
            for (rowid, key, input_, _, _, expires), unit in zip(batch, units, strict=True):
                matrix.put(key, input_, unit, expires)
                matrix.last_rowid = max(matrix.last_rowid, rowid)
        return matrix

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BackendUnavailable("the SQLite similarity index is not open")
        return self._conn

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise BackendUnavailable("the SQLite similarity index is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"SQLite similarity search error: {exc}") from exc


async def open_sqlite_index(path: Path) -> SqliteSimilarityIndex:
    """The index over the store file at ``path`` (open the store first: it creates the file)."""
    return await SqliteSimilarityIndex(path).open()
