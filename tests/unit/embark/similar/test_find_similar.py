"""FindSimilar over loopback gRPC on the embedded backends (SQLite store and index, the fake
encoder for read-through): statuses, validation, the score against numpy, the query's own key
left out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from embark import vectors
from embark.catalog import Catalog, ModelSpec
from embark.keys import canonical_text, derive_key
from embark.metrics import EmbarkMetrics
from embark.queue.local import LocalBroker, LocalJobQueue
from embark.server.app import Running, start
from embark.service import EmbarkService, Limits
from embark.similar.service import SimilarService
from embark.similar.sqlite import SqliteSimilarityIndex, open_sqlite_index
from embark.store.base import StoredVector
from embark.store.sqlite import SqliteConfig, SqliteStore, open_sqlite_store
from embark_api.v1 import embark_pb2, embark_pb2_grpc, inputs_pb2
from tests.fakes.encoding import FakeEncoding

TEXT = ModelSpec(
    name="minilm", kind="text", dim=4, revision="rev-t1", oov=vectors.to_bytes([0.5] * 4, 4)
)
LIMITS = Limits(
    max_batch=16,
    max_text_chars=100,
    max_url_chars=100,
    lookup_timeout_s=0.5,
    pending_window_s=60.0,
    pending_window_size=100,
)
# Four stored items: two near-duplicates of each other, one apart, one opposite.
ITEMS = {
    "red shoe size 42": [1.0, 0.1, 0.0, 0.0],
    "red shoe 42": [1.0, 0.12, 0.01, 0.0],
    "blue kettle": [0.0, 0.0, 1.0, 0.2],
    "anti shoe": [-1.0, -0.1, 0.0, 0.0],
}


def stored(text: str, values: list[float]) -> StoredVector:
    canonical = canonical_text(text)
    return StoredVector(
        key=derive_key(TEXT.name, TEXT.revision, "text", canonical).digest,
        model=TEXT.name,
        revision=TEXT.revision,
        kind="text",
        input=canonical,
        vector=vectors.to_bytes(values, TEXT.dim),
        dim=TEXT.dim,
        created_at_ms=1,
    )


@pytest.fixture
async def backends(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteSimilarityIndex]]:
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "embark.sqlite3"))
    index = await open_sqlite_index(tmp_path / "embark.sqlite3")
    await store.put_many([stored(text, values) for text, values in ITEMS.items()])
    yield store, index
    await index.close()
    await store.close()


@pytest.fixture
async def stub(
    backends: tuple[SqliteStore, SqliteSimilarityIndex],
) -> AsyncIterator[embark_pb2_grpc.EmbArkStub]:
    store, index = backends
    service = EmbarkService(
        catalog=Catalog({TEXT.name: TEXT}),
        store=store,
        queue=LocalJobQueue(LocalBroker(max_buffered=100)),
        encoding=FakeEncoding(dim=TEXT.dim),
        limits=LIMITS,
        metrics=EmbarkMetrics(),
    )
    running: Running = await start(host="127.0.0.1", port=0, max_message_bytes=1 << 20)
    running.servicer.attach(service, similar=SimilarService(service, store, index))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield embark_pb2_grpc.EmbArkStub(channel)
    await channel.close(grace=None)
    await running.server.stop(None)


def by_text(text: str, **fields: object) -> embark_pb2.FindSimilarRequest:
    return embark_pb2.FindSimilarRequest(
        model=TEXT.name, input=inputs_pb2.Input(text=text), **fields
    )


def by_key(key: str, model: str = TEXT.name) -> embark_pb2.FindSimilarRequest:
    return embark_pb2.FindSimilarRequest(model=model, key=key)


async def test_neighbours_of_a_stored_input_best_first_with_numpys_cosine(
    stub: embark_pb2_grpc.EmbArkStub,
) -> None:
    response = await stub.FindSimilar(by_text("red shoe size 42"))

    assert response.status == embark_pb2.HIT
    texts = [n.input.text for n in response.neighbours]
    assert texts == ["red shoe 42", "blue kettle", "anti shoe"]  # itself left out
    q = np.array(ITEMS["red shoe size 42"])
    for n in response.neighbours:
        v = np.array(ITEMS[n.input.text])
        assert n.score == pytest.approx(q @ v / np.linalg.norm(q) / np.linalg.norm(v), abs=1e-6)
    assert response.neighbours[-1].score < -0.99  # a cosine, not (1 + cos) / 2


async def test_top_k_and_min_score(stub: embark_pb2_grpc.EmbArkStub) -> None:
    one = await stub.FindSimilar(by_text("red shoe size 42", top_k=1))
    near = await stub.FindSimilar(by_text("red shoe size 42", min_score=0.9))

    assert [n.input.text for n in one.neighbours] == ["red shoe 42"]
    assert [n.input.text for n in near.neighbours] == ["red shoe 42"]


async def test_by_key(stub: embark_pb2_grpc.EmbArkStub) -> None:
    key = stored("blue kettle", ITEMS["blue kettle"]).key

    response = await stub.FindSimilar(
        embark_pb2.FindSimilarRequest(model=TEXT.name, key=key, top_k=1)
    )

    assert (response.status, response.key) == (embark_pb2.HIT, key)
    assert len(response.neighbours) == 1
    assert response.neighbours[0].input.text != "blue kettle"


async def test_a_new_input_is_pending_without_neighbours(
    stub: embark_pb2_grpc.EmbArkStub,
) -> None:
    response = await stub.FindSimilar(by_text("never seen before"))

    assert response.status == embark_pb2.PENDING
    assert not response.neighbours


async def test_read_through_finds_neighbours_of_a_new_input(
    stub: embark_pb2_grpc.EmbArkStub,
) -> None:
    response = await stub.FindSimilar(by_text("computed now", wait_ms=2000))

    assert response.status == embark_pb2.HIT
    assert len(response.neighbours) == len(ITEMS)  # it was written, and is left out


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (embark_pb2.FindSimilarRequest(model="minilm"), grpc.StatusCode.INVALID_ARGUMENT),
        (by_text("x", top_k=1001), grpc.StatusCode.INVALID_ARGUMENT),
        (by_text("x", min_score=1.5), grpc.StatusCode.INVALID_ARGUMENT),
        (by_text("x", min_score=float("nan")), grpc.StatusCode.INVALID_ARGUMENT),
        (embark_pb2.FindSimilarRequest(model="minilm", key="0" * 32), grpc.StatusCode.NOT_FOUND),
        (
            embark_pb2.FindSimilarRequest(model="minilm", key="k" * 65),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (embark_pb2.FindSimilarRequest(model="nope", key="abc"), grpc.StatusCode.NOT_FOUND),
        (by_text(""), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_bad_requests_get_a_clear_status(
    stub: embark_pb2_grpc.EmbArkStub, request_: embark_pb2.FindSimilarRequest, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.FindSimilar(request_)

    assert info.value.code() == code
    assert "Traceback" not in (info.value.details() or "")


async def test_without_an_index_it_is_a_failed_precondition(
    backends: tuple[SqliteStore, SqliteSimilarityIndex],
) -> None:
    service = EmbarkService(
        catalog=Catalog({TEXT.name: TEXT}),
        store=backends[0],
        queue=LocalJobQueue(LocalBroker(max_buffered=100)),
        encoding=None,
        limits=LIMITS,
        metrics=EmbarkMetrics(),
    )
    running = await start(host="127.0.0.1", port=0, max_message_bytes=1 << 20)
    running.servicer.attach(service)  # no SimilarService: search is off
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await embark_pb2_grpc.EmbArkStub(channel).FindSimilar(by_text("x"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "SIMILARITY_SEARCH" in (info.value.details() or "")
    finally:
        await running.server.stop(None)
