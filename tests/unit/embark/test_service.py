"""EmbarkService on SQLite, the local queue and the fake encoder: hits, misses, de-duplication,
degradation, read-through, batches and validation."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embark import vectors
from embark.catalog import Catalog, ModelSpec
from embark.errors import BackendUnavailable, InvalidInput, UnknownModel
from embark.keys import canonical_text, canonical_url, derive_key
from embark.metrics import EmbarkMetrics
from embark.queue.local import LocalBroker, LocalJobQueue
from embark.service import EmbarkService, Limits, PendingWindow
from embark.store.base import EmbeddingStore, FailureRecord, Lookup, StoredVector
from embark.store.cached import CachingStore
from embark.store.sqlite import SqliteConfig, SqliteStore, open_sqlite_store
from embark_api.v1 import embark_pb2, inputs_pb2, jobs_pb2
from tests.fakes.encoding import FakeEncoding, fake_vector

Status = embark_pb2.Status

TEXT = ModelSpec(
    name="minilm", kind="text", dim=4, revision="rev-t1", oov=vectors.to_bytes([0.5] * 4, 4)
)
IMAGE = ModelSpec(
    name="effnet", kind="image", dim=3, revision="rev-i1", oov=vectors.to_bytes([0.0] * 3, 3)
)
CATALOG = Catalog({TEXT.name: TEXT, IMAGE.name: IMAGE})
LIMITS = Limits(
    max_batch=8,
    max_text_chars=64,
    max_url_chars=80,
    lookup_timeout_s=0.2,
    pending_window_s=60.0,
    pending_window_size=1_000,
)


def text(value: str) -> inputs_pb2.Input:
    return inputs_pb2.Input(text=value)


def url(value: str) -> inputs_pb2.Input:
    return inputs_pb2.Input(image_url=value)


def text_key(value: str, spec: ModelSpec = TEXT) -> str:
    return derive_key(spec.name, spec.revision, "text", canonical_text(value)).digest


def stored(value: str, spec: ModelSpec = TEXT, *, seed: int = 1) -> StoredVector:
    canonical = canonical_text(value)
    return StoredVector(
        key=text_key(value, spec),
        model=spec.name,
        revision=spec.revision,
        kind="text",
        input=canonical,
        vector=vectors.to_bytes(np.random.default_rng(seed).standard_normal(spec.dim), spec.dim),
        dim=spec.dim,
        created_at_ms=1,
    )


class Harness:
    """The service under test plus everything it talks to, for assertions."""

    def __init__(self, store: EmbeddingStore, broker: LocalBroker, encoding: FakeEncoding) -> None:
        self.store = store
        self.broker = broker
        self.encoding = encoding
        self.metrics = EmbarkMetrics()

    def service(
        self,
        *,
        store: EmbeddingStore | None = None,
        no_encoder: bool = False,
        **limits: Any,
    ) -> EmbarkService:
        return EmbarkService(
            catalog=CATALOG,
            store=store if store is not None else self.store,
            queue=LocalJobQueue(self.broker),
            encoding=None if no_encoder else self.encoding,
            limits=dataclasses.replace(LIMITS, **limits),
            metrics=self.metrics,
        )

    @property
    def jobs(self) -> list[jobs_pb2.EmbedJob]:
        return [d.job for d in self.broker.read(0, 1_000)]

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def answers(self, model: str, status: str) -> float:
        return self.metric("embark_answers_total", model=model, status=status)


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "embark.sqlite3"))
    yield store
    await store.close()


@pytest.fixture
def h(sqlite: SqliteStore) -> Harness:
    return Harness(sqlite, LocalBroker(max_buffered=100), FakeEncoding(dim=TEXT.dim))


class FailingStore:
    """A store whose lookups fail (``mode="raise"``) or never answer (``mode="hang"``)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.cancelled = False

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Lookup]:
        if self.mode == "raise":
            raise BackendUnavailable("cassandra: no hosts available")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("unreachable")

    async def put_many(self, rows: Sequence[StoredVector]) -> None:
        raise BackendUnavailable("down")

    async def put_failures(self, rows: Sequence[FailureRecord]) -> None:
        raise BackendUnavailable("down")

    async def scan(self, model: str, revision: str) -> Sequence[StoredVector]:
        raise BackendUnavailable("down")

    async def ping(self) -> None:
        raise BackendUnavailable("down")

    async def close(self) -> None:
        return None


