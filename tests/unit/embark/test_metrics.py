"""EmbArk's Prometheus metrics move as gRPC requests are made: scraped over HTTP from the same
exporter `embark serve` starts, around real calls through the server, the LRU and SQLite."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from embark import vectors
from embark.catalog import Catalog, ModelSpec
from embark.client import AsyncEmbarkClient, make_input
from embark.keys import canonical_text, derive_key
from embark.metrics import EmbarkMetrics
from embark.queue.local import LocalBroker, LocalJobQueue
from embark.server.app import Running, start
from embark.service import EmbarkService, Limits
from embark.store.base import StoredVector
from embark.store.cached import CachingStore
from embark.store.sqlite import SqliteConfig, SqliteStore, open_sqlite_store

TEXT = ModelSpec(
    name="minilm", kind="text", dim=4, revision="rev-t1", oov=vectors.to_bytes([0.5] * 4, 4)
)
LIMITS = Limits(
    max_batch=16,
    max_text_chars=64,
    max_url_chars=80,
    lookup_timeout_s=1.0,
    pending_window_s=60.0,
    pending_window_size=1_000,
)


@dataclass
class Served:
    running: Running
    client: AsyncEmbarkClient
    store: SqliteStore
    scrape_url: str

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(self.scrape_url, timeout=5) as reply:
            text = reply.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def exporter() -> Iterator[tuple[EmbarkMetrics, str]]:
    metrics = EmbarkMetrics()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    yield metrics, f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
async def served(tmp_path: Path, exporter: tuple[EmbarkMetrics, str]) -> AsyncIterator[Served]:
    metrics, url = exporter
    sqlite = await open_sqlite_store(SqliteConfig(path=tmp_path / "m.sqlite3"))
    queue = LocalJobQueue(LocalBroker(1_000))
    metrics.watch_buffered(lambda: queue.buffered)
    running = await start(host="127.0.0.1", port=0, max_message_bytes=1 << 20)
    running.servicer.attach(
        EmbarkService(
            catalog=Catalog({TEXT.name: TEXT}),
            store=CachingStore(sqlite, max_bytes=1 << 20, metrics=metrics),
            queue=queue,
            encoding=None,
            limits=LIMITS,
            metrics=metrics,
        )
    )
    await running.set_serving(True)
    client = AsyncEmbarkClient(f"127.0.0.1:{running.port}")
    try:
        yield Served(running, client, sqlite, url)
    finally:
        await client.close()
        await running.server.stop(None)
        await sqlite.close()


def stored(text: str) -> StoredVector:
    canonical = canonical_text(text)
    key = derive_key(TEXT.name, TEXT.revision, "text", canonical).digest
    return StoredVector(key, TEXT.name, TEXT.revision, "text", canonical, b"\0" * 16, 4, 1)


async def test_hits_misses_ratio_cache_and_latency_move_with_requests(served: Served) -> None:
    await served.store.put_many([stored("red shoes")])
    before = await asyncio.to_thread(served.scrape)
    assert value(before, "embark_answers_total", model="minilm", status="HIT") == 0

    assert (await served.client.get("minilm", text="red shoes")).status == "HIT"  # archive
    assert (await served.client.get("minilm", text="red shoes")).status == "HIT"  # LRU
    assert (await served.client.get("minilm", text="blue shoes")).status == "PENDING"
    after = await asyncio.to_thread(served.scrape)

    assert value(after, "embark_answers_total", model="minilm", status="HIT") == 2
    assert value(after, "embark_answers_total", model="minilm", status="PENDING") == 1
    assert value(after, "embark_hit_ratio", model="minilm") == pytest.approx(2 / 3)
    assert value(after, "embark_cache_hits_total") == 1
    assert value(after, "embark_cache_misses_total") == 2
    assert value(after, "embark_cache_entries") == 1
    assert value(after, "embark_cache_bytes") > 0
    assert value(after, "embark_lookup_seconds_count") == 3
    assert value(after, "embark_misses_enqueued_total", model="minilm") == 1
    assert value(after, "embark_misses_buffered") == 1  # nobody consumes in this test


async def test_batch_answers_are_counted_per_status(served: Served) -> None:
    await served.store.put_many([stored("a"), stored("b")])
    answers = await served.client.get_many(
        "minilm", [make_input(text=t) for t in ("a", "b", "c", "a")]
    )
    assert [a.status for a in answers] == ["HIT", "HIT", "PENDING", "HIT"]
    samples = await asyncio.to_thread(served.scrape)
    assert value(samples, "embark_answers_total", model="minilm", status="HIT") == 3
    assert value(samples, "embark_answers_total", model="minilm", status="PENDING") == 1
    assert value(samples, "embark_hit_ratio", model="minilm") == pytest.approx(0.75)
