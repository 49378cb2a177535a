"""The SQLite similarity index: the shared contract, then what only it does (expired rows
hidden, rows of another process found, nothing written besides the store's own row)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from embark import vectors
from embark.similar.sqlite import SqliteSimilarityIndex, open_sqlite_index
from embark.store import sqlite as sqlite_module
from embark.store.half import HalfPrecisionWrites
from embark.store.sqlite import SqliteConfig, SqliteStore, open_sqlite_store
from tests.contracts.similarity_contract import (
    SPACE_A,
    Pair,
    SimilarityContract,
    clustered,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await open_sqlite_store(SqliteConfig(path=tmp_path / "embark.sqlite3"))
    yield opened
    await opened.close()


@pytest.fixture
async def index(store: SqliteStore, tmp_path: Path) -> AsyncIterator[SqliteSimilarityIndex]:
    opened = await open_sqlite_index(tmp_path / "embark.sqlite3")
    yield opened
    await opened.close()


class TestSqliteSimilarity(SimilarityContract):
    @pytest.fixture
    def pair(self, store: SqliteStore, index: SqliteSimilarityIndex) -> Pair:
        # The plain store: the index reads its table, no wrapper needed.
        return store, index


async def test_expired_rows_are_not_neighbours(
    store: SqliteStore, index: SqliteSimilarityIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = clustered(SPACE_A, clusters=1, size=3)
    # Written "two TTLs ago": already expired by now.
    past_ms = int(time.time() * 1000) - 2 * 90 * 24 * 3600 * 1000
    monkeypatch.setattr(sqlite_module, "_now_ms", lambda: past_ms)
    await store.put_many(rows[:1])
    monkeypatch.undo()
    await store.put_many(rows[1:])

    found = await index.search(SPACE_A, vectors.from_bytes(rows[0].vector, 16), 10)

    assert {n.key for n in found} == {r.key for r in rows[1:]}


async def test_rows_written_by_another_connection_are_found(
    store: SqliteStore, index: SqliteSimilarityIndex, tmp_path: Path
) -> None:
    rows = clustered(SPACE_A, clusters=1, size=2)
    await store.put_many(rows[:1])
    query = vectors.from_bytes(rows[0].vector, 16)
    assert len(await index.search(SPACE_A, query, 10)) == 1
    other = await open_sqlite_store(SqliteConfig(path=tmp_path / "embark.sqlite3"))
    try:
        await other.put_many(rows[1:])
    finally:
        await other.close()

    assert len(await index.search(SPACE_A, query, 10)) == 2


async def test_the_index_writes_nothing(
    store: SqliteStore, index: SqliteSimilarityIndex, tmp_path: Path
) -> None:
    rows = clustered(SPACE_A, clusters=1, size=4)
    await store.put_many(rows)
    await index.add(rows)
    await index.search(SPACE_A, np.ones(16, dtype=np.float32), 3)

    with sqlite3.connect(tmp_path / "embark.sqlite3") as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        (count,) = conn.execute("SELECT count(*) FROM embeddings").fetchone()
    assert count == 4
    assert not any(name.startswith("vec") for name in tables)


async def test_half_precision_rows_are_searched_as_their_float32_values(
    store: SqliteStore, index: SqliteSimilarityIndex
) -> None:
    # EMBARK_STORE__VECTOR_DTYPE=float16 writes 2 bytes a value into the very table the index
    # reads: it must widen them, as every store reader does, not refuse or misread them.
    rows = clustered(SPACE_A, clusters=2, size=4)
    await HalfPrecisionWrites(store).put_many(rows)
    query = vectors.from_bytes(rows[0].vector, 16)

    found = await index.search(SPACE_A, query, 10)

    stored = {
        r.key: vectors.from_bytes(vectors.widen(vectors.narrow(r.vector), 16), 16) for r in rows
    }
    unit = query / np.linalg.norm(query)
    expected = {k: float(v @ unit / np.linalg.norm(v)) for k, v in stored.items()}
    assert [n.key for n in found] == sorted(expected, key=lambda k: -expected[k])
    for n in found:
        assert n.score == pytest.approx(expected[n.key], abs=1e-5)
