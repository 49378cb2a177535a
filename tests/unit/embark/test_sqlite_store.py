"""The SQLite store: the shared store contract, then what only SQLite does (TTL on read,
persistence across reopen, chunked lookups)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from embark.errors import BackendUnavailable
from embark.store import sqlite as sqlite_module
from embark.store.base import StoredVector
from embark.store.sqlite import SqliteConfig, SqliteStore, open_sqlite_store
from tests.contracts.store_contract import StoreContract, make_failure, make_vector


class TestSqliteStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SqliteStore]:
        store = await open_sqlite_store(SqliteConfig(path=tmp_path / "embark.sqlite3"))
        yield store
        await store.close()


class Clock:
    """Stands in for the store's wall clock so TTLs expire without sleeping."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now_ms = 1_800_000_000_000
        monkeypatch.setattr(sqlite_module, "_now_ms", lambda: self.now_ms)

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture
async def short_ttl_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    config = SqliteConfig(path=tmp_path / "ttl.sqlite3", vector_ttl_s=10, failure_ttl_s=1)
    store = await open_sqlite_store(config)
    yield store
    await store.close()


def _revision() -> str:
    return f"rev-{uuid.uuid4().hex[:8]}"


async def test_failure_record_expires_after_its_ttl(
    short_ttl_store: SqliteStore, clock: Clock
) -> None:
    failure = make_failure(make_vector("http://example.com/404.png", revision=_revision()))
    await short_ttl_store.put_failures([failure])

    clock.advance(0.999)
    assert dict(await short_ttl_store.get_many([failure.key])) == {failure.key: failure}
    clock.advance(0.001)
    assert dict(await short_ttl_store.get_many([failure.key])) == {}


async def test_vector_expires_after_its_ttl(short_ttl_store: SqliteStore, clock: Clock) -> None:
    revision = _revision()
    row = make_vector("ages out", revision=revision)
    await short_ttl_store.put_many([row])

    clock.advance(9.9)
    assert dict(await short_ttl_store.get_many([row.key])) == {row.key: row}
    assert list(await short_ttl_store.scan(row.model, revision)) == [row]
    clock.advance(0.1)
    assert dict(await short_ttl_store.get_many([row.key])) == {}
    assert list(await short_ttl_store.scan(row.model, revision)) == []


async def test_rewrite_renews_the_ttl(short_ttl_store: SqliteStore, clock: Clock) -> None:
    row = make_vector("renewed", revision=_revision())
    await short_ttl_store.put_many([row])
    clock.advance(8)
    await short_ttl_store.put_many([row])
    clock.advance(8)

    assert dict(await short_ttl_store.get_many([row.key])) == {row.key: row}


async def test_expired_rows_are_purged_on_write(
    tmp_path: Path, short_ttl_store: SqliteStore, clock: Clock
) -> None:
    old = make_vector("old", revision=_revision())
    old_failure = make_failure(make_vector("old failure", revision=_revision()))
    await short_ttl_store.put_many([old])
    await short_ttl_store.put_failures([old_failure])
    clock.advance(60)
    await short_ttl_store.put_many([make_vector("new", revision=_revision())])
    await short_ttl_store.put_failures([make_failure(make_vector("new f", revision=_revision()))])

    with sqlite3.connect(tmp_path / "ttl.sqlite3") as conn:
        keys = {row[0] for row in conn.execute("SELECT key FROM embeddings")}
        failed = {row[0] for row in conn.execute("SELECT key FROM failures")}
    assert old.key not in keys
    assert old_failure.key not in failed
    assert len(keys) == len(failed) == 1


async def test_rows_persist_across_reopen(tmp_path: Path) -> None:
    config = SqliteConfig(path=tmp_path / "nested" / "dir" / "embark.sqlite3")
    revision = _revision()
    row = make_vector("persisted", revision=revision, dim=384)
    failure = make_failure(make_vector("http://example.com/gone.png", revision=revision))
    store = await open_sqlite_store(config)
    await store.put_many([row])
    await store.put_failures([failure])
    await store.close()

    reopened = await open_sqlite_store(config)
    try:
        found = await reopened.get_many([row.key, failure.key])
        assert dict(found) == {row.key: row, failure.key: failure}
        assert list(await reopened.scan(row.model, revision)) == [row]
    finally:
        await reopened.close()


async def test_lookups_larger_than_one_statement_chunk(tmp_path: Path) -> None:
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "big.sqlite3"))
    try:
        revision = _revision()
        rows = [make_vector(f"row {i}", revision=revision, seed=i) for i in range(1_203)]
        await store.put_many(rows[::3])

        found = await store.get_many([row.key for row in rows])

        assert dict(found) == {row.key: row for row in rows[::3]}
    finally:
        await store.close()


async def test_a_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "closed.sqlite3"))
    await store.close()

    with pytest.raises(BackendUnavailable, match="closed"):
        await store.get_many(["k"])
    with pytest.raises(BackendUnavailable):
        await store.ping()
    with pytest.raises(BackendUnavailable):
        await store.put_many([make_vector("late", revision=_revision())])


async def test_an_unopened_store_is_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "never.sqlite3", ttl_s=10, failure_ttl_s=10)
    try:
        with pytest.raises(BackendUnavailable, match="not open"):
            await store.ping()
    finally:
        await store.close()


async def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite3"
    path.write_bytes(b"this is not a database" * 100)

    with pytest.raises(BackendUnavailable, match="SQLite store error"):
        await open_sqlite_store(SqliteConfig(path=path))


async def test_a_failed_batch_writes_nothing(tmp_path: Path) -> None:
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "tx.sqlite3"))
    try:
        revision = _revision()
        good = make_vector("good", revision=revision)
        # Passes the dimension check but violates NOT NULL inside the transaction.
        bad = StoredVector(
            key="bad",
            model="m",
            revision=revision,
            kind="text",
            input=None,  # type: ignore[arg-type]
            vector=good.vector,
            dim=good.dim,
            created_at_ms=1,
        )
        with pytest.raises(BackendUnavailable):
            await store.put_many([good, bad])

        assert dict(await store.get_many([good.key])) == {}
        await store.put_many([good])  # the connection is usable after the rollback
        assert dict(await store.get_many([good.key])) == {good.key: good}
    finally:
        await store.close()