class ReadOnlyStore:
    """Reads from a real store; every write fails (e.g. a write timeout in Cassandra)."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Lookup]:
        return await self.inner.get_many(keys)

    async def put_many(self, rows: Sequence[StoredVector]) -> None:
        raise BackendUnavailable("write timed out")

    async def put_failures(self, rows: Sequence[FailureRecord]) -> None:
        raise BackendUnavailable("write timed out")

    async def scan(self, model: str, revision: str) -> Sequence[StoredVector]:
        return await self.inner.scan(model, revision)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        return None


# --- misses ---


async def test_miss_answers_oov_pending_and_queues_a_job(h: Harness) -> None:
    raw = "  Red   running\tshoes "

    [answer] = await h.service().get_many(TEXT.name, [text(raw)])

    key = text_key(raw)
    assert answer == embark_pb2.Embedding(
        status=Status.PENDING,
        model=TEXT.name,
        revision=TEXT.revision,
        dim=TEXT.dim,
        key=key,
        vector=TEXT.oov,
    )
    [job] = h.jobs
    assert job.key == key
    assert (job.model, job.revision) == (TEXT.name, TEXT.revision)
    assert job.input == text("Red running shoes")  # canonical, not raw
    assert abs(job.enqueued_at_ms - time.time() * 1000) < 5_000
    assert h.answers(TEXT.name, "PENDING") == 1
    assert h.metric("embark_misses_enqueued_total", model=TEXT.name) == 1
    assert h.metric("embark_lookup_seconds_count") == 1
    assert h.encoding.calls == []  # no wait_ms: never encodes on the request path


async def test_image_miss_queues_the_canonical_url(h: Harness) -> None:
    raw = "HTTPS://Example.com:443/shoe.png#top"

    [answer] = await h.service().get_many(IMAGE.name, [url(raw)])

    assert (answer.status, answer.vector, answer.dim) == (Status.PENDING, IMAGE.oov, IMAGE.dim)
    [job] = h.jobs
    assert job.input == url("https://example.com/shoe.png")
    assert job.key == derive_key(IMAGE.name, IMAGE.revision, "image", canonical_url(raw)).digest
    assert job.key == answer.key


async def test_repeated_miss_is_pending_but_queued_once(h: Harness) -> None:
    service = h.service()

    first = await service.get_many(TEXT.name, [text("blue shoes")])
    again = await service.get_many(TEXT.name, [text("  blue\nshoes")])

    assert [a.status for a in first + again] == [Status.PENDING, Status.PENDING]
    assert first[0].key == again[0].key
    assert len(h.jobs) == 1
    assert h.metric("embark_misses_enqueued_total", model=TEXT.name) == 1
    assert h.answers(TEXT.name, "PENDING") == 2


async def test_miss_is_queued_again_after_the_window(h: Harness) -> None:
    service = h.service(pending_window_s=0.05)

    await service.get_many(TEXT.name, [text("green shoes")])
    await asyncio.sleep(0.06)
    await service.get_many(TEXT.name, [text("green shoes")])

    assert len(h.jobs) == 2


def test_pending_window_is_bounded_and_forgets() -> None:
    window = PendingWindow(window_s=60, max_size=2)
    assert [window.should_queue(k) for k in ("a", "b", "a")] == [True, True, False]
    assert window.should_queue("c")  # evicts the least recently queued, "a"
    assert not window.should_queue("b")
    assert window.should_queue("a")  # evicts "b"
    assert window.should_queue("b")
    assert not window.should_queue("a")
    window.forget("c")
    assert window.should_queue("c")


async def test_full_queue_answers_dropped_and_counts_it(h: Harness) -> None:
    h.broker.max_buffered = 1
    service = h.service()

    answers = await service.get_many(TEXT.name, [text("fits"), text("does not fit")])

    assert [a.status for a in answers] == [Status.PENDING, Status.DROPPED]
    dropped = answers[1]
    assert dropped.vector == TEXT.oov
    assert "queue is full" in dropped.reason
    assert h.metric("embark_misses_dropped_total", model=TEXT.name) == 1
    assert h.answers(TEXT.name, "DROPPED") == 1
    assert h.broker.dropped_total == 1


async def test_dropped_miss_is_not_pending_and_is_queued_when_there_is_room(h: Harness) -> None:
    h.broker.max_buffered = 1
    service = h.service()
    await service.get_many(TEXT.name, [text("fits")])
    [dropped] = await service.get_many(TEXT.name, [text("later")])
    assert dropped.status == Status.DROPPED

    h.broker.commit(h.broker.end)  # KFC caught up
    [retried] = await service.get_many(TEXT.name, [text("later")])

    assert retried.status == Status.PENDING
    assert h.broker.read(h.broker.committed, 10)[0].job.key == text_key("later")


# --- hits and failure records ---


async def test_stored_vector_is_a_hit_with_its_exact_bytes(h: Harness) -> None:
    row = stored("Red running shoes")
    await h.store.put_many([row])

    [answer] = await h.service().get_many(TEXT.name, [text("  Red  running\tshoes\n")])

    assert answer == embark_pb2.Embedding(
        status=Status.HIT,
        model=TEXT.name,
        revision=TEXT.revision,
        dim=TEXT.dim,
        key=row.key,
        vector=row.vector,
    )
    assert h.jobs == []
    assert h.answers(TEXT.name, "HIT") == 1


async def test_a_vector_of_another_revision_is_not_served(h: Harness) -> None:
    old = stored("shoes", dataclasses.replace(TEXT, revision="rev-t0"))
    await h.store.put_many([old])

    [answer] = await h.service().get_many(TEXT.name, [text("shoes")])

    assert answer.status == Status.PENDING
    assert answer.key != old.key


async def test_failure_record_answers_failed_with_its_reason(h: Harness) -> None:
    row = stored("undecodable")
    await h.store.put_failures(
        [FailureRecord(row.key, TEXT.name, TEXT.revision, "too_long", "over 512 tokens", 1)]
    )

    [answer] = await h.service().get_many(TEXT.name, [text("undecodable")])

    assert answer.status == Status.FAILED
    assert answer.reason == "too_long: over 512 tokens"
    assert answer.vector == TEXT.oov
    assert h.jobs == []  # not queued again until the record expires
    assert h.answers(TEXT.name, "FAILED") == 1


# --- the store down ---


@pytest.mark.parametrize("mode", ["raise", "hang"])
async def test_store_trouble_answers_unavailable_within_the_lookup_timeout(
    h: Harness, mode: str
) -> None:
    store = FailingStore(mode)
    service = h.service(store=store)  # type: ignore[arg-type]

    started = time.monotonic()
    answers = await service.get_many(TEXT.name, [text("a"), text("b"), text("a")], wait_ms=5_000)
    elapsed = time.monotonic() - started

    assert elapsed < LIMITS.lookup_timeout_s + 0.5
    assert [a.status for a in answers] == [Status.UNAVAILABLE] * 3
    assert all(a.vector == TEXT.oov and a.reason for a in answers)
    assert h.encoding.calls == []  # no read-through without the archive
    # The answer says a job was queued if possible: it was, once per key.
    assert sorted(j.key for j in h.jobs) == sorted({text_key("a"), text_key("b")})
    reason = "timeout" if mode == "hang" else "unavailable"
    assert h.metric("embark_store_errors_total", reason=reason) == 1
    assert h.answers(TEXT.name, "UNAVAILABLE") == 3
    if mode == "hang":
        assert elapsed >= LIMITS.lookup_timeout_s * 0.9
        assert store.cancelled


async def test_store_trouble_with_a_full_queue_still_answers(h: Harness) -> None:
    h.broker.max_buffered = 1
    service = h.service(store=FailingStore("raise"))  # type: ignore[arg-type]

    answers = await service.get_many(TEXT.name, [text("a"), text("b")])

    assert [a.status for a in answers] == [Status.UNAVAILABLE, Status.UNAVAILABLE]
    assert h.metric("embark_misses_dropped_total", model=TEXT.name) == 1
    # The dropped one says so: the drop is never silent, whatever the status.
    assert "queue is full" not in answers[0].reason
    assert "queue is full" in answers[1].reason


# --- read-through ---


async def test_read_through_hits_and_writes_back(h: Harness) -> None:
    service = h.service()

    [answer] = await service.get_many(TEXT.name, [text("  fresh\tinput ")], wait_ms=2_000)

    expected = fake_vector("fresh input", TEXT.dim)
    assert (answer.status, answer.vector, answer.reason) == (Status.HIT, expected, "")
    [call] = h.encoding.calls
    assert (call.model, call.revision, list(call.inputs)) == (
        TEXT.name,
        TEXT.revision,
        [text("fresh input")],
    )
    found = await h.store.get_many([answer.key])
    row = found[answer.key]
    assert isinstance(row, StoredVector)
    assert (row.vector, row.input, row.kind, row.dim) == (expected, "fresh input", "text", 4)
    assert (row.model, row.revision) == (TEXT.name, TEXT.revision)
    assert h.jobs == []
    assert h.metric("embark_read_through_seconds_count") == 1
    assert h.answers(TEXT.name, "HIT") == 1
    # The next plain request is served from the archive.
    [again] = await service.get_many(TEXT.name, [text("fresh input")])
    assert (again.status, again.vector) == (Status.HIT, expected)
    assert len(h.encoding.calls) == 1


async def test_read_through_past_the_deadline_falls_back_to_pending(h: Harness) -> None:
    h.encoding.delay_s = 1.0

    started = time.monotonic()
    [answer] = await h.service().get_many(TEXT.name, [text("slow")], wait_ms=50)

    assert time.monotonic() - started < 0.5
    assert (answer.status, answer.vector) == (Status.PENDING, TEXT.oov)
    assert [j.key for j in h.jobs] == [answer.key]
    assert dict(await h.store.get_many([answer.key])) == {}


async def test_read_through_with_retina_down_falls_back_to_pending(h: Harness) -> None:
    h.encoding.unavailable = True

    [answer] = await h.service().get_many(TEXT.name, [text("down")], wait_ms=1_000)

    assert answer.status == Status.PENDING
    assert [j.key for j in h.jobs] == [answer.key]


async def test_read_through_without_an_encoder_is_a_plain_miss(h: Harness) -> None:
    [answer] = await h.service(no_encoder=True).get_many(TEXT.name, [text("x")], wait_ms=1_000)

    assert answer.status == Status.PENDING
    assert len(h.jobs) == 1


async def test_read_through_item_failure_answers_failed_and_records_it(h: Harness) -> None:
    service = h.service()

    answers = await service.get_many(
        TEXT.name, [text("ok one"), text("please FAIL")], wait_ms=1_000
    )

    ok, failed = answers
    assert ok.status == Status.HIT
    assert failed.status == Status.FAILED
    assert failed.reason == "fake_failure: cannot encode 'please FAIL'"
    assert failed.vector == TEXT.oov
    record = (await h.store.get_many([failed.key]))[failed.key]
    assert isinstance(record, FailureRecord)
    assert (record.reason, record.model, record.revision) == (
        "fake_failure",
        TEXT.name,
        TEXT.revision,
    )
    assert h.jobs == []
    # Later requests see the record without encoding again.
    [again] = await service.get_many(TEXT.name, [text("please FAIL")], wait_ms=1_000)
    assert again.status == Status.FAILED
    assert len(h.encoding.calls) == 1


async def test_read_through_encodes_each_key_once_and_skips_hits(h: Harness) -> None:
    await h.store.put_many([stored("known")])

    answers = await h.service().get_many(
        TEXT.name, [text("new"), text("known"), text(" new ")], wait_ms=1_000
    )

    assert [a.status for a in answers] == [Status.HIT] * 3
    [call] = h.encoding.calls
    assert list(call.inputs) == [text("new")]
    assert answers[0].vector == answers[2].vector == fake_vector("new", TEXT.dim)


async def test_read_through_write_back_failure_still_hits_and_queues(
    h: Harness, sqlite: SqliteStore
) -> None:
    service = h.service(store=ReadOnlyStore(sqlite))

    [answer] = await service.get_many(TEXT.name, [text("unsaved")], wait_ms=1_000)

    assert (answer.status, answer.vector) == (Status.HIT, fake_vector("unsaved", TEXT.dim))
    assert [j.key for j in h.jobs] == [answer.key]  # KFC will store it


# --- batches ---


async def test_batch_keeps_request_order(h: Harness) -> None:
    hit_a, hit_b = stored("alpha", seed=1), stored("beta", seed=2)
    await h.store.put_many([hit_a, hit_b])
    inputs = [
        text("gamma"),
        text("alpha"),
        text("delta"),
        text(" gamma "),
        text("beta"),
        text("alpha"),
        text("epsilon"),
    ]

    answers = await h.service().get_many(TEXT.name, inputs)

    assert [a.status for a in answers] == [
        Status.PENDING,
        Status.HIT,
        Status.PENDING,
        Status.PENDING,
        Status.HIT,
        Status.HIT,
        Status.PENDING,
    ]
    assert [a.key for a in answers] == [text_key(i.text) for i in inputs]
    assert [answers[i].vector for i in (1, 4, 5)] == [hit_a.vector, hit_b.vector, hit_a.vector]
    assert [j.key for j in h.jobs] == [text_key(t) for t in ("gamma", "delta", "epsilon")]
    assert h.answers(TEXT.name, "HIT") == 3
    assert h.answers(TEXT.name, "PENDING") == 4


async def test_batch_of_the_maximum_size_is_served(h: Harness) -> None:
    answers = await h.service().get_many(
        TEXT.name, [text(f"item {i}") for i in range(LIMITS.max_batch)]
    )
    assert len(answers) == LIMITS.max_batch


# --- validation ---


async def test_unknown_model(h: Harness) -> None:
    with pytest.raises(UnknownModel, match="known models: effnet, minilm"):
        await h.service().get_many("bert", [text("x")])


BAD_REQUESTS: list[tuple[str, Callable[[], list[inputs_pb2.Input]], str, str]] = [
    ("no-inputs", lambda: [], TEXT.name, "no inputs"),
    ("too-many", lambda: [text(str(i)) for i in range(9)], TEXT.name, "at most 8"),
    ("oversized-text", lambda: [text("x" * 65)], TEXT.name, "65 characters; at most 64"),
    ("oversized-url", lambda: [url("https://e.com/" + "a" * 70)], IMAGE.name, "at most 80"),
    ("empty-text", lambda: [text("")], TEXT.name, "input 0"),
    ("whitespace-only", lambda: [text("ok"), text(" \t\n\u3000")], TEXT.name, "input 1: empty"),
    ("unset-input", lambda: [inputs_pb2.Input()], TEXT.name, "set text or image_url"),
    ("url-to-text-model", lambda: [url("https://e.com/a.png")], TEXT.name, "takes text"),
    ("text-to-image-model", lambda: [text("a shoe")], IMAGE.name, "takes image"),
    ("ftp-url", lambda: [url("ftp://e.com/a.png")], IMAGE.name, "http or https"),
    ("url-no-host", lambda: [url("https:///a.png")], IMAGE.name, "no host"),
    ("url-credentials", lambda: [url("https://u:p@e.com/a")], IMAGE.name, "credentials"),
    ("url-bad-port", lambda: [url("https://e.com:99999/a")], IMAGE.name, "malformed"),
    ("empty-url", lambda: [url("")], IMAGE.name, "input 0"),
]


@pytest.mark.parametrize(
    ("make_inputs", "model", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
async def test_invalid_requests_are_refused_and_nothing_is_queued(
    h: Harness, make_inputs: Callable[[], list[inputs_pb2.Input]], model: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        await h.service().get_many(model, make_inputs(), wait_ms=1_000)

    assert h.jobs == []
    assert h.encoding.calls == []


async def test_one_bad_input_refuses_the_whole_batch(h: Harness) -> None:
    with pytest.raises(InvalidInput, match="input 2"):
        await h.service().get_many(TEXT.name, [text("a"), text("b"), text("   ")])
    assert h.jobs == []


async def test_limits_are_inclusive(h: Harness) -> None:
    [answer] = await h.service().get_many(TEXT.name, [text("x" * 64)])
    assert answer.status == Status.PENDING


async def test_lru_hits_stay_hits_when_the_cold_read_fails(h: Harness, sqlite: SqliteStore) -> None:
    # The batch's hot keys were read before; the archive then goes down for its cold keys.
    await sqlite.put_many([stored("hot")])
    cached = CachingStore(sqlite, max_bytes=1 << 20, metrics=h.metrics, cold_timeout_s=0.1)
    service = h.service(store=cached)
    assert [a.status for a in await service.get_many(TEXT.name, [text("hot")])] == [Status.HIT]
    await sqlite.close()  # every archive read now fails

    answers = await service.get_many(TEXT.name, [text("hot"), text("cold")])

    assert [a.status for a in answers] == [Status.HIT, Status.UNAVAILABLE]
    assert answers[0].vector == stored("hot").vector
    assert [j.key for j in h.jobs] == [text_key("cold")]
