"""The KFC loop on the local queue, SQLite and the fake encoder: store then commit, de-duplicate,
skip what is stored, isolate per-item failures, retry an item's passing fault alone and bounded,
back off the batch on backend faults, trust nothing in a message, never stop on an error."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

import pytest

from embark import vectors
from embark.catalog import Catalog, ModelSpec
from embark.errors import BackendUnavailable, EncoderFailed, PreconditionFailed
from embark.keys import canonical_input, derive_key
from embark.queue.base import Delivery
from embark.queue.local import LocalBroker, LocalJobConsumer, LocalJobQueue
from embark.retry import Backoff
from embark.store.base import FailureRecord, Lookup, StoredVector
from embark.store.sqlite import SqliteConfig, SqliteStore, open_sqlite_store
from embark_api.v1 import inputs_pb2, jobs_pb2, retina_pb2
from kfc.metrics import KfcMetrics
from kfc.worker import BatchConfig, Worker
from tests.fakes.encoding import FakeEncoding, fake_vector

TEXT = ModelSpec(
    name="minilm", kind="text", dim=4, revision="rev-t1", oov=vectors.to_bytes([0.5] * 4, 4)
)
IMAGE = ModelSpec(
    name="effnet", kind="image", dim=4, revision="rev-i1", oov=vectors.to_bytes([0.0] * 4, 4)
)
CATALOG = Catalog({TEXT.name: TEXT, IMAGE.name: IMAGE})
CONFIG = BatchConfig(
    max_batch=100,
    poll_timeout_s=0.01,
    encode_batch=2,
    encode_concurrency=2,
    max_batches=2,
    backoff=Backoff(initial_s=0.005, max_s=0.02),
    item_retry=Backoff(initial_s=0.001, max_s=0.005, attempts=3, deadline_s=5.0),
    max_retrying=100,
)


def job(raw: str, spec: ModelSpec = TEXT, *, revision: str | None = None) -> jobs_pb2.EmbedJob:
    """A job as EmbArk enqueues it: canonical input, derived key."""
    canonical = canonical_input(spec.kind, raw)
    rev = spec.revision if revision is None else revision
    item = (
        inputs_pb2.Input(text=canonical)
        if spec.kind == "text"
        else inputs_pb2.Input(image_url=canonical)
    )
    return jobs_pb2.EmbedJob(
        key=derive_key(spec.name, rev, spec.kind, canonical).digest,
        model=spec.name,
        revision=rev,
        input=item,
        enqueued_at_ms=int(time.time() * 1000),
    )


class Harness:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.broker = LocalBroker(max_buffered=1_000)
        self.queue = LocalJobQueue(self.broker)
        self.consumer = LocalJobConsumer(self.broker)
        self.encoding = FakeEncoding(dim=4)
        self.metrics = KfcMetrics()
        self.stop = asyncio.Event()

    def worker(self, **config: object) -> Worker:
        return Worker(
            consumer=self.consumer,
            store=self.store,
            encoding=self.encoding,
            catalog=CATALOG,
            config=dataclasses.replace(CONFIG, **config),
            metrics=self.metrics,
        )

    def enqueue(self, *jobs: jobs_pb2.EmbedJob) -> None:
        for j in jobs:
            self.queue.enqueue(j)

    async def poll(self) -> Sequence[Delivery]:
        return await self.consumer.poll_batch(100, 0.01)

    async def lookup(self, *jobs: jobs_pb2.EmbedJob) -> Mapping[str, Lookup]:
        return await self.store.get_many([j.key for j in jobs])

    @property
    def encoded(self) -> list[inputs_pb2.Input]:
        return [item for call in self.encoding.calls for item in call.inputs]

    def jobs_metric(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value("kfc_jobs_total", {"outcome": outcome})
        return 0.0 if value is None else value

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "kfc.sqlite3"))
    yield store
    await store.close()


@pytest.fixture
def h(sqlite: SqliteStore) -> Harness:
    return Harness(sqlite)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


def expected_row(j: jobs_pb2.EmbedJob, spec: ModelSpec = TEXT) -> tuple[object, ...]:
    raw = j.input.text or j.input.image_url
    return (j.key, j.model, j.revision, spec.kind, raw, fake_vector(raw, spec.dim), spec.dim)


def row_fields(row: Lookup) -> tuple[object, ...]:
    assert isinstance(row, StoredVector)
    return (row.key, row.model, row.revision, row.kind, row.input, row.vector, row.dim)


# --- the happy path ---


async def test_jobs_are_stored_then_committed(h: Harness) -> None:
    jobs = [
        job("red shoes"),
        job("blue shoes"),
        job("green shoes"),
        job("https://e.com/a.png", IMAGE),
    ]
    h.enqueue(*jobs)

    await h.worker().handle(await h.poll(), h.stop)

    found = await h.lookup(*jobs)
    assert [row_fields(found[j.key]) for j in jobs] == [
        expected_row(j, IMAGE if j.model == IMAGE.name else TEXT) for j in jobs
    ]
    assert h.broker.committed == 4
    # Grouped per model revision, at most encode_batch inputs a call, with the job's revision.
    assert sorted((c.model, c.revision, len(c.inputs)) for c in h.encoding.calls) == [
        (IMAGE.name, IMAGE.revision, 1),
        (TEXT.name, TEXT.revision, 1),
        (TEXT.name, TEXT.revision, 2),
    ]
    assert h.jobs_metric("stored") == 4
    assert h.metric("kfc_batch_size_count") == 1
    assert h.metric("kfc_batch_size_sum") == 4
    assert h.metric("kfc_encode_seconds_count") == 3
    assert h.metric("kfc_enqueue_to_stored_seconds_count") == 4


async def test_run_consumes_until_stopped(h: Harness) -> None:
    task = asyncio.create_task(h.worker().run(h.stop))
    h.enqueue(job("one"), job("two"))
    await wait_until(lambda: h.broker.committed == 2)
    h.enqueue(job("three"))
    await wait_until(lambda: h.broker.committed == 3)

    h.stop.set()
    await asyncio.wait_for(task, 1.0)

    assert len(await h.lookup(job("one"), job("two"), job("three"))) == 3


async def test_duplicate_keys_in_a_batch_are_encoded_once(h: Harness) -> None:
    h.enqueue(job("same"), job("other"), job("same"), job("same"))

    await h.worker().handle(await h.poll(), h.stop)

    assert sorted(i.text for i in h.encoded) == ["other", "same"]
    assert h.broker.committed == 4
    assert (h.jobs_metric("stored"), h.jobs_metric("skipped")) == (2, 2)


async def test_already_stored_keys_are_skipped(h: Harness) -> None:
    done = job("done before")
    before = StoredVector(
        done.key,
        TEXT.name,
        TEXT.revision,
        "text",
        "done before",
        vectors.to_bytes([1] * 4, 4),
        4,
        1,
    )
    await h.store.put_many([before])
    h.enqueue(done)

    await h.worker().handle(await h.poll(), h.stop)

    assert h.encoding.calls == []
    assert (await h.lookup(done))[done.key] == before  # not rewritten
    assert h.broker.committed == 1
    assert h.jobs_metric("skipped") == 1


async def test_redelivered_batch_is_harmless(h: Harness) -> None:
    h.enqueue(job("a"), job("b"))
    await h.worker().handle(await h.poll(), h.stop)
    h.enqueue(job("a"), job("b"))  # e.g. EmbArk queued them again after its window

    await h.worker().handle(await h.poll(), h.stop)

    assert len(h.encoding.calls) == 1
    assert h.broker.committed == 4


# --- permanent failures ---


async def test_item_failure_is_recorded_dead_lettered_and_committed(h: Harness) -> None:
    ok, bad, ok2 = job("fine"), job("this will FAIL"), job("also fine")
    h.enqueue(ok, bad, ok2)

    await h.worker().handle(await h.poll(), h.stop)

    found = await h.lookup(ok, bad, ok2)
    assert isinstance(found[ok.key], StoredVector)
    assert isinstance(found[ok2.key], StoredVector)
    record = found[bad.key]
    assert isinstance(record, FailureRecord)
    assert (record.key, record.model, record.revision, record.reason) == (
        bad.key,
        TEXT.name,
        TEXT.revision,
        "fake_failure",
    )
    assert record.message == "cannot encode 'this will FAIL'"
    [letter] = h.broker.dead_letters
    assert letter.job == bad
    assert (letter.reason, letter.message) == ("fake_failure", record.message)
    assert letter.failed_at_ms > 0
    assert h.broker.committed == 3
    assert (h.jobs_metric("stored"), h.jobs_metric("failed")) == (2, 1)
    assert h.metric("kfc_dead_letters_total", reason="fake_failure") == 1


@pytest.mark.parametrize(
    ("bad_job", "reason"),
    [
        (job("old", revision="rev-t0"), "revision_retired"),
        (
            jobs_pb2.EmbedJob(
                key="k", model="bert", revision="r", input=inputs_pb2.Input(text="x")
            ),
            "unknown_model",
        ),
    ],
    ids=["retired-revision", "unknown-model"],
)
async def test_jobs_not_served_by_the_catalog_are_dead_lettered(
    h: Harness, bad_job: jobs_pb2.EmbedJob, reason: str
) -> None:
    good = job("current")
    h.enqueue(bad_job, good)

    await h.worker().handle(await h.poll(), h.stop)

    [letter] = h.broker.dead_letters
    assert letter.job == bad_job
    assert letter.reason == reason
    assert letter.message == f"{bad_job.model}@{bad_job.revision} is not served"
    # Never encoded with another revision, never stored under its key.
    assert [i.text for i in h.encoded] == ["current"]
    assert set(await h.lookup(bad_job, good)) == {good.key}
    assert h.broker.committed == 2
    assert (h.jobs_metric("stored"), h.jobs_metric("failed")) == (1, 1)


class RejectingEncoding:
    """Retina refuses the whole call (it serves another revision)."""

    def __init__(self) -> None:
        self.calls = 0

    async def embed(self, request: retina_pb2.EmbedRequest) -> retina_pb2.EmbedResponse:
        self.calls += 1
        raise PreconditionFailed(f"retina serves {request.model}@rev-other")


async def test_chunk_rejected_by_retina_is_dead_lettered(h: Harness) -> None:
    h.encoding = RejectingEncoding()  # type: ignore[assignment]
    jobs = [job("a"), job("b"), job("c")]
    h.enqueue(*jobs)

    await h.worker().handle(await h.poll(), h.stop)

    assert [(letter.job.key, letter.reason) for letter in h.broker.dead_letters] == [
        (j.key, "rejected_by_retina") for j in jobs
    ]
    assert h.broker.dead_letters[0].message == "retina serves minilm@rev-other"
    assert h.broker.committed == 3
    assert h.jobs_metric("failed") == 3


# --- transient failures ---


async def test_retina_down_retries_without_committing_then_succeeds(h: Harness) -> None:
    jobs = [job("a"), job("b")]
    h.enqueue(*jobs)
    h.encoding.unavailable = True
    deliveries = await h.poll()

    task = asyncio.create_task(h.worker().handle(deliveries, h.stop))
    await wait_until(lambda: len(h.encoding.calls) >= 3)

    assert not task.done()
    assert h.broker.committed == 0
    assert dict(await h.lookup(*jobs)) == {}
    assert list(h.broker.dead_letters) == []
    h.encoding.unavailable = False
    await asyncio.wait_for(task, 2.0)

    assert h.broker.committed == 2
    assert len(await h.lookup(*jobs)) == 2
    assert h.metric("kfc_transient_errors_total", cause="encode") >= 2
    assert h.jobs_metric("stored") == 2  # counted once, for the batch that succeeded


class FlakyWrites:
    """SQLite whose first ``failures`` put_many calls fail as if the archive were down."""

    def __init__(self, inner: SqliteStore, failures: int) -> None:
        self.inner, self.failures = inner, failures

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Lookup]:
        return await self.inner.get_many(keys)

    async def put_many(self, rows: Sequence[StoredVector]) -> None:
        if self.failures:
            self.failures -= 1
            raise BackendUnavailable("write timed out")
        await self.inner.put_many(rows)

    async def put_failures(self, rows: Sequence[FailureRecord]) -> None:
        await self.inner.put_failures(rows)


async def test_store_down_retries_the_batch(h: Harness, sqlite: SqliteStore) -> None:
    h.enqueue(job("a"))
    worker = Worker(
        consumer=h.consumer,
        store=FlakyWrites(sqlite, failures=2),  # type: ignore[arg-type]
        encoding=h.encoding,
        catalog=CATALOG,
        config=CONFIG,
        metrics=h.metrics,
    )

    await asyncio.wait_for(worker.handle(await h.poll(), h.stop), 2.0)

    assert h.broker.committed == 1
    assert len(await h.lookup(job("a"))) == 1
    assert h.metric("kfc_transient_errors_total", cause="store_write") == 2


async def test_stop_during_backoff_leaves_the_batch_for_redelivery(h: Harness) -> None:
    jobs = [job("a"), job("b")]
    h.enqueue(*jobs)
    h.encoding.unavailable = True
    worker = h.worker(backoff=Backoff(initial_s=30.0, max_s=30.0))
    task = asyncio.create_task(worker.run(h.stop))
    await wait_until(lambda: len(h.encoding.calls) == 1)

    h.stop.set()
    await asyncio.wait_for(task, 1.0)

    assert h.broker.committed == 0
    await h.consumer.close()
    successor = LocalJobConsumer(h.broker)
    redelivered = await successor.poll_batch(100, 0.01)
    assert [d.job for d in redelivered] == jobs

    h.encoding.unavailable = False
    h.consumer = successor
    await h.worker().handle(redelivered, asyncio.Event())
    assert h.broker.committed == 2


async def test_outcome_counts_add_up(h: Harness) -> None:
    h.enqueue(job("x"), job("x"), job("FAIL"), job("old", revision="rev-t0"), job("y"))

    outcome = await h.worker().process(await h.poll())

    assert (outcome.polled, outcome.skipped, outcome.stored, outcome.failed) == (5, 1, 2, 2)
    assert outcome.polled == outcome.skipped + outcome.stored + outcome.failed


# --- item faults that may pass: retried alone, never holding back the rest ---


async def test_transient_item_is_retried_alone_and_stored(h: Harness) -> None:
    h.encoding.flaky_attempts = 2  # the image host answers 503 twice, then recovers
    flaky, ok = job("FLAKY title"), job("fine")
    h.enqueue(flaky, ok)
    worker = h.worker()

    await worker.handle(await h.poll(), h.stop)
    # The neighbour is stored at once; the flaky item holds back only the commit position.
    assert isinstance((await h.lookup(ok))[ok.key], StoredVector)
    assert h.broker.committed == 0

    await wait_until(lambda: h.broker.committed == 2)
    assert isinstance((await h.lookup(flaky))[flaky.key], StoredVector)
    assert h.encoding.tries["FLAKY title"] == 3
    assert list(h.broker.dead_letters) == []
    assert h.metric("kfc_item_retries_total", reason="http_503") == 1


async def test_transient_item_ends_failed_after_bounded_attempts(h: Harness) -> None:
    flaky = job("FLAKY forever")
    h.enqueue(flaky)
    task = asyncio.create_task(h.worker().run(h.stop))
    # The loop is not held: later jobs are stored while the item is still being retried.
    h.enqueue(job("later"))
    await wait_until(lambda: h.broker.committed == 2)
    h.stop.set()
    await asyncio.wait_for(task, 2.0)

    record = (await h.lookup(flaky))[flaky.key]
    assert isinstance(record, FailureRecord)
    assert record.reason == "http_503 after 3 attempts"  # item_retry.attempts, all told
    [letter] = h.broker.dead_letters
    assert (letter.job, letter.reason) == (flaky, "http_503 after 3 attempts")
    assert h.metric("kfc_dead_letters_total", reason="http_503") == 1
    assert isinstance((await h.lookup(job("later")))[job("later").key], StoredVector)


async def test_stop_during_item_retry_leaves_it_uncommitted(h: Harness) -> None:
    flaky, ok = job("FLAKY"), job("ok")
    h.enqueue(flaky, ok)
    worker = h.worker(item_retry=Backoff(initial_s=30.0, max_s=30.0, attempts=5))
    task = asyncio.create_task(worker.run(h.stop))
    await wait_until(lambda: h.encoding.tries.get("FLAKY") == 1)
    await wait_until(lambda: "ok" in h.encoding.tries)

    h.stop.set()
    await asyncio.wait_for(task, 2.0)

    assert h.broker.committed == 0  # the retried item comes back to whoever consumes next
    assert isinstance((await h.lookup(ok))[ok.key], StoredVector)


async def test_retry_capacity_full_fails_the_item_at_once(h: Harness) -> None:
    h.enqueue(job("FLAKY a"), job("FLAKY b"))

    await h.worker(max_retrying=1).handle(await h.poll(), h.stop)

    letters = list(h.broker.dead_letters)
    assert [letter.reason for letter in letters] == ["http_503"]
    await wait_until(lambda: h.broker.committed == 2)


# --- nothing in a message is trusted ---


async def test_job_whose_key_does_not_match_its_input_is_dead_lettered(h: Harness) -> None:
    forged = job("cheap shoes")
    forged.input.text = "expensive watch"  # same key, another input
    good = job("good")
    h.enqueue(forged, good)

    await h.worker().handle(await h.poll(), h.stop)

    [letter] = h.broker.dead_letters
    assert (letter.job, letter.reason) == (forged, "key_mismatch")
    assert [i.text for i in h.encoded] == ["good"]  # never encoded
    assert set(await h.lookup(forged, good)) == {good.key}  # never stored
    assert h.broker.committed == 2


async def test_job_of_the_wrong_kind_costs_only_itself(h: Harness) -> None:
    misrouted = job("https://e.com/a.png", IMAGE)
    misrouted.model, misrouted.revision = TEXT.name, TEXT.revision
    h.enqueue(job("a"), misrouted, job("b"))

    await h.worker().handle(await h.poll(), h.stop)

    assert [letter.reason for letter in h.broker.dead_letters] == ["wrong_kind"]
    assert len(await h.lookup(job("a"), job("b"))) == 2
    assert h.broker.committed == 3


class NonFinite:
    """Answers NaN for inputs containing "nan"."""

    async def embed(self, request: retina_pb2.EmbedRequest) -> retina_pb2.EmbedResponse:
        def one(item: inputs_pb2.Input) -> retina_pb2.EmbedResult:
            value = float("nan") if "nan" in item.text else 1.0
            return retina_pb2.EmbedResult(vector=struct.pack("<4f", value, 0, 0, 0))

        return retina_pb2.EmbedResponse(results=[one(i) for i in request.inputs])


async def test_non_finite_vectors_are_refused_before_any_write(h: Harness) -> None:
    h.encoding = NonFinite()  # type: ignore[assignment]
    h.enqueue(job("nan please"), job("fine"))

    await h.worker().handle(await h.poll(), h.stop)

    found = await h.lookup(job("nan please"), job("fine"))
    record = found[job("nan please").key]
    assert isinstance(record, FailureRecord)
    assert record.reason == "bad_vector"
    assert isinstance(found[job("fine").key], StoredVector)
    assert [letter.reason for letter in h.broker.dead_letters] == ["bad_vector"]


class FailsOnPoison:
    """Retina fails the whole call (INTERNAL) whenever it holds a "poison" input."""

    def __init__(self, inner: FakeEncoding) -> None:
        self.inner = inner

    async def embed(self, request: retina_pb2.EmbedRequest) -> retina_pb2.EmbedResponse:
        if any("poison" in i.text for i in request.inputs):
            raise EncoderFailed("retina: INTERNAL: internal error")
        return await self.inner.embed(request)


async def test_a_call_failing_for_one_input_is_split_item_by_item(h: Harness) -> None:
    h.encoding = FailsOnPoison(FakeEncoding(dim=4))  # type: ignore[assignment]
    poison, ok = job("poison pill"), job("neighbour")  # encode_batch=2: one call
    h.enqueue(poison, ok)

    await h.worker().handle(await h.poll(), h.stop)

    assert isinstance((await h.lookup(ok))[ok.key], StoredVector)
    await wait_until(lambda: h.broker.committed == 2)
    record = (await h.lookup(poison))[poison.key]
    assert isinstance(record, FailureRecord)
    assert record.reason == "encoder_failed after 3 attempts"


class CorruptRow:
    """SQLite whose read of one key fails for good (a corrupt row): not a backend outage."""

    def __init__(self, inner: SqliteStore, bad_key: str) -> None:
        self.inner, self.bad_key = inner, bad_key

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Lookup]:
        if self.bad_key in keys:
            raise vectors.DimensionMismatch("stored vector has 3 bytes")
        return await self.inner.get_many(keys)

    async def put_many(self, rows: Sequence[StoredVector]) -> None:
        await self.inner.put_many(rows)

    async def put_failures(self, rows: Sequence[FailureRecord]) -> None:
        await self.inner.put_failures(rows)


async def test_a_job_that_cannot_be_processed_is_dead_lettered_not_retried_forever(
    h: Harness, sqlite: SqliteStore
) -> None:
    bad, ok = job("corrupt"), job("ok")
    h.enqueue(bad, ok)
    worker = Worker(
        consumer=h.consumer,
        store=CorruptRow(sqlite, bad.key),  # type: ignore[arg-type]
        encoding=h.encoding,
        catalog=CATALOG,
        config=CONFIG,
        metrics=h.metrics,
    )

    await asyncio.wait_for(worker.handle(await h.poll(), h.stop), 2.0)

    [letter] = h.broker.dead_letters
    assert (letter.job, letter.reason) == (bad, "unprocessable")
    assert isinstance((await h.lookup(ok))[ok.key], StoredVector)
    assert h.broker.committed == 2


class BrokenPolls:
    """A consumer whose first polls fail in unexpected ways."""

    def __init__(self, inner: LocalJobConsumer, failures: list[Exception]) -> None:
        self.inner, self.failures = inner, failures

    async def poll_batch(self, max_items: int, timeout_s: float) -> Sequence[Delivery]:
        if self.failures:
            raise self.failures.pop(0)
        return await self.inner.poll_batch(max_items, timeout_s)

    async def commit(self, deliveries: Sequence[Delivery]) -> None:
        await self.inner.commit(deliveries)

    async def dead_letter(self, letter: jobs_pb2.DeadLetter) -> None:
        await self.inner.dead_letter(letter)


async def test_the_loop_survives_poll_failures_and_says_why_meanwhile(h: Harness) -> None:
    consumer = BrokenPolls(
        h.consumer, [RuntimeError("librdkafka hiccup"), BackendUnavailable("kafka down")] * 3
    )
    worker = Worker(
        consumer=consumer,  # type: ignore[arg-type]
        store=h.store,
        encoding=h.encoding,
        catalog=CATALOG,
        config=CONFIG,
        metrics=h.metrics,
    )
    problems: list[str | None] = []
    task = asyncio.create_task(worker.run(h.stop))
    h.enqueue(job("after the storm"))
    while h.broker.committed < 1:
        problems.append(worker.problem)
        await asyncio.sleep(0.001)
    h.stop.set()
    await asyncio.wait_for(task, 2.0)

    assert any(p is not None and "polling the job queue" in p for p in problems)
    assert worker.problem is None
    assert h.metric("kfc_transient_errors_total", cause="poll") == 6


class SlowOn:
    """Inputs containing "tarpit" take ``delay_s`` to encode (an image host that trickles)."""

    def __init__(self, inner: FakeEncoding, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    async def embed(self, request: retina_pb2.EmbedRequest) -> retina_pb2.EmbedResponse:
        if any("tarpit" in i.text for i in request.inputs):
            await asyncio.sleep(self.delay_s)
        return await self.inner.embed(request)


async def test_a_slow_batch_does_not_delay_the_next_one(h: Harness) -> None:
    h.encoding = SlowOn(FakeEncoding(dim=4), delay_s=3.0)  # type: ignore[assignment]
    slow, fast = job("tarpit image"), job("asked afterwards")
    task = asyncio.create_task(h.worker().run(h.stop))
    h.enqueue(slow)
    await asyncio.sleep(0.1)  # the slow job's batch is being encoded
    h.enqueue(fast)
    started = time.monotonic()
    while fast.key not in await h.lookup(fast):
        assert time.monotonic() - started < 1.0, "the next batch waited for the slow one"
        await asyncio.sleep(0.01)
    # Its offset is after the slow one's: the committed position waits, nothing is lost.
    assert h.broker.committed == 0
    await wait_until(lambda: h.broker.committed == 2)
    h.stop.set()
    await asyncio.wait_for(task, 2.0)


async def test_a_forged_job_sharing_a_good_jobs_key_is_committed_too(h: Harness) -> None:
    good = job("genuine")
    forged = job("genuine")
    forged.input.text = "something else"
    h.enqueue(good, forged)

    await h.worker().handle(await h.poll(), h.stop)

    assert [letter.reason for letter in h.broker.dead_letters] == ["key_mismatch"]
    assert isinstance((await h.lookup(good))[good.key], StoredVector)
    assert h.broker.committed == 2  # the forged offset does not hold the partition back
