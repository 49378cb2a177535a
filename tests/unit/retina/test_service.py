"""RetinaService.embed with the fake encoder and a fake image source: validation, per-item
isolation, order, whole-call failures, concurrency limits."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
import numpy as np
import pytest

from embark_api.v1 import inputs_pb2, retina_pb2
from retina.errors import (
    Closing,
    InvalidRequest,
    ItemFailed,
    Overloaded,
    RevisionMismatch,
    UnknownModel,
)
from retina.fetch import FetchUnavailable
from retina.service import RetinaService
from retina.settings import RetinaSettings
from tests.fakes.encoder import FAIL_REASON, FakeEncoder, fake_vector

TEXT = "fake-text"
IMAGE = "fake-image"
DIM = 8


class FakeImages:
    """An ImageSource: url -> bytes, or an exception to raise; ``gate`` holds fetches of
    ``slow`` URLs until set."""

    def __init__(
        self, answers: Mapping[str, bytes | Exception], slow: frozenset[str] = frozenset()
    ):
        self.answers = dict(answers)
        self.slow = slow
        self.gate = asyncio.Event()
        self.cancelled: list[str] = []

    async def fetch(self, url: str) -> bytes:
        if url in self.slow:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled.append(url)
                raise
        answer = self.answers[url]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def make_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[..., RetinaSettings]:
    for name in list(os.environ):
        if name.startswith("RETINA_"):
            monkeypatch.delenv(name)

    def make(**overrides: Any) -> RetinaSettings:
        return RetinaSettings(**{"max_batch_items": 8, "max_text_chars": 50, **overrides})

    return make


@pytest.fixture
def text_encoder() -> FakeEncoder:
    return FakeEncoder(name=TEXT, kind="text", dim=DIM, revision="r-text", fail_on={"bad"})


@pytest.fixture
def image_encoder() -> FakeEncoder:
    return FakeEncoder(name=IMAGE, kind="image", dim=DIM, revision="r-image")


@pytest.fixture
def images() -> FakeImages:
    return FakeImages(
        {
            "http://img/a": b"image-a",
            "http://img/b": b"image-b",
            "http://img/404": ItemFailed("http_404", "not found"),
            "http://img/empty": b"",
            "http://img/down": FetchUnavailable("connection_failed", "connection refused"),
        },
        slow=frozenset({"http://img/b"}),
    )


@pytest.fixture
async def service(
    make_settings: Callable[..., RetinaSettings],
    text_encoder: FakeEncoder,
    image_encoder: FakeEncoder,
    images: FakeImages,
) -> AsyncIterator[RetinaService]:
    svc = RetinaService({TEXT: text_encoder, IMAGE: image_encoder}, make_settings(), images=images)
    yield svc
    await svc.close()


def texts(*values: str) -> list[inputs_pb2.Input]:
    return [inputs_pb2.Input(text=v) for v in values]


def urls(*values: str) -> list[inputs_pb2.Input]:
    return [inputs_pb2.Input(image_url=v) for v in values]


def vector(result: retina_pb2.EmbedResult) -> np.ndarray[Any, np.dtype[np.float32]]:
    assert result.WhichOneof("result") == "vector"
    return np.frombuffer(result.vector, dtype="<f4")


def reason(result: retina_pb2.EmbedResult) -> str:
    assert result.WhichOneof("result") == "error"
    return result.error.reason


async def test_text_results_in_request_order(
    service: RetinaService, text_encoder: FakeEncoder
) -> None:
    inputs = ["one", "two", "three", "four"]
    resp = await service.embed(retina_pb2.EmbedRequest(model=TEXT, inputs=texts(*inputs)))
    assert (resp.model, resp.revision, resp.dim) == (TEXT, "r-text", DIM)
    assert len(resp.results) == len(inputs)
    for text, result in zip(inputs, resp.results, strict=True):
        np.testing.assert_array_equal(vector(result), fake_vector(text, DIM))
    assert text_encoder.batches == [4]  # one inference for the whole call


async def test_per_item_failures_are_isolated(
    service: RetinaService, text_encoder: FakeEncoder
) -> None:
    request = retina_pb2.EmbedRequest(
        model=TEXT,
        inputs=[
            *texts("good", "bad", "", "x" * 51, "   "),
            inputs_pb2.Input(),  # neither text nor image_url
            *texts("also good"),
        ],
    )
    resp = await service.embed(request)
    got = [r.error.reason if r.WhichOneof("result") == "error" else "vector" for r in resp.results]
    assert got == [
        "vector",
        FAIL_REASON,
        "empty_input",
        "too_large",
        "empty_input",
        "empty_input",
        "vector",
    ]
    np.testing.assert_array_equal(vector(resp.results[0]), fake_vector("good", DIM))
    np.testing.assert_array_equal(vector(resp.results[6]), fake_vector("also good", DIM))
    assert resp.results[3].error.message  # human-readable detail
    assert text_encoder.batches == [2]  # only the survivors are inferred
    # Counted by reason (retina_item_failures), for the failure dashboards.
    sample = service._metrics.registry.get_sample_value
    assert sample("retina_item_failures_total", {"model": TEXT, "reason": "empty_input"}) == 3
    assert sample("retina_item_failures_total", {"model": TEXT, "reason": "too_large"}) == 1


async def test_all_items_failing_skips_inference(
    service: RetinaService, text_encoder: FakeEncoder
) -> None:
    resp = await service.embed(retina_pb2.EmbedRequest(model=TEXT, inputs=texts("bad", "")))
    assert [reason(r) for r in resp.results] == [FAIL_REASON, "empty_input"]
    assert text_encoder.batches == []


async def test_unknown_model_is_not_found(service: RetinaService) -> None:
    with pytest.raises(UnknownModel, match="nope") as info:
        await service.embed(retina_pb2.EmbedRequest(model="nope", inputs=texts("a")))
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert TEXT in info.value.message  # lists what is served


async def test_revision_mismatch(service: RetinaService) -> None:
    with pytest.raises(RevisionMismatch) as info:
        await service.embed(
            retina_pb2.EmbedRequest(model=TEXT, revision="r-old", inputs=texts("a"))
        )
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    ok = await service.embed(
        retina_pb2.EmbedRequest(model=TEXT, revision="r-text", inputs=texts("a"))
    )
    assert ok.revision == "r-text"


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (retina_pb2.EmbedRequest(model=TEXT), "empty"),
        (retina_pb2.EmbedRequest(model=TEXT, inputs=texts(*"abcdefghi")), "limit is 8"),
        (retina_pb2.EmbedRequest(inputs=texts("a")), "model is required"),
    ],
)
async def test_invalid_requests(
    service: RetinaService, request_: retina_pb2.EmbedRequest, match: str
) -> None:
    with pytest.raises(InvalidRequest, match=match) as info:
        await service.embed(request_)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_images_fetched_and_failures_isolated(
    service: RetinaService, images: FakeImages, image_encoder: FakeEncoder
) -> None:
    images.gate.set()
    request = retina_pb2.EmbedRequest(
        model=IMAGE,
        inputs=urls("http://img/b", "http://img/404", "", "http://img/empty", "http://img/a"),
    )
    resp = await service.embed(request)
    np.testing.assert_array_equal(vector(resp.results[0]), fake_vector(b"image-b", DIM))
    assert reason(resp.results[1]) == "http_404"
    assert reason(resp.results[2]) == "empty_input"  # empty URL: never fetched
    assert reason(resp.results[3]) == "empty_input"  # empty body: refused by preprocess
    np.testing.assert_array_equal(vector(resp.results[4]), fake_vector(b"image-a", DIM))
    assert image_encoder.batches == [2]


async def test_transient_fetch_failure_is_that_items_retriable_error(
    service: RetinaService, images: FakeImages, image_encoder: FakeEncoder
) -> None:
    images.gate.set()
    request = retina_pb2.EmbedRequest(model=IMAGE, inputs=urls("http://img/b", "http://img/down"))
    resp = await service.embed(request)
    np.testing.assert_array_equal(vector(resp.results[0]), fake_vector(b"image-b", DIM))
    error = resp.results[1].error
    assert (error.reason, error.retriable) == ("connection_failed", True)
    assert not resp.results[0].HasField("error")
    assert image_encoder.batches == [1]


async def test_an_input_of_the_wrong_kind_fails_alone(service: RetinaService) -> None:
    request = retina_pb2.EmbedRequest(
        model=IMAGE, inputs=[*urls("http://img/a"), *texts("a"), *urls("http://img/404")]
    )
    resp = await service.embed(request)
    assert resp.results[0].WhichOneof("result") == "vector"
    assert (reason(resp.results[1]), resp.results[1].error.retriable) == ("wrong_kind", False)
    assert reason(resp.results[2]) == "http_404"


async def test_a_preprocessing_crash_is_that_items_error_not_the_calls(
    service: RetinaService, text_encoder: FakeEncoder
) -> None:
    original = text_encoder.preprocess

    def crash_on_x(raw: str | bytes) -> object:
        if raw == "x":
            raise ZeroDivisionError("a decoder bug")
        return original(raw)

    text_encoder.preprocess = crash_on_x  # type: ignore[method-assign]
    resp = await service.embed(retina_pb2.EmbedRequest(model=TEXT, inputs=texts("a", "x", "b")))
    assert [r.WhichOneof("result") for r in resp.results] == ["vector", "error", "vector"]
    assert reason(resp.results[1]) == "bad_input"


async def test_too_many_pending_calls_is_overloaded(
    make_settings: Callable[..., RetinaSettings],
    image_encoder: FakeEncoder,
    images: FakeImages,
) -> None:
    svc = RetinaService({IMAGE: image_encoder}, make_settings(max_pending_calls=1), images=images)
    try:
        first = asyncio.create_task(
            svc.embed(retina_pb2.EmbedRequest(model=IMAGE, inputs=urls("http://img/b")))
        )
        await asyncio.sleep(0.01)  # first is now waiting on its download
        with pytest.raises(Overloaded) as info:
            await svc.embed(retina_pb2.EmbedRequest(model=IMAGE, inputs=urls("http://img/a")))
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.retriable
        images.gate.set()
        assert len((await first).results) == 1
        # The slot is free again.
        await svc.embed(retina_pb2.EmbedRequest(model=IMAGE, inputs=urls("http://img/a")))
    finally:
        await svc.close()


async def test_inference_runs_off_the_event_loop_in_chunks(
    make_settings: Callable[..., RetinaSettings], text_encoder: FakeEncoder
) -> None:
    threads: list[int] = []
    infer = text_encoder.infer

    def recording_infer(batch: Any) -> Any:
        threads.append(threading.get_ident())
        return infer(batch)

    text_encoder.infer = recording_infer  # type: ignore[method-assign]
    svc = RetinaService({TEXT: text_encoder}, make_settings(infer_chunk_items=2))
    try:
        resp = await svc.embed(retina_pb2.EmbedRequest(model=TEXT, inputs=texts(*"abcde")))
    finally:
        await svc.close()
    assert [vector(r).shape for r in resp.results] == [(DIM,)] * 5
    assert text_encoder.batches == [2, 2, 1]
    assert threading.get_ident() not in threads


async def test_image_encoder_requires_an_image_source(
    make_settings: Callable[..., RetinaSettings], image_encoder: FakeEncoder
) -> None:
    with pytest.raises(ValueError, match="image source"):
        RetinaService({IMAGE: image_encoder}, make_settings())


async def test_closed_service_refuses_calls(service: RetinaService) -> None:
    await service.close()
    with pytest.raises(Closing) as info:
        await service.embed(retina_pb2.EmbedRequest(model=TEXT, inputs=texts("a")))
    assert (info.value.code, info.value.retriable) == (grpc.StatusCode.UNAVAILABLE, True)
