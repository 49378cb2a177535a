"""KFC's metrics move as the loop works: polled and encoded batch sizes, queue lag (from the jobs'
own enqueue time) and enqueue-to-stored freshness."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from embark import vectors
from embark.catalog import Catalog, ModelSpec
from embark.keys import derive_key
from embark.queue.local import LocalBroker, LocalJobConsumer, LocalJobQueue
from embark.store.sqlite import SqliteConfig, open_sqlite_store
from embark_api.v1 import inputs_pb2, jobs_pb2
from kfc.metrics import KfcMetrics
from kfc.worker import Worker
from tests.fakes.encoding import FakeEncoding
from tests.unit.kfc.test_worker import CONFIG

TEXT = ModelSpec(
    name="minilm", kind="text", dim=4, revision="rev-t1", oov=vectors.to_bytes([0.5] * 4, 4)
)


def job(text: str, enqueued_at_ms: int) -> jobs_pb2.EmbedJob:
    return jobs_pb2.EmbedJob(
        key=derive_key(TEXT.name, TEXT.revision, "text", text).digest,
        model=TEXT.name,
        revision=TEXT.revision,
        input=inputs_pb2.Input(text=text),
        enqueued_at_ms=enqueued_at_ms,
    )


async def consume_all(
    tmp_path: Path, jobs: list[jobs_pb2.EmbedJob], delay_s: float = 0.0
) -> KfcMetrics:
    """Run a worker over ``jobs`` (Retina answering after ``delay_s``) until it committed all."""
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "k.sqlite3"))
    broker = LocalBroker(1_000)
    metrics = KfcMetrics()
    worker = Worker(
        consumer=LocalJobConsumer(broker),
        store=store,
        encoding=FakeEncoding(dim=4, delay_s=delay_s),
        catalog=Catalog({TEXT.name: TEXT}),
        config=CONFIG,
        metrics=metrics,
    )
    queue = LocalJobQueue(broker)
    for one in jobs:
        queue.enqueue(one)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        deadline = time.monotonic() + 5
        while queue.buffered:  # until the worker committed every job
            assert time.monotonic() < deadline, "jobs not consumed in time"
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        await task
        await store.close()
    return metrics


async def test_batch_sizes_lag_and_freshness_are_observed(tmp_path: Path) -> None:
    an_hour_ago = int(time.time() * 1000) - 3_600_000
    metrics = await consume_all(tmp_path, [job(f"item {i}", an_hour_ago) for i in range(5)])

    def sample(name: str) -> float:
        value = metrics.registry.get_sample_value(name)
        assert value is not None, name
        return value

    assert sample("kfc_batch_size_count") == 1
    assert sample("kfc_batch_size_sum") == 5
    assert sample("kfc_encode_batch_size_count") == 3  # 2 + 2 + 1
    assert sample("kfc_encode_batch_size_sum") == 5
    assert sample("kfc_queue_lag_seconds_count") == 1
    assert sample("kfc_queue_lag_seconds_sum") >= 3_600
    assert sample("kfc_enqueue_to_stored_seconds_count") == 5
    assert sample("kfc_enqueue_to_stored_seconds_sum") >= 5 * 3_600


async def test_freshness_ends_when_the_vector_is_stored(tmp_path: Path) -> None:
    """Enqueue -> stored includes the Retina call: it is observed after the write, not when
    the batch started (it once equalled the queue lag)."""
    now_ms = int(time.time() * 1000)
    metrics = await consume_all(tmp_path, [job("fresh", now_ms)], delay_s=0.3)
    stored_s = metrics.registry.get_sample_value("kfc_enqueue_to_stored_seconds_sum")
    lag_s = metrics.registry.get_sample_value("kfc_queue_lag_seconds_sum")
    assert stored_s is not None
    assert lag_s is not None
    assert stored_s >= 0.3
    assert stored_s >= lag_s + 0.3
    encode_s = metrics.registry.get_sample_value("kfc_step_seconds_sum", {"step": "encode"})
    write_n = metrics.registry.get_sample_value("kfc_step_seconds_count", {"step": "store_write"})
    assert encode_s is not None
    assert encode_s >= 0.3
    assert write_n == 1
