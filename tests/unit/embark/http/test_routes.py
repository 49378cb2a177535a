"""The HTTP front over loopback: the real aiohttp server of ``HttpFront`` on a real
``EmbarkService`` (SQLite archive, in-process queue, the fake encoder for read-through), asked
with aiohttp and with the real ``openai`` SDK. Statuses, OpenAI error shapes, the hits header,
the deadline (503 + Retry-After, never an OOV vector), limits, token, readiness, metrics."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest

from embark import vectors
from embark.catalog import Catalog, ModelSpec
from embark.heads.artifact import Head
from embark.heads.service import CategorizeService, HeadRegistry
from embark.http import HttpFront, HttpOptions
from embark.http.schemas import index_ranges
from embark.keys import canonical_text, derive_key
from embark.metrics import EmbarkMetrics
from embark.queue.local import LocalBroker, LocalJobQueue
from embark.service import EmbarkService, Limits
from embark.similar.service import SimilarService
from embark.similar.sqlite import open_sqlite_index
from embark.store.base import StoredVector
from embark.store.sqlite import SqliteConfig, SqliteStore, open_sqlite_store
from tests.fakes.encoding import FakeEncoding, fake_vector

TOKEN = "http-s3cret"
TEXT = ModelSpec(
    name="minilm", kind="text", dim=4, revision="rev-t1", oov=vectors.to_bytes([0.5] * 4, 4)
)
IMAGE = ModelSpec(
    name="effnet", kind="image", dim=4, revision="rev-i1", oov=vectors.to_bytes([0.5] * 4, 4)
)
LIMITS = Limits(
    max_batch=8,
    max_text_chars=100,
    max_url_chars=200,
    lookup_timeout_s=0.5,
    pending_window_s=60.0,
    pending_window_size=100,
)
OPTIONS = HttpOptions(wait_ms=2000, retry_after_s=1.5, max_body_bytes=4096, max_batch=8)


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "embark.sqlite3"))
    yield store
    await store.close()


@pytest.fixture
def broker() -> LocalBroker:
    return LocalBroker(max_buffered=100)


@pytest.fixture
def metrics() -> EmbarkMetrics:
    return EmbarkMetrics()


@pytest.fixture
def service(sqlite: SqliteStore, broker: LocalBroker, metrics: EmbarkMetrics) -> EmbarkService:
    return EmbarkService(
        catalog=Catalog({TEXT.name: TEXT, IMAGE.name: IMAGE}),
        store=sqlite,
        queue=LocalJobQueue(broker),
        encoding=FakeEncoding(dim=TEXT.dim),
        limits=LIMITS,
        metrics=metrics,
    )


Start = Callable[..., Coroutine[Any, Any, str]]


@pytest.fixture
async def start_front(service: EmbarkService, metrics: EmbarkMetrics) -> AsyncIterator[Start]:
    """Start an HttpFront on a free port; ``attach=False`` leaves it starting (no service)."""
    fronts: list[HttpFront] = []

    async def start(
        *,
        attach: bool = True,
        heads: HeadRegistry | None = None,
        similar: SimilarService | None = None,
        **options: Any,
    ) -> str:
        opts = HttpOptions(**{**OPTIONS.__dict__, **options})
        front = HttpFront(opts, catalog=service.catalog, metrics=metrics)
        port = await front.start("127.0.0.1", 0)
        fronts.append(front)
        if attach:
            front.attach(service, CategorizeService(service, heads or HeadRegistry()), similar)
            front.set_ready(True)
        return f"http://127.0.0.1:{port}"

    yield start
    for front in fronts:
        await front.stop()


@pytest.fixture
async def base(start_front: Start) -> str:
    return await start_front()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession, url: str, body: object, **headers: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(url, data=data, headers=headers) as response:
        return response.status, await response.json(), dict(response.headers)


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


def assert_openai_error(doc: dict[str, Any], code: str) -> None:
    assert set(doc) == {"error"}
    assert set(doc["error"]) == {"message", "type", "param", "code"}
    assert doc["error"]["code"] == code, doc
    assert "Traceback" not in doc["error"]["message"]


# --- /v1/embeddings ---


async def test_archive_hits_and_read_through_both_answer_real_vectors(
    base: str, http: aiohttp.ClientSession, sqlite: SqliteStore
) -> None:
    await sqlite.put_many([stored("in the archive", [1.0, 2.0, 3.0, 4.0])])
    body = {"model": TEXT.name, "input": ["in the archive", "computed now"]}
    status, doc, headers = await post(http, f"{base}/v1/embeddings", body)
    assert status == 200, doc
    assert doc["object"] == "list"
    assert doc["model"] == TEXT.name
    assert [d["index"] for d in doc["data"]] == [0, 1]
    assert doc["data"][0]["embedding"] == [1.0, 2.0, 3.0, 4.0]
    computed = np.frombuffer(fake_vector(canonical_text("computed now"), TEXT.dim), "<f4")
    np.testing.assert_allclose(doc["data"][1]["embedding"], computed, rtol=1e-6)
    # Only the first came from the archive; the second was encoded within the deadline.
    assert headers["X-EmbArk-Hits"] == "0"
    # ... and was written back: the next call is an archive hit for both.
    _, _, headers = await post(http, f"{base}/v1/embeddings", body)
    assert headers["X-EmbArk-Hits"] == "0-1"


async def test_base64_is_the_float32_bytes(base: str, http: aiohttp.ClientSession) -> None:
    body: dict[str, Any] = {"model": TEXT.name, "input": "same text"}
    _, as_float, _ = await post(http, f"{base}/v1/embeddings", body)
    body["encoding_format"] = "base64"
    _, as_b64, _ = await post(http, f"{base}/v1/embeddings", body)
    decoded = np.frombuffer(base64.b64decode(as_b64["data"][0]["embedding"]), "<f4")
    np.testing.assert_array_equal(decoded, np.asarray(as_float["data"][0]["embedding"], "<f4"))


async def test_past_the_deadline_is_503_with_retry_after_never_oov(
    base: str, http: aiohttp.ClientSession, broker: LocalBroker
) -> None:
    body = {"model": TEXT.name, "input": ["not yet", "nor this"]}
    headers = {"X-EmbArk-Wait-Ms": "0"}  # no read-through: answer only from the archive
    status, doc, got = await post(http, f"{base}/v1/embeddings", body, **headers)
    assert status == 503
    assert_openai_error(doc, "not_ready")
    assert "2 of 2" in doc["error"]["message"]
    assert got["Retry-After"] == "2"
    assert got["retry-after-ms"] == "1500"
    assert got["x-should-retry"] == "true"
    assert got["X-EmbArk-Hits"] == ""
    assert "data" not in doc  # no OOV vector anywhere in the answer
    assert broker.end == 2  # both queued for KFC, so a retry finds them


async def test_a_slow_encoder_past_the_deadline_is_503(
    start_front: Start, http: aiohttp.ClientSession, service: EmbarkService
) -> None:
    base = await start_front(wait_ms=50)
    service._encoding.delay_s = 1.0  # type: ignore[union-attr]
    status, doc, _ = await post(http, f"{base}/v1/embeddings", {"model": TEXT.name, "input": "x"})
    assert status == 503
    assert_openai_error(doc, "not_ready")


async def test_a_failed_item_is_422_naming_it(base: str, http: aiohttp.ClientSession) -> None:
    body = {"model": TEXT.name, "input": ["fine", "please FAIL"]}
    status, doc, _ = await post(http, f"{base}/v1/embeddings", body)
    assert status == 422
    assert_openai_error(doc, "input_failed")
    assert doc["error"]["param"] == "input[1]"
    assert "fake_failure" in doc["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        (b"{not json", 400, "invalid_json", None),
        ({"model": "minilm", "input": [1, 2, 3]}, 400, "invalid_input", "input"),
        ({"model": "minilm", "input": [[1, 2]]}, 400, "invalid_input", "input"),
        ({"model": "minilm", "input": []}, 400, "invalid_argument", None),
        ({"model": "minilm", "input": ["ok", "   "]}, 400, "invalid_argument", None),
        ({"model": "minilm", "input": "x" * 101}, 400, "invalid_argument", None),
        ({"model": "minilm", "input": ["a"] * 9}, 400, "invalid_argument", None),
        ({"input": "x"}, 400, "invalid_request_body", "model"),
        (
            {"model": "minilm", "input": "x", "encoding_format": "int4"},
            400,
            "invalid_request_body",
            "encoding_format",
        ),
        (
            {"model": "minilm", "input": "x", "dimensions": 2},
            400,
            "unsupported_dimensions",
            "dimensions",
        ),
        (
            {"model": "minilm", "input": "x", "dimensions": 0},
            400,
            "invalid_request_body",
            "dimensions",
        ),
        ({"model": "gpt-9", "input": "x"}, 404, "model_not_found", None),
        ({"model": "effnet", "input": "file:///etc/passwd"}, 400, "invalid_argument", None),
        ({"model": "minilm", "input": "x" * 5000}, 413, "request_too_large", None),
    ],
)
async def test_bad_requests_get_openai_shaped_4xx(
    base: str,
    http: aiohttp.ClientSession,
    body: object,
    status: int,
    code: str,
    param: str | None,
) -> None:
    got, doc, _ = await post(http, f"{base}/v1/embeddings", body)
    assert got == status, doc
    assert_openai_error(doc, code)
    assert doc["error"]["param"] == param


async def test_dimensions_equal_to_the_models_is_allowed_and_user_ignored(
    base: str, http: aiohttp.ClientSession
) -> None:
    body = {"model": TEXT.name, "input": "x", "dimensions": TEXT.dim, "user": "u-1"}
    status, doc, _ = await post(http, f"{base}/v1/embeddings", body)
    assert status == 200, doc
    assert len(doc["data"][0]["embedding"]) == TEXT.dim


async def test_unknown_routes_and_methods_are_openai_shaped(
    base: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{base}/v1/embeddings") as response:
        assert response.status == 405
        assert_openai_error(await response.json(), "method_not_allowed")
    async with http.get(f"{base}/v1/nothing") as response:
        assert response.status == 404
        assert_openai_error(await response.json(), "not_found")


# --- the openai SDK against the front ---


async def test_the_openai_sdk_reads_vectors_and_typed_errors(base: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as sdk:
        # The SDK asks for base64 and decodes it by itself.
        result = await sdk.embeddings.create(model=TEXT.name, input=["alpha", "beta"])
        expected = np.frombuffer(fake_vector("alpha", TEXT.dim), "<f4")
        np.testing.assert_allclose(result.data[0].embedding, expected, rtol=1e-6)
        assert [d.index for d in result.data] == [0, 1]
        models = await sdk.models.list()
        assert {m.id for m in models.data} == {TEXT.name, IMAGE.name}
        with pytest.raises(openai.NotFoundError) as missing:
            await sdk.embeddings.create(model="nope", input="x")
        assert missing.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as bad:
            await sdk.embeddings.create(model=TEXT.name, input="x", dimensions=3)
        assert bad.value.code == "unsupported_dimensions"
        with pytest.raises(openai.InternalServerError) as not_ready:
            await sdk.embeddings.create(
                model=TEXT.name, input="gamma", extra_headers={"X-EmbArk-Wait-Ms": "0"}
            )
        assert not_ready.value.status_code == 503
        assert not_ready.value.response.headers["Retry-After"] == "2"


# --- the other routes ---


async def test_embed_answers_each_items_status_like_grpc(
    base: str, http: aiohttp.ClientSession, sqlite: SqliteStore
) -> None:
    await sqlite.put_many([stored("known", [4.0, 3.0, 2.0, 1.0])])
    body = {"model": TEXT.name, "input": ["known", "unknown", "a FAIL"]}
    status, doc, _ = await post(http, f"{base}/embed", body)
    assert status == 200, doc
    assert (doc["model"], doc["revision"], doc["dim"]) == (TEXT.name, TEXT.revision, TEXT.dim)
    assert [d["status"] for d in doc["data"]] == ["HIT", "PENDING", "PENDING"]
    assert doc["data"][0]["embedding"] == [4.0, 3.0, 2.0, 1.0]
    assert doc["data"][1]["embedding"] == [0.5] * 4  # the OOV vector, said to be PENDING
    status, doc, _ = await post(http, f"{base}/embed", {**body, "wait_ms": 2000})
    assert [d["status"] for d in doc["data"]] == ["HIT", "HIT", "FAILED"]
    assert "fake_failure" in doc["data"][2]["reason"]
    status, doc, _ = await post(http, f"{base}/embed", {**body, "wait": 1})
    assert status == 400  # native bodies refuse unknown fields
    assert_openai_error(doc, "invalid_request_body")


async def test_categorize_answers_each_input(
    start_front: Start, http: aiohttp.ClientSession
) -> None:
    rng = np.random.default_rng(0)
    shop = Head(
        name="shop", version=1, labels=tuple("abcdefg"), model=TEXT.name, revision=TEXT.revision,
        dim=TEXT.dim, weights=rng.standard_normal((7, TEXT.dim)).astype(np.float32),
        bias=np.zeros(7, dtype=np.float32),
    )  # fmt: skip
    heads = HeadRegistry({"shop": shop}, {"stale": "head 'stale' is not served: rev-old"})
    base = await start_front(heads=heads)
    body: dict[str, Any] = {"head": "shop", "input": ["red shoes", "blue hat"], "top_k": 3}
    status, doc, _ = await post(http, f"{base}/categorize", body)
    assert status == 200, doc
    assert [d["status"] for d in doc["data"]] == ["PENDING", "PENDING"]
    assert all(d["categories"] == [] for d in doc["data"])  # an OOV vector is never categorized
    status, doc, _ = await post(http, f"{base}/categorize", {**body, "wait_ms": 2000})
    assert [d["status"] for d in doc["data"]] == ["HIT", "HIT"]
    for item in doc["data"]:
        probabilities = [c["probability"] for c in item["categories"]]
        assert len(probabilities) == 3
        assert probabilities == sorted(probabilities, reverse=True)
        assert {c["label"] for c in item["categories"]} <= set("abcdefg")
        assert "section" not in item  # labels that are not HS chapters
    best = doc["data"][0]["categories"][0]["probability"]
    unsure = {**body, "min_probability": min(1.0, best + 0.001)}
    status, doc, _ = await post(http, f"{base}/categorize", unsure)
    assert doc["data"][0]["status"] == "UNCERTAIN"
    assert len(doc["data"][0]["categories"]) == 3  # the candidates come with the abstention
    status, doc, _ = await post(http, f"{base}/categorize", {**body, "min_probability": 2})
    assert status == 400
    status, doc, _ = await post(http, f"{base}/categorize", {"head": "stale", "input": "x"})
    assert status == 400
    assert_openai_error(doc, "failed_precondition")
    status, doc, _ = await post(http, f"{base}/categorize", {"head": "shop", "input": ["a"] * 9})
    assert status == 400
    assert_openai_error(doc, "invalid_argument")


async def test_categorize_unknown_head_is_404(base: str, http: aiohttp.ClientSession) -> None:
    status, doc, _ = await post(http, f"{base}/categorize", {"head": "nope", "input": ["a"]})
    assert status == 404
    assert_openai_error(doc, "not_found")


async def test_health_is_live_and_ready_follows_the_backends(
    start_front: Start, http: aiohttp.ClientSession
) -> None:
    base = await start_front(attach=False)
    async with http.get(f"{base}/health") as response:
        assert response.status == 200
    async with http.get(f"{base}/ready") as response:
        assert response.status == 503
    status, doc, headers = await post(
        http, f"{base}/v1/embeddings", {"model": TEXT.name, "input": "x"}
    )
    assert status == 503
    assert_openai_error(doc, "unavailable")
    assert headers["Retry-After"] == "2"
    async with http.get(f"{base}/v1/models") as response:  # the catalog is known at start
        assert response.status == 200


async def test_token_is_required_except_on_health(
    start_front: Start, http: aiohttp.ClientSession
) -> None:
    base = await start_front(token=TOKEN)
    body = {"model": TEXT.name, "input": "x"}
    status, doc, _ = await post(http, f"{base}/v1/embeddings", body)
    assert status == 401
    assert_openai_error(doc, "invalid_api_key")
    status, _, _ = await post(http, f"{base}/v1/embeddings", body, Authorization=f"Bearer {TOKEN}x")
    assert status == 401
    async with http.get(f"{base}/health") as response:
        assert response.status == 200
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=TOKEN, max_retries=0) as sdk:
        result = await sdk.embeddings.create(model=TEXT.name, input="x")
        assert len(result.data[0].embedding) == TEXT.dim


async def test_routes_are_timed_and_counted_by_status(
    base: str, http: aiohttp.ClientSession, metrics: EmbarkMetrics
) -> None:
    await post(http, f"{base}/v1/embeddings", {"model": TEXT.name, "input": "x"})
    await post(http, f"{base}/v1/embeddings", {"model": "nope", "input": "x"})
    async with http.get(f"{base}/metrics") as response:
        text = await response.text()
    assert 'embark_responses_total{api="http",code="200",route="/v1/embeddings"} 1.0' in text
    assert 'embark_responses_total{api="http",code="404",route="/v1/embeddings"} 1.0' in text
    assert 'embark_request_seconds_count{api="http",route="/v1/embeddings"} 2.0' in text


def test_index_ranges() -> None:
    assert index_ranges([]) == ""
    assert index_ranges([0]) == "0"
    assert index_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


async def test_similar_answers_neighbours_by_cosine_like_grpc(
    start_front: Start,
    http: aiohttp.ClientSession,
    service: EmbarkService,
    sqlite: SqliteStore,
    tmp_path: Path,
) -> None:
    rows = {
        "anchor": [1.0, 0.0, 0.0, 0.0],
        "close": [0.9, 0.1, 0.0, 0.0],
        "far": [0.0, 0.0, 1.0, 0.0],
        "opposite": [-1.0, 0.0, 0.0, 0.0],
    }
    await sqlite.put_many([stored(text, values) for text, values in rows.items()])
    index = await open_sqlite_index(tmp_path / "embark.sqlite3")
    try:
        base = await start_front(similar=SimilarService(service, sqlite, index))
        status, doc, _ = await post(
            http, f"{base}/similar", {"model": TEXT.name, "input": "anchor"}
        )
        assert status == 200, doc
        assert (doc["status"], doc["key"]) == ("HIT", stored("anchor", rows["anchor"]).key)
        found = [(n["input"], n["score"]) for n in doc["neighbours"]]
        assert [text for text, _ in found] == ["close", "far", "opposite"]  # never itself
        close = np.asarray(rows["close"]) / np.linalg.norm(rows["close"])
        assert found[0][1] == pytest.approx(float(close[0]), abs=1e-5)  # the cosine
        assert found[2][1] == pytest.approx(-1.0, abs=1e-5)

        by_key = {"model": TEXT.name, "key": doc["key"], "min_score": 0.5}
        status, doc, _ = await post(http, f"{base}/similar", by_key)
        assert [n["input"] for n in doc["neighbours"]] == ["close"]

        status, doc, _ = await post(http, f"{base}/similar", {"model": TEXT.name, "input": "new"})
        assert (status, doc["status"], doc["neighbours"]) == (200, "PENDING", [])

        both = {"model": TEXT.name, "input": "x", "key": "y"}
        status, doc, _ = await post(http, f"{base}/similar", both)
        assert status == 400
        assert_openai_error(doc, "invalid_request_body")
    finally:
        await index.close()


async def test_similar_without_an_index_says_how_to_turn_it_on(
    base: str, http: aiohttp.ClientSession
) -> None:
    status, doc, _ = await post(http, f"{base}/similar", {"model": TEXT.name, "input": "x"})
    assert status == 400, doc  # FAILED_PRECONDITION, as in embark.http.errors
    assert "EMBARK_STORE__SIMILARITY_SEARCH" in doc["error"]["message"]
