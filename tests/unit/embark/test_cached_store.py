"""CachingStore: the byte bound, eviction order, only stored vectors cached, shared in-flight
reads, and its metrics moving as it is used."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from embark.errors import BackendUnavailable
from embark.metrics import EmbarkMetrics
from embark.store.base import EmbeddingStore, FailureRecord, Lookup, PartialLookup, StoredVector
from embark.store.cached import CachingStore, entry_cost

DIM = 4


def vector(key: str, dim: int = DIM) -> StoredVector:
    return StoredVector(key, "m", "r1", "text", f"input {key}", b"\x01" * (4 * dim), dim, 0)


def failure(key: str) -> FailureRecord:
    return FailureRecord(key, "m", "r1", "http_404", "gone", 0)


class CountingStore:
    """An in-memory archive that records every read; ``gate`` holds reads until set."""

    def __init__(self) -> None:
        self.rows: dict[str, Lookup] = {}
        self.reads: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.down = False

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Lookup]:
        self.reads.append(list(keys))
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise BackendUnavailable("down")
        return {key: self.rows[key] for key in keys if key in self.rows}

    async def put_many(self, rows: Sequence[StoredVector]) -> None:
        self.rows.update({row.key: row for row in rows})

    async def put_failures(self, rows: Sequence[FailureRecord]) -> None:
        self.rows.update({row.key: row for row in rows})

    async def scan(self, model: str, revision: str) -> Sequence[StoredVector]:
        return [row for row in self.rows.values() if isinstance(row, StoredVector)]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def sample(metrics: EmbarkMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


@pytest.fixture
def inner() -> CountingStore:
    return CountingStore()


def cached(inner: CountingStore, max_bytes: int, metrics: EmbarkMetrics) -> CachingStore:
    return CachingStore(inner, max_bytes=max_bytes, metrics=metrics)


def test_is_an_embedding_store(inner: CountingStore) -> None:
    assert isinstance(cached(inner, 10_000, EmbarkMetrics()), EmbeddingStore)


def test_zero_bytes_is_refused(inner: CountingStore) -> None:
    with pytest.raises(ValueError, match="positive"):
        cached(inner, 0, EmbarkMetrics())


async def test_second_read_of_a_vector_is_served_from_memory(inner: CountingStore) -> None:
    inner.rows["a"] = vector("a")
    metrics = EmbarkMetrics()
    store = cached(inner, 10_000, metrics)
    assert await store.get_many(["a", "nope"]) == {"a": inner.rows["a"]}
    assert await store.get_many(["a"]) == {"a": inner.rows["a"]}
    assert inner.reads == [["a", "nope"]]
    assert sample(metrics, "embark_cache_hits_total") == 1
    assert sample(metrics, "embark_cache_misses_total") == 2
    assert sample(metrics, "embark_cache_entries") == 1
    assert sample(metrics, "embark_cache_bytes") == entry_cost(inner.rows["a"])


async def test_misses_and_failures_are_never_cached(inner: CountingStore) -> None:
    """A cached absence or failure would hide the vector KFC writes next."""
    inner.rows["f"] = failure("f")
    store = cached(inner, 10_000, EmbarkMetrics())
    assert await store.get_many(["f", "new"]) == {"f": inner.rows["f"]}
    await inner.put_many([vector("f"), vector("new")])  # KFC writes, behind the cache's back
    found = await store.get_many(["f", "new"])
    assert found == {"f": inner.rows["f"], "new": inner.rows["new"]}
    assert all(isinstance(row, StoredVector) for row in found.values())
    assert len(inner.reads) == 2
    assert "f" in store
    assert "new" in store


async def test_bound_is_in_bytes_and_evicts_least_recently_used(inner: CountingStore) -> None:
    for key in "abcd":
        inner.rows[key] = vector(key)
    cost = entry_cost(vector("a"))
    metrics = EmbarkMetrics()
    store = cached(inner, 3 * cost, metrics)  # room for exactly three
    await store.get_many(["a", "b", "c"])
    await store.get_many(["a"])  # a is now the most recently used; b the least
    await store.get_many(["d"])
    assert [key in store for key in "abcd"] == [True, False, True, True]
    assert store.size_bytes == 3 * cost <= 3 * cost
    assert sample(metrics, "embark_cache_evictions_total") == 1


async def test_big_vectors_take_more_room(inner: CountingStore) -> None:
    inner.rows["small1"] = vector("small1")
    inner.rows["small2"] = vector("small2")
    inner.rows["big"] = vector("big", dim=64)
    budget = entry_cost(inner.rows["big"]) + entry_cost(vector("small1"))
    store = cached(inner, budget, EmbarkMetrics())
    await store.get_many(["small1", "small2"])
    await store.get_many(["big"])  # pushes out one small vector, not just "one entry"
    assert "big" in store
    assert len(store) == 2
    assert store.size_bytes <= budget


async def test_a_vector_larger_than_the_bound_is_not_cached(inner: CountingStore) -> None:
    inner.rows["a"] = vector("a")
    inner.rows["huge"] = vector("huge", dim=1024)
    store = cached(inner, 2 * entry_cost(vector("a")), EmbarkMetrics())
    await store.get_many(["a", "huge"])
    assert "a" in store
    assert "huge" not in store


async def test_concurrent_reads_of_one_key_share_one_archive_read(inner: CountingStore) -> None:
    inner.rows["k"] = vector("k")
    inner.gate = asyncio.Event()
    metrics = EmbarkMetrics()
    store = cached(inner, 10_000, metrics)
    readers = [asyncio.create_task(store.get_many(["k"])) for _ in range(10)]
    await asyncio.sleep(0)
    inner.gate.set()
    results = await asyncio.gather(*readers)
    assert inner.reads == [["k"]]
    assert all(result == {"k": inner.rows["k"]} for result in results)
    assert sample(metrics, "embark_lookups_coalesced_total") == 9


async def test_shared_read_of_a_missing_key_answers_absent_to_everyone(
    inner: CountingStore,
) -> None:
    inner.gate = asyncio.Event()
    store = cached(inner, 10_000, EmbarkMetrics())
    readers = [asyncio.create_task(store.get_many(["x", "y"])) for _ in range(3)]
    await asyncio.sleep(0)
    inner.gate.set()
    assert await asyncio.gather(*readers) == [{}, {}, {}]
    assert inner.reads == [["x", "y"]]
    # Nothing in flight any more: the next miss reads again (absences are not remembered).
    inner.gate = None
    await store.get_many(["x"])
    assert inner.reads == [["x", "y"], ["x"]]


async def test_a_failed_shared_read_fails_every_waiter_then_clears(inner: CountingStore) -> None:
    inner.gate = asyncio.Event()
    inner.down = True
    store = cached(inner, 10_000, EmbarkMetrics())
    readers = [asyncio.create_task(store.get_many(["k"])) for _ in range(3)]
    await asyncio.sleep(0)
    inner.gate.set()
    outcomes = await asyncio.gather(*readers, return_exceptions=True)
    assert all(isinstance(outcome, BackendUnavailable) for outcome in outcomes)
    inner.down, inner.gate = False, None
    inner.rows["k"] = vector("k")
    assert await store.get_many(["k"]) == {"k": inner.rows["k"]}


async def test_a_cancelled_reader_releases_its_waiters(inner: CountingStore) -> None:
    inner.gate = asyncio.Event()
    store = cached(inner, 10_000, EmbarkMetrics())
    owner = asyncio.create_task(store.get_many(["k"]))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(store.get_many(["k"]))
    await asyncio.sleep(0)
    owner.cancel()  # e.g. its lookup deadline passed
    with pytest.raises(BackendUnavailable, match="cancelled"):
        await waiter
    with pytest.raises(asyncio.CancelledError):
        await owner


async def test_a_waiter_timing_out_does_not_cancel_the_shared_read(inner: CountingStore) -> None:
    inner.rows["k"] = vector("k")
    inner.gate = asyncio.Event()
    store = cached(inner, 10_000, EmbarkMetrics())
    owner = asyncio.create_task(store.get_many(["k"]))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.get_many(["k"]), 0.01)
    inner.gate.set()
    assert await owner == {"k": inner.rows["k"]}


async def test_writes_scan_ping_and_close_reach_the_archive(inner: CountingStore) -> None:
    store = cached(inner, 10_000, EmbarkMetrics())
    await store.put_many([vector("a")])
    await store.put_failures([failure("b")])
    assert set(inner.rows) == {"a", "b"}
    assert [row.key for row in await store.scan("m", "r1")] == ["a"]
    await store.ping()
    await store.get_many(["a"])
    await store.close()
    assert len(store) == 0
    assert store.inner is inner


@pytest.mark.parametrize("fault", ["down", "slow"])
async def test_a_failed_cold_read_still_hands_back_the_memory_hits(
    inner: CountingStore, fault: str
) -> None:
    store = CachingStore(inner, max_bytes=1 << 20, metrics=EmbarkMetrics(), cold_timeout_s=0.05)
    inner.rows["hot"] = vector("hot")
    await store.get_many(["hot"])  # now in memory
    if fault == "down":
        inner.down = True
    else:
        inner.gate = asyncio.Event()  # never answers

    with pytest.raises(PartialLookup) as info:
        await store.get_many(["hot", "cold"])

    assert dict(info.value.found) == {"hot": vector("hot")}
    assert info.value.retriable
