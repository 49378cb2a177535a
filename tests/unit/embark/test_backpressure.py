"""Backpressure and deadlines on EmbArk's request path: calls beyond ``max_in_flight`` are refused
with RESOURCE_EXHAUSTED at once, calls whose caller already gave up are refused before any store
read, the caller's deadline caps the store read so a degraded answer still arrives in time, and
every refusal is counted by reason in embark_rejected."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping, Sequence

import grpc
import pytest

from embark import errors
from embark.client import AsyncEmbarkClient
from embark.metrics import EmbarkMetrics
from embark.queue.local import LocalBroker, LocalJobQueue
from embark.server.app import Running, start
from embark.server.servicer import EmbarkServicer
from embark.service import EmbarkService
from embark.store.base import FailureRecord, Lookup, StoredVector
from embark_api.v1 import embark_pb2, embark_pb2_grpc, inputs_pb2
from tests.unit.embark.test_service import CATALOG, LIMITS, TEXT

Status = embark_pb2.Status


class SlowStore:
    """Lookups that take ``delay_s`` (and count how many were started)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.lookups = 0

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Lookup]:
        self.lookups += 1
        await asyncio.sleep(self.delay_s)
        return {}

    async def put_many(self, rows: Sequence[StoredVector]) -> None:
        return None

    async def put_failures(self, rows: Sequence[FailureRecord]) -> None:
        return None

    async def scan(self, model: str, revision: str) -> Sequence[StoredVector]:
        return []

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def make_service(store: SlowStore, metrics: EmbarkMetrics, **limits: float | int) -> EmbarkService:
    return EmbarkService(
        catalog=CATALOG,
        store=store,  # type: ignore[arg-type]
        queue=LocalJobQueue(LocalBroker(100)),
        encoding=None,
        limits=dataclasses.replace(LIMITS, **limits),  # type: ignore[arg-type]
        metrics=metrics,
    )


def rejected(metrics: EmbarkMetrics, reason: str) -> float:
    return metrics.registry.get_sample_value("embark_rejected_total", {"reason": reason}) or 0.0


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    server = await start(host="127.0.0.1", port=0, max_message_bytes=1 << 20)
    yield server
    await server.server.stop(None)


async def test_calls_beyond_max_in_flight_are_resource_exhausted(running: Running) -> None:
    metrics = EmbarkMetrics()
    store = SlowStore(delay_s=0.5)
    running.servicer.attach(make_service(store, metrics, max_in_flight=2, lookup_timeout_s=5.0))

    async with AsyncEmbarkClient(f"127.0.0.1:{running.port}") as client:
        results = await asyncio.gather(
            *(client.get(TEXT.name, text=f"t{i}") for i in range(5)), return_exceptions=True
        )

    refused = [r for r in results if isinstance(r, errors.Overloaded)]
    answered = [r for r in results if not isinstance(r, BaseException)]
    assert len(answered) == 2
    assert len(refused) == 3
    assert all("limit 2" in r.message for r in refused)
    assert store.lookups == 2  # refused calls never reached the store
    assert rejected(metrics, "resource_exhausted") == 3


async def test_in_flight_slots_are_released_after_each_call(running: Running) -> None:
    metrics = EmbarkMetrics()
    running.servicer.attach(make_service(SlowStore(0.0), metrics, max_in_flight=1))
    async with AsyncEmbarkClient(f"127.0.0.1:{running.port}") as client:
        for i in range(5):
            assert (await client.get(TEXT.name, text=f"t{i}")).status == "PENDING"
        with pytest.raises(errors.InvalidInput):
            await client.get(TEXT.name, text="   ")
        assert (await client.get(TEXT.name, text="after")).status == "PENDING"
    assert rejected(metrics, "resource_exhausted") == 0
    assert rejected(metrics, "invalid_argument") == 1


async def test_the_callers_deadline_caps_the_store_read(running: Running) -> None:
    """The archive hangs and the lookup timeout is long; the caller's 0.4 s deadline still
    gets OOV + UNAVAILABLE (not DEADLINE_EXCEEDED), because the read gets half of it."""
    metrics = EmbarkMetrics()
    running.servicer.attach(make_service(SlowStore(30.0), metrics, lookup_timeout_s=10.0))
    async with AsyncEmbarkClient(f"127.0.0.1:{running.port}", timeout_s=0.4) as client:
        started = time.monotonic()
        result = await client.get(TEXT.name, text="x")
        elapsed = time.monotonic() - started
    assert result.status == "UNAVAILABLE"
    assert result.vector == TEXT.oov
    assert elapsed < 0.4
    timeouts = metrics.registry.get_sample_value("embark_store_errors_total", {"reason": "timeout"})
    assert timeouts == 1


class FakeContext:
    def __init__(self, remaining: float | None, cancelled: bool = False) -> None:
        self._remaining, self._cancelled = remaining, cancelled

    def time_remaining(self) -> float | None:
        return self._remaining

    def cancelled(self) -> bool:
        return self._cancelled

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AssertionError(f"abort({code}, {details})")


@pytest.mark.parametrize(
    "context", [FakeContext(remaining=0.0), FakeContext(remaining=-1.0), FakeContext(5.0, True)]
)
async def test_calls_whose_caller_gave_up_are_not_worked_on(context: FakeContext) -> None:
    metrics = EmbarkMetrics()
    store = SlowStore(0.0)
    servicer = EmbarkServicer(make_service(store, metrics))
    request = embark_pb2.GetEmbeddingRequest(model=TEXT.name, input=inputs_pb2.Input(text="x"))

    with pytest.raises(errors.DeadlineExceeded):
        await servicer.GetEmbedding(request, context)  # type: ignore[arg-type]

    assert store.lookups == 0
    assert rejected(metrics, "deadline_exceeded") == 1


async def test_deadline_exceeded_maps_to_its_status(running: Running) -> None:
    class GaveUp:
        def admit(self, time_remaining_s: float | None) -> object:
            raise errors.DeadlineExceeded("the caller's deadline passed")

    running.servicer.attach(GaveUp())  # type: ignore[arg-type]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = embark_pb2_grpc.EmbArkStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetEmbedding(
                embark_pb2.GetEmbeddingRequest(model=TEXT.name, input=inputs_pb2.Input(text="x"))
            )
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_malformed_messages_are_invalid_argument_not_unknown(running: Running) -> None:
    running.servicer.attach(make_service(SlowStore(0.0), EmbarkMetrics()))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        raw = channel.unary_unary("/embark.v1.EmbArk/GetEmbedding")
        for body in (b"\x0a\x02\xff\xfe", b"\xff\xff\xff", b"\x0a\x05ab"):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await raw(body)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "DecodeError" not in (info.value.details() or "")
