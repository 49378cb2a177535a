"""The gRPC front over loopback: the real grpc.aio server from ``embark.server.app.start``, the
SDK clients and raw stubs. Status codes, no leaked exception text, health, token, reflection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from embark import errors, vectors
from embark.catalog import Catalog, ModelSpec
from embark.client import AsyncEmbarkClient, EmbarkClient
from embark.keys import canonical_text, derive_key
from embark.metrics import EmbarkMetrics
from embark.queue.local import LocalBroker, LocalJobQueue
from embark.server.app import SERVICE_NAME, Running, start
from embark.service import EmbarkService, Limits
from embark.store.base import StoredVector
from embark.store.sqlite import SqliteConfig, SqliteStore, open_sqlite_store
from embark_api.v1 import embark_pb2, embark_pb2_grpc, inputs_pb2
from tests.fakes.encoding import FakeEncoding

TOKEN = "s3cret-token"
TEXT = ModelSpec(
    name="minilm", kind="text", dim=4, revision="rev-t1", oov=vectors.to_bytes([0.25] * 4, 4)
)
LIMITS = Limits(
    max_batch=16,
    max_text_chars=100,
    max_url_chars=100,
    lookup_timeout_s=0.5,
    pending_window_s=60.0,
    pending_window_size=100,
)

StartServer = Callable[..., Awaitable[Running]]


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "embark.sqlite3"))
    yield store
    await store.close()


@pytest.fixture
def broker() -> LocalBroker:
    return LocalBroker(max_buffered=100)


@pytest.fixture
def service(sqlite: SqliteStore, broker: LocalBroker) -> EmbarkService:
    return EmbarkService(
        catalog=Catalog({TEXT.name: TEXT}),
        store=sqlite,
        queue=LocalJobQueue(broker),
        encoding=FakeEncoding(dim=TEXT.dim),
        limits=LIMITS,
        metrics=EmbarkMetrics(),
    )


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    started: list[Running] = []

    async def start_one(**kwargs: Any) -> Running:
        running = await start(host="127.0.0.1", port=0, max_message_bytes=1 << 20, **kwargs)
        started.append(running)
        return running

    yield start_one
    for running in started:
        await running.server.stop(None)


@pytest.fixture
async def server(start_server: StartServer, service: EmbarkService) -> Running:
    running = await start_server()
    running.servicer.attach(service)
    await running.set_serving(True)
    return running


@pytest.fixture
async def channel_to() -> AsyncIterator[Callable[[Running], grpc.aio.Channel]]:
    channels: list[grpc.aio.Channel] = []

    def open_channel(running: Running) -> grpc.aio.Channel:
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{running.port}"))
        return channels[-1]

    yield open_channel
    for channel in channels:
        await channel.close(grace=None)


@pytest.fixture
async def client(server: Running) -> AsyncIterator[AsyncEmbarkClient]:
    async with AsyncEmbarkClient(f"127.0.0.1:{server.port}", timeout_s=5) as client:
        yield client


def stored(text: str) -> StoredVector:
    canonical = canonical_text(text)
    return StoredVector(
        key=derive_key(TEXT.name, TEXT.revision, "text", canonical).digest,
        model=TEXT.name,
        revision=TEXT.revision,
        kind="text",
        input=canonical,
        vector=vectors.to_bytes([1.0, 2.0, 3.0, 4.0], TEXT.dim),
        dim=TEXT.dim,
        created_at_ms=1,
    )


def get_request(text: str, model: str = TEXT.name) -> embark_pb2.GetEmbeddingRequest:
    return embark_pb2.GetEmbeddingRequest(model=model, input=inputs_pb2.Input(text=text))


async def call_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


# --- the EmbArk service ---


async def test_pending_then_hit_once_stored(
    client: AsyncEmbarkClient, sqlite: SqliteStore, broker: LocalBroker
) -> None:
    first = await client.get(TEXT.name, text="  Red shoes ")

    assert (first.status, first.hit, first.vector) == ("PENDING", False, TEXT.oov)
    assert (first.model, first.revision, first.dim) == (TEXT.name, TEXT.revision, TEXT.dim)
    assert list(first.array()) == [0.25] * 4
    assert [d.job.key for d in broker.read(0, 10)] == [first.key]

    row = stored("Red shoes")
    assert first.key == row.key
    await sqlite.put_many([row])
    second = await client.get(TEXT.name, text="Red shoes")

    assert (second.status, second.hit, second.vector) == ("HIT", True, row.vector)
    assert list(second.array()) == [1.0, 2.0, 3.0, 4.0]


async def test_batch_answers_in_order(client: AsyncEmbarkClient, sqlite: SqliteStore) -> None:
    await sqlite.put_many([stored("known")])

    results = await client.get_many(
        TEXT.name, [inputs_pb2.Input(text=t) for t in ("new", "known", "new")]
    )

    assert [r.status for r in results] == ["PENDING", "HIT", "PENDING"]


async def test_read_through_over_grpc(client: AsyncEmbarkClient) -> None:
    result = await client.get(TEXT.name, text="fresh", wait_ms=2_000)
    assert result.status == "HIT"


async def test_unknown_model_is_not_found(
    server: Running, client: AsyncEmbarkClient, channel_to: Callable[[Running], grpc.aio.Channel]
) -> None:
    with pytest.raises(errors.UnknownModel, match="unknown model 'bert'; known models: minilm"):
        await client.get("bert", text="x")

    stub = embark_pb2_grpc.EmbArkStub(channel_to(server))
    error = await call_error(stub.GetEmbedding(get_request("x", model="bert")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_empty_text_is_invalid_argument(
    server: Running, client: AsyncEmbarkClient, channel_to: Callable[[Running], grpc.aio.Channel]
) -> None:
    with pytest.raises(errors.InvalidInput, match="empty text"):
        await client.get(TEXT.name, text="")

    stub = embark_pb2_grpc.EmbArkStub(channel_to(server))
    error = await call_error(stub.GetEmbedding(get_request("   ")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "input 0: empty text"
    error = await call_error(
        stub.BatchGetEmbeddings(embark_pb2.BatchGetEmbeddingsRequest(model=TEXT.name))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


class ExplodingService:
    def admit(self, time_remaining_s: float | None) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def get_many(self, *args: object, **kwargs: object) -> list[embark_pb2.Embedding]:
        raise RuntimeError("secret: password=hunter2 at /srv/embark/service.py line 12")


async def test_unexpected_errors_are_internal_without_details(
    start_server: StartServer,
    channel_to: Callable[[Running], grpc.aio.Channel],
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = await start_server()
    running.servicer.attach(cast(EmbarkService, ExplodingService()))
    stub = embark_pb2_grpc.EmbArkStub(channel_to(running))

    error = await call_error(stub.GetEmbedding(get_request("x")))

    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"
    assert "hunter2" not in str(error.debug_error_string())
    assert "hunter2" not in str(error.trailing_metadata())
    assert "hunter2" in caplog.text  # logged for operators, with its traceback
    async with AsyncEmbarkClient(f"127.0.0.1:{running.port}") as client:
        with pytest.raises(errors.EmbarkError) as info:
            await client.get(TEXT.name, text="x")
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert info.value.message == "INTERNAL: internal error"


async def test_calls_before_attach_are_unavailable(start_server: StartServer) -> None:
    running = await start_server()

    async with AsyncEmbarkClient(f"127.0.0.1:{running.port}") as client:
        with pytest.raises(errors.BackendUnavailable, match="starting"):
            await client.get(TEXT.name, text="x")


async def test_categorize_without_heads_is_not_found(
    server: Running,
    channel_to: Callable[[Running], grpc.aio.Channel],
    caplog: pytest.LogCaptureFixture,
) -> None:
    stub = embark_pb2_grpc.EmbArkStub(channel_to(server))

    error = await call_error(
        stub.Categorize(embark_pb2.CategorizeRequest(head="h", input=inputs_pb2.Input(text="x")))
    )

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "unknown head 'h'; loaded heads: none"
    # A domain error is not a bug: nothing is logged as an unexpected error.
    assert "unexpected error" not in caplog.text


# --- health and reflection ---


async def test_health_follows_set_serving(
    start_server: StartServer, channel_to: Callable[[Running], grpc.aio.Channel]
) -> None:
    running = await start_server()
    health = health_pb2_grpc.HealthStub(channel_to(running))

    async def status(service: str) -> int:
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        return int(response.status)

    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    serving = health_pb2.HealthCheckResponse.SERVING
    assert [await status(""), await status(SERVICE_NAME)] == [not_serving, not_serving]
    await running.set_serving(True)
    assert [await status(""), await status(SERVICE_NAME)] == [serving, serving]
    await running.set_serving(False)
    assert await status("") == not_serving


async def list_services(channel: grpc.aio.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    responses = [response async for response in call]
    return [s.name for s in responses[0].list_services_response.service]


async def test_reflection_lists_the_services(
    server: Running, channel_to: Callable[[Running], grpc.aio.Channel]
) -> None:
    services = await list_services(channel_to(server))

    assert SERVICE_NAME == "embark.v1.EmbArk"
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= set(services)


async def test_extra_services_are_reflected(
    start_server: StartServer, channel_to: Callable[[Running], grpc.aio.Channel]
) -> None:
    running = await start_server(extra=lambda server: ["retina.v1.Retina"])

    assert "retina.v1.Retina" in await list_services(channel_to(running))


# --- the bearer token ---


async def test_token_is_required(
    start_server: StartServer,
    service: EmbarkService,
    channel_to: Callable[[Running], grpc.aio.Channel],
) -> None:
    running = await start_server(token=TOKEN)
    running.servicer.attach(service)
    await running.set_serving(True)
    target = f"127.0.0.1:{running.port}"
    stub = embark_pb2_grpc.EmbArkStub(channel_to(running))

    missing = await call_error(stub.GetEmbedding(get_request("x")))
    wrong = await call_error(
        stub.GetEmbedding(get_request("x"), metadata=(("authorization", "Bearer nope"),))
    )
    bare = await call_error(
        stub.GetEmbedding(get_request("x"), metadata=(("authorization", TOKEN),))
    )
    for error in (missing, wrong, bare):
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == "missing or invalid token"

    ok = await stub.GetEmbedding(get_request("x"), metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert ok.embedding.status == embark_pb2.Status.PENDING
    async with AsyncEmbarkClient(target, token=TOKEN) as client:
        assert (await client.get(TEXT.name, text="x")).status == "PENDING"
    async with AsyncEmbarkClient(target, token="wrong") as client:
        with pytest.raises(errors.EmbarkError) as info:
            await client.get(TEXT.name, text="x")
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED

    # Load balancers and grpcurl reach health and reflection without credentials.
    health = health_pb2_grpc.HealthStub(channel_to(running))
    response = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert SERVICE_NAME in await list_services(channel_to(running))


# --- the blocking client ---


async def test_sync_client(server: Running, sqlite: SqliteStore) -> None:
    await sqlite.put_many([stored("known")])

    def use_client() -> tuple[str, list[str], type[BaseException]]:
        with EmbarkClient(f"127.0.0.1:{server.port}", timeout_s=5) as client:
            one = client.get(TEXT.name, text="known")
            many = client.get_many(
                TEXT.name, [inputs_pb2.Input(text="known"), inputs_pb2.Input(text="other")]
            )
            try:
                client.get("bert", text="x")
            except errors.EmbarkError as exc:
                raised: type[BaseException] = type(exc)
            else:
                raised = type(None)  # type: ignore[assignment]
        return one.status, [r.status for r in many], raised

    # The server shares this event loop: the blocking client runs in a thread.
    one, many, raised = await asyncio.to_thread(use_client)

    assert one == "HIT"
    assert many == ["HIT", "PENDING"]
    assert raised is errors.UnknownModel


def test_make_input_needs_exactly_one_kind() -> None:
    from embark.client import make_input

    assert make_input(text="a") == inputs_pb2.Input(text="a")
    assert make_input(image_url="https://e.com/a") == inputs_pb2.Input(image_url="https://e.com/a")
    with pytest.raises(errors.InvalidInput):
        make_input()
    with pytest.raises(errors.InvalidInput):
        make_input(text="a", image_url="https://e.com/a")


async def test_batch_categorize_over_grpc(
    start_server: StartServer,
    service: EmbarkService,
    channel_to: Callable[[Running], grpc.aio.Channel],
) -> None:
    """BatchCategorize through the real servicer: answers in order, the section with the
    chapter, UNCERTAIN below min_probability; a bad threshold is INVALID_ARGUMENT."""
    import numpy as np

    from embark.heads.artifact import Head
    from embark.heads.service import CategorizeService, HeadRegistry

    head = Head(
        name="hs", version=1, labels=("01", "02", "84", "85"), model=TEXT.name,
        revision=TEXT.revision, dim=TEXT.dim, bias=np.zeros(4, dtype=np.float32),
        weights=np.random.default_rng(1).standard_normal((4, TEXT.dim)).astype(np.float32),
    )  # fmt: skip
    running = await start_server()
    running.servicer.attach(service, CategorizeService(service, HeadRegistry({"hs": head})))
    await running.set_serving(True)
    stub = embark_pb2_grpc.EmbArkStub(channel_to(running))
    inputs = [inputs_pb2.Input(text=t) for t in ("red shoes", "blue hat")]
    request = embark_pb2.BatchCategorizeRequest(head="hs", inputs=inputs, top_k=2, wait_ms=2000)
    reply = await stub.BatchCategorize(request)
    assert [r.status for r in reply.results] == [embark_pb2.HIT, embark_pb2.HIT]
    for result, item in zip(reply.results, inputs, strict=True):
        one = await stub.Categorize(embark_pb2.CategorizeRequest(head="hs", input=item, top_k=2))
        assert [c.label for c in one.categories] == [c.label for c in result.categories]
        assert result.section.label in ("I", "XVI")
        assert result.categories[0].section in ("I", "XVI")
    best = reply.results[0].categories[0].probability
    request.min_probability = min(1.0, best + 0.001)
    unsure = await stub.BatchCategorize(request)
    assert unsure.results[0].status == embark_pb2.UNCERTAIN
    assert len(unsure.results[0].categories) == 2
    request.min_probability = 1.5
    error = await call_error(stub.BatchCategorize(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_client_sdk_categorize_many_abstain_and_section(
    start_server: StartServer, service: EmbarkService
) -> None:
    """The SDK's side of the same features: categorize_many (sync client, in a thread: the
    server runs on this loop), min_probability and the section (async client)."""
    import numpy as np

    from embark.heads.artifact import Head
    from embark.heads.service import CategorizeService, HeadRegistry

    head = Head(
        name="hs", version=1, labels=("01", "02", "84", "85"), model=TEXT.name,
        revision=TEXT.revision, dim=TEXT.dim, bias=np.zeros(4, dtype=np.float32),
        weights=np.random.default_rng(2).standard_normal((4, TEXT.dim)).astype(np.float32),
    )  # fmt: skip
    running = await start_server()
    running.servicer.attach(service, CategorizeService(service, HeadRegistry({"hs": head})))
    await running.set_serving(True)
    target = f"127.0.0.1:{running.port}"

    def many() -> list[Any]:
        with EmbarkClient(target, timeout_s=5) as client:
            return client.categorize_many("hs", ["red shoes", "blue hat"], wait_ms=2000)

    results = await asyncio.to_thread(many)
    assert [r.status for r in results] == ["HIT", "HIT"]
    assert all(r.section is not None and r.section_title for r in results)
    async with AsyncEmbarkClient(target, timeout_s=5) as client:
        one = await client.categorize("hs", text="red shoes")
        assert [c for c, _ in one.categories] == [c for c, _ in results[0].categories]
        assert [p for _, p in one.categories] == pytest.approx(
            [p for _, p in results[0].categories]
        )
        unsure = await client.categorize(
            "hs", text="red shoes", min_probability=min(1.0, one.categories[0][1] + 0.001)
        )
        assert unsure.status == "UNCERTAIN"
        assert unsure.categories == one.categories
