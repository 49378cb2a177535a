"""The embedded archive: one SQLite file, no server. The zero-setup default for `embark dev`.

sqlite3 blocks, so every call runs on one dedicated worker thread: the event loop never waits on
disk, and a single connection serialises writes (SQLite allows one writer at a time anyway).
WAL mode lets readers proceed while KFC writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from embark import vectors
from embark.errors import BackendUnavailable
from embark.store.base import FailureRecord, Lookup, StoredVector

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    revision TEXT NOT NULL,
    kind TEXT NOT NULL,
    input TEXT NOT NULL,
    vector BLOB NOT NULL,
    dim INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS embeddings_by_model ON embeddings (model, revision);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    revision TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    failed_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
"""

# SQLite caps bound parameters per statement (32766 in modern builds); stay well below.
_CHUNK = 500


class SqliteConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    # One file under the data directory: easy to inspect, delete or copy.
    path: Path = Path("data/embark.sqlite3")
    # Vectors of one model revision never change, so a long TTL is safe; it exists so rows of
    # retired revisions age out without a migration.
    vector_ttl_s: int = Field(default=90 * 24 * 3600, gt=0)
    # Permanent failures (404, not an image) are retried after this, in case the URL is fixed.
    failure_ttl_s: int = Field(default=3600, gt=0)


def _now_ms() -> int:
    return int(time.time() * 1000)


class SqliteStore:
    """EmbeddingStore on a local SQLite file. TTLs are enforced on read (expired rows are
    invisible) and expired rows are purged opportunistically on write."""

    def __init__(self, path: Path, *, ttl_s: int, failure_ttl_s: int) -> None:
        self._path = path
        self._ttl_ms = ttl_s * 1000
        self._failure_ttl_ms = failure_ttl_s * 1000
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    async def open(self) -> SqliteStore:
        await self._run(self._connect)
        return self

    def _connect(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        self._conn = conn

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise BackendUnavailable("the SQLite store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"SQLite store error: {exc}") from exc

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BackendUnavailable("the SQLite store is not open")
        return self._conn

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Lookup]:
        if not keys:
            return {}
        return await self._run(lambda: self._get_many(keys))

    def _get_many(self, keys: Sequence[str]) -> dict[str, Lookup]:
        now = _now_ms()
        found: dict[str, Lookup] = {}
        for i in range(0, len(keys), _CHUNK):
            chunk = list(keys[i : i + _CHUNK])
            # Only '?' placeholders are interpolated; every value is a bound parameter.
            marks = ",".join("?" * len(chunk))
            failures_sql = (
                "SELECT key, model, revision, reason, message, failed_at_ms FROM failures "  # noqa: S608
                f"WHERE key IN ({marks}) AND expires_at_ms > ?"
            )
            vectors_sql = (
                "SELECT key, model, revision, kind, input, vector, dim, created_at_ms "  # noqa: S608
                f"FROM embeddings WHERE key IN ({marks}) AND expires_at_ms > ?"
            )
            for row in self._db.execute(failures_sql, [*chunk, now]):
                found[row[0]] = FailureRecord(*row)
            # Vectors second: a stored vector wins over a failure record of the same key.
            for row in self._db.execute(vectors_sql, [*chunk, now]):
                vectors.check_stored(row[5], row[6])
                found[row[0]] = _widened(row)
        return found

    async def put_many(self, rows: Sequence[StoredVector]) -> None:
        for row in rows:
            vectors.check_stored(row.vector, row.dim)
        if rows:
            await self._run(lambda: self._put_many(rows))

    def _put_many(self, rows: Sequence[StoredVector]) -> None:
        now = _now_ms()
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.key,
                        r.model,
                        r.revision,
                        r.kind,
                        r.input,
                        r.vector,
                        r.dim,
                        r.created_at_ms,
                        now + self._ttl_ms,
                    )
                    for r in rows
                ],
            )
            self._db.executemany("DELETE FROM failures WHERE key = ?", [(r.key,) for r in rows])
            self._db.execute("DELETE FROM embeddings WHERE expires_at_ms <= ?", (now,))

    async def put_failures(self, rows: Sequence[FailureRecord]) -> None:
        if rows:
            await self._run(lambda: self._put_failures(rows))

    def _put_failures(self, rows: Sequence[FailureRecord]) -> None:
        now = _now_ms()
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.key,
                        r.model,
                        r.revision,
                        r.reason,
                        r.message,
                        r.failed_at_ms,
                        now + self._failure_ttl_ms,
                    )
                    for r in rows
                ],
            )
            self._db.execute("DELETE FROM failures WHERE expires_at_ms <= ?", (now,))

    async def scan(self, model: str, revision: str) -> Sequence[StoredVector]:
        def scan() -> list[StoredVector]:
            cur = self._db.execute(
                "SELECT key, model, revision, kind, input, vector, dim, created_at_ms "
                "FROM embeddings WHERE model = ? AND revision = ? AND expires_at_ms > ? "
                "ORDER BY key",
                (model, revision, _now_ms()),
            )
            return [_widened(row) for row in cur]

        return await self._run(scan)

    async def ping(self) -> None:
        await self._run(lambda: self._db.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        if self._closed:
            return
        if self._conn is not None:
            conn = self._conn
            await self._run(conn.close)
            self._conn = None
        self._closed = True
        self._pool.shutdown(wait=True)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error: a batch is written whole or not at all."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


async def open_sqlite_store(config: SqliteConfig) -> SqliteStore:
    """Open (creating if needed) the store file."""
    store = SqliteStore(config.path, ttl_s=config.vector_ttl_s, failure_ttl_s=config.failure_ttl_s)
    return await store.open()


def _widened(row: Any) -> StoredVector:
    """A vector row as StoredVector, float16 rows widened to float32 (the wire form)."""
    key, model, revision, kind, input_, vector, dim, created_at_ms = row
    return StoredVector(
        key, model, revision, kind, input_, vectors.widen(vector, dim), dim, created_at_ms
    )
