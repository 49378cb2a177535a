"""The gRPC server over a real grpc.aio server on 127.0.0.1 with the fake encoder: the Embed
round trip, error mapping (never an exception's text to the client), health and reflection."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from embark_api.v1 import inputs_pb2, retina_pb2, retina_pb2_grpc
from embark_core.interceptors import INTERNAL_MESSAGE
from retina.server import SERVICE_NAME, start_server, start_test_server
from retina.service import RetinaService
from retina.settings import RetinaSettings
from tests.fakes.encoder import FakeEncoder, fake_vector

MODEL = "fake-text"


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> RetinaSettings:
    for name in list(os.environ):
        if name.startswith("RETINA_"):
            monkeypatch.delenv(name)
    return RetinaSettings(max_batch_items=4)


@pytest.fixture
def encoder() -> FakeEncoder:
    return FakeEncoder(name=MODEL, dim=8, revision="r-1", fail_on={"bad"})


@pytest.fixture
async def channel(
    settings: RetinaSettings, encoder: FakeEncoder
) -> AsyncIterator[grpc.aio.Channel]:
    service = RetinaService({MODEL: encoder}, settings)
    server, port = await start_test_server(service, settings)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)
    await service.close()


def embed_request(*texts: str, model: str = MODEL) -> retina_pb2.EmbedRequest:
    return retina_pb2.EmbedRequest(model=model, inputs=[inputs_pb2.Input(text=t) for t in texts])


async def test_embed_round_trip(channel: grpc.aio.Channel) -> None:
    stub = retina_pb2_grpc.RetinaStub(channel)
    resp = await stub.Embed(embed_request("hello", "bad", "world"), timeout=10)
    assert (resp.model, resp.revision, resp.dim) == (MODEL, "r-1", 8)
    np.testing.assert_array_equal(
        np.frombuffer(resp.results[0].vector, "<f4"), fake_vector("hello", 8)
    )
    assert resp.results[1].error.reason == "fake_failure"
    np.testing.assert_array_equal(
        np.frombuffer(resp.results[2].vector, "<f4"), fake_vector("world", 8)
    )


@pytest.mark.parametrize(
    ("request_", "code", "detail"),
    [
        (embed_request("a", model="nope"), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        (embed_request(*"abcde"), grpc.StatusCode.INVALID_ARGUMENT, "limit is 4"),
        (
            retina_pb2.EmbedRequest(
                model=MODEL, revision="r-0", inputs=[inputs_pb2.Input(text="a")]
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "revision",
        ),
    ],
)
async def test_retina_errors_keep_their_code_and_message(
    channel: grpc.aio.Channel,
    request_: retina_pb2.EmbedRequest,
    code: grpc.StatusCode,
    detail: str,
) -> None:
    stub = retina_pb2_grpc.RetinaStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Embed(request_, timeout=10)
    assert info.value.code() == code
    assert detail in (info.value.details() or "")


async def test_unexpected_exception_is_a_generic_internal(
    channel: grpc.aio.Channel, encoder: FakeEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_infer(batch: Any) -> Any:
        raise RuntimeError("secret: /srv/models/x.onnx is corrupt")

    encoder.infer = broken_infer  # type: ignore[method-assign]
    stub = retina_pb2_grpc.RetinaStub(channel)
    with (
        caplog.at_level(logging.ERROR, logger="embark_core.interceptors"),
        pytest.raises(grpc.aio.AioRpcError) as info,
    ):
        # Every item of a batch fails alone too: the model is broken, the call fails.
        await stub.Embed(embed_request("hello", "world"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == INTERNAL_MESSAGE
    # The operator gets the traceback; the client gets nothing of it.
    assert any("secret" in (r.exc_text or "") for r in caplog.records)


async def test_health_is_serving_and_reflection_lists_services(
    channel: grpc.aio.Channel,
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING

    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = refl.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = set()
    async for resp in call:
        names |= {s.name for s in resp.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


async def test_not_serving_until_models_are_loaded(
    settings: RetinaSettings, encoder: FakeEncoder
) -> None:
    running = await start_server(settings, address="127.0.0.1:0")
    service = RetinaService({MODEL: encoder}, settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            check = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            resp = await health.Check(check, timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = retina_pb2_grpc.RetinaStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Embed(embed_request("a"), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

            await running.mark_serving(service)
            resp = await health.Check(check, timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            assert len((await stub.Embed(embed_request("a"), timeout=10)).results) == 1

            await running.stop(grace=1)
    finally:
        await running.server.stop(None)
        await service.close()
