"""Per-RPC latency histograms and status counters (``embark_request_seconds`` and
``embark_responses`` with ``api="grpc"``) from the real grpc.aio server: an OK call, a refused
one, a malformed message and an unauthenticated call are each counted by method and code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from embark import vectors
from embark.catalog import Catalog, ModelSpec
from embark.client import AsyncEmbarkClient
from embark.errors import EmbarkError, InvalidInput
from embark.metrics import EmbarkMetrics
from embark.queue.local import LocalBroker, LocalJobQueue
from embark.server.app import Running, start
from embark.service import EmbarkService, Limits
from embark.store.sqlite import SqliteConfig, open_sqlite_store

TEXT = ModelSpec(
    name="minilm", kind="text", dim=4, revision="rev-t1", oov=vectors.to_bytes([0.5] * 4, 4)
)
METHOD = "/embark.v1.EmbArk/GetEmbedding"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Running, EmbarkMetrics]]:
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "e.sqlite3"))
    metrics = EmbarkMetrics()
    service = EmbarkService(
        catalog=Catalog({TEXT.name: TEXT}),
        store=store,
        queue=LocalJobQueue(LocalBroker(10)),
        encoding=None,
        limits=Limits(8, 100, 100, 0.5, 60.0, 100),
        metrics=metrics,
    )
    running = await start(host="127.0.0.1", port=0, max_message_bytes=1 << 20, metrics=metrics)
    running.servicer.attach(service)
    yield running, metrics
    await running.server.stop(None)
    await store.close()


def count(metrics: EmbarkMetrics, code: str) -> float:
    value = metrics.registry.get_sample_value(
        "embark_responses_total", {"api": "grpc", "route": METHOD, "code": code}
    )
    return value or 0.0


async def test_calls_are_timed_and_counted_by_code(
    served: tuple[Running, EmbarkMetrics],
) -> None:
    running, metrics = served
    target = f"127.0.0.1:{running.port}"
    async with AsyncEmbarkClient(target) as client:
        await client.get(TEXT.name, text="hello")
        with pytest.raises(InvalidInput):
            await client.get(TEXT.name, text="   ")
    async with grpc.aio.insecure_channel(target) as channel:
        raw = channel.unary_unary(METHOD)
        with pytest.raises(grpc.aio.AioRpcError):
            await raw(b"\xff\xff\xff", timeout=5)
    assert count(metrics, "OK") == 1
    assert count(metrics, "INVALID_ARGUMENT") == 2
    latency = metrics.registry.get_sample_value(
        "embark_request_seconds_count", {"api": "grpc", "route": METHOD}
    )
    assert latency == 3


async def test_unauthenticated_calls_are_counted(tmp_path: Path) -> None:
    metrics = EmbarkMetrics()
    running = await start(
        host="127.0.0.1", port=0, max_message_bytes=1 << 20, metrics=metrics, token="s3cret"
    )
    try:
        async with AsyncEmbarkClient(f"127.0.0.1:{running.port}", token="wrong") as client:
            with pytest.raises(EmbarkError) as denied:
                await client.get(TEXT.name, text="hello")
    finally:
        await running.server.stop(None)
    assert denied.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert count(metrics, "UNAUTHENTICATED") == 1
