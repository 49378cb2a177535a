"""The KFC loop: poll a batch of jobs, check them, keep what still needs encoding, encode per
model through Retina, write vectors (and failure records), and only then commit.

Two kinds of fault, never confused (DESIGN.md, "Delivery and failure semantics"):

- **Backend faults** (Retina, the store or the queue unavailable) stop everyone equally: the
  SAME batch is retried with jittered exponential backoff and nothing is committed; a stop
  request during backoff leaves it uncommitted, to be redelivered to whoever consumes next.
- **Item faults** belong to one input. Permanent ones (a 404, not an image, a key that does not
  match its input) become a failure record plus a dead letter at once and are committed.
  Transient ones (the image host answered 503, or the model failed on the item alone) are
  retried for that item only, in a task of their own, a bounded number of times over a bounded
  time; then they are recorded the same way, with the attempts in the reason
  (``http_503 after 5 attempts``). Meanwhile the loop goes on: an item in retry holds back its
  partition's committed position (``embark.queue.offsets``), never its processing.

Nothing in a message is trusted: the key is derived again from (model, revision, kind,
canonical input) and a job whose key does not match is dead-lettered, never stored; vectors are
checked for size and finiteness before any write (``embark.encoding.to_rows``). A batch that
fails for a reason that is not a backend fault is processed again job by job, so the one job
that cannot be processed is dead-lettered and the others go on. The loop itself never exits on
an error: it backs off, says why in ``problem`` (readiness reads it), and carries on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import TypeVar

from embark.catalog import Catalog, ModelSpec
from embark.encoding import EncodeItem, Encoding, Rows, to_rows
from embark.errors import (
    BackendUnavailable,
    EmbarkError,
    EncoderFailed,
    InvalidInput,
    PreconditionFailed,
    UnknownModel,
)
from embark.keys import InputKind, derive_key
from embark.queue.base import Delivery, JobConsumer
from embark.retry import Backoff, Stopping
from embark.store.base import EmbeddingStore, FailureRecord
from embark_api.errors import ServiceError
from embark_api.v1 import jobs_pb2, retina_pb2
from kfc.metrics import KfcMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BatchConfig:
    max_batch: int  # jobs polled at once
    poll_timeout_s: float  # wait for the first job of a batch
    encode_batch: int  # inputs per Retina call
    encode_concurrency: int  # Retina calls in flight at once, across batches
    max_batches: int  # polled batches worked on at once
    backoff: Backoff  # a batch (or a poll) during a backend fault: until it passes or we stop
    item_retry: Backoff  # one item whose fault may pass: bounded attempts and time
    max_retrying: int  # items in retry at once; beyond it a transient fault is final at once


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    polled: int
    skipped: int  # already stored, or duplicates within the batch
    stored: int
    failed: int  # dead-lettered: failed per item, or not encodable by this deployment
    retrying: int = 0  # handed to a per-item retry (committed when it ends)


class _StillFailing(ServiceError):
    """An item's fault that may pass, raised to drive its retry loop."""

    retriable = True

    def __init__(self, failure: FailureRecord) -> None:
        super().__init__(f"{failure.reason}: {failure.message}")
        self.failure = failure


class Worker:
    def __init__(
        self,
        *,
        consumer: JobConsumer,
        store: EmbeddingStore,
        encoding: Encoding,
        catalog: Catalog,
        config: BatchConfig,
        metrics: KfcMetrics,
    ) -> None:
        self._consumer = consumer
        self._store = store
        self._encoding = encoding
        self._catalog = catalog
        self._config = config
        self._metrics = metrics
        # Key -> the task retrying it, and the deliveries it commits when it ends.
        self._retrying: dict[str, tuple[asyncio.Task[None], list[Delivery]]] = {}
        self._stop = asyncio.Event()
        self._encode_slots = asyncio.Semaphore(config.encode_concurrency)
        # The step in progress, for the cause label of kfc_transient_errors.
        self._step = "poll"
        #: Why the loop is not making progress right now (None: it is). Readiness reads it.
        self.problem: str | None = None
        metrics.retrying.set_function(lambda: len(self._retrying))

    def reload_catalog(self, catalog: Catalog) -> None:
        """Take jobs of ``catalog``'s models and revisions from the next batch on (SIGHUP)."""
        self._catalog = catalog

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set. Up to ``max_batches`` polled batches are worked on at
        once, so a batch waiting on a slow input (a tarpit holds its fetch for Retina's whole
        fetch timeout) never delays the next one; commits stay correct because a partition's
        position only passes deliveries that are done. Batches in hand are finished (written
        and committed) before returning, unless in backoff; items in retry are left
        uncommitted (they are redelivered). Never returns early on an error."""
        self._stop = stop
        slots = asyncio.Semaphore(self._config.max_batches)
        working: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                await slots.acquire()
                try:
                    self._step = "poll"
                    deliveries = await self._until_done("polling the job queue", self._poll)
                except Stopping:
                    slots.release()
                    break
                if not deliveries:
                    slots.release()
                    continue
                self._metrics.observe_poll(deliveries)
                task = asyncio.create_task(self._handle_in_slot(deliveries, stop, slots))
                working.add(task)
                task.add_done_callback(working.discard)
            await asyncio.gather(*working)
        finally:
            for task in working:
                task.cancel()
            await asyncio.gather(*working, return_exceptions=True)
            await self._abandon_retries()

    async def _handle_in_slot(
        self, deliveries: Sequence[Delivery], stop: asyncio.Event, slots: asyncio.Semaphore
    ) -> None:
        try:
            await self.handle(deliveries, stop)
        finally:
            slots.release()

    async def _poll(self) -> Sequence[Delivery]:
        """A batch; any failure to get one is the queue's fault (retried), never the loop's end:
        an unexpected error is logged with its traceback and retried like an outage."""
        try:
            return await self._consumer.poll_batch(
                self._config.max_batch, self._config.poll_timeout_s
            )
        except EmbarkError as exc:
            if exc.retriable:
                raise
            raise BackendUnavailable(f"the job queue failed: {exc.message}") from exc
        except Exception as exc:
            log.exception("polling the job queue failed unexpectedly")
            raise BackendUnavailable(f"the job queue failed: {type(exc).__name__}") from exc

    async def handle(self, deliveries: Sequence[Delivery], stop: asyncio.Event) -> None:
        """Process one polled batch until it is committed or ``stop`` interrupts a backoff. A
        failure that is not a backend fault sends the batch through job by job instead."""
        self._stop = stop
        try:
            outcome = await self._until_done("processing a batch", lambda: self.process(deliveries))
        except Stopping:
            return  # leave the batch uncommitted for redelivery
        except Exception:
            log.exception("a batch of %d jobs failed; processing it job by job", len(deliveries))
            await self._isolate(deliveries)
            return
        self._metrics.observe(outcome)

    async def process(self, deliveries: Sequence[Delivery]) -> BatchOutcome:
        """Encode, store, dead-letter and commit what this batch needs; raise a retriable
        EmbarkError (nothing committed) to have it retried as a whole."""
        now = _now_ms()
        letters: list[jobs_pb2.DeadLetter] = []
        refused: list[Delivery] = []
        by_key: dict[str, list[Delivery]] = {}
        items: dict[str, tuple[ModelSpec, EncodeItem]] = {}
        for delivery in deliveries:
            checked = self._check(delivery.job)
            if isinstance(checked, jobs_pb2.DeadLetter):
                letters.append(checked)
                refused.append(delivery)
                continue
            by_key.setdefault(delivery.job.key, []).append(delivery)
            items[delivery.job.key] = checked
        jobs = {key: ds[0].job for key, ds in by_key.items()}
        stored = await self._timed("store_read", self._store.get_many(list(items)))
        todo = [items[key] for key in items if key not in stored]
        rows = await self._timed("encode", self._encode_all(todo, now))
        retrying = self._start_retries(rows, items, by_key)
        await self._timed("store_write", self._write(rows))
        letters.extend(_letter_for(failure, jobs[key]) for key, failure in rows.failures.items())
        await self._timed("dead_letter", self._dead_letter(letters))
        await self._timed(
            "commit",
            self._consumer.commit(
                [d for key, ds in by_key.items() if key not in retrying for d in ds] + refused
            ),
        )
        # Freshness ends now, when the vector is written and its offset committed: the batch's
        # start (``now``) would leave out the encode and the write, the larger part of it.
        stored_at = _now_ms()
        for key in rows.vectors:
            self._metrics.freshness.observe(max(0, stored_at - jobs[key].enqueued_at_ms) / 1000)
        return BatchOutcome(
            polled=len(deliveries),
            skipped=len(deliveries) - len(refused) - len(todo),
            stored=len(rows.vectors),
            failed=len(letters),
            retrying=len(retrying),
        )

    async def _timed(self, step: str, work: Awaitable[T]) -> T:
        """Await one step of a batch: named for kfc_transient_errors' cause, timed for
        kfc_step_seconds (where a miss's time goes between the poll and the commit)."""
        self._step = step
        started = time.perf_counter()
        try:
            return await work
        finally:
            self._metrics.step_seconds.labels(step).observe(time.perf_counter() - started)

    async def _write(self, rows: Rows) -> None:
        await self._store.put_many(list(rows.vectors.values()))
        await self._store.put_failures(list(rows.failures.values()))

    # --- checks ---------------------------------------------------------------------------

    def _check(self, job: jobs_pb2.EmbedJob) -> tuple[ModelSpec, EncodeItem] | jobs_pb2.DeadLetter:
        """The job's model and input, or the dead letter that says why it cannot be encoded.
        The key is derived again: a vector stored under a key that does not match its input
        would be served for another input for the whole TTL."""
        now = _now_ms()
        spec = self._catalog.get(job.model)
        if spec is None or spec.revision != job.revision:
            # A job keyed for a model or revision this deployment no longer serves: encoding it
            # with another revision would store a vector under the wrong key.
            reason = "unknown_model" if spec is None else "revision_retired"
            return _letter(job, reason, f"{job.model}@{job.revision} is not served", now)
        kind: InputKind = "image" if job.input.WhichOneof("kind") == "image_url" else "text"
        if kind != spec.kind:
            return _letter(job, "wrong_kind", f"model {spec.name!r} takes {spec.kind}", now)
        # The key must be the digest of exactly the input Retina will be sent: then the vector
        # stored under it is that input's, whatever canonicalisation the EmbArk that queued it
        # ran (an older version during a rolling upgrade is fine; a forged key is not).
        raw = job.input.text or job.input.image_url
        expected = derive_key(spec.name, spec.revision, kind, raw).digest
        if expected != job.key:
            return _letter(
                job, "key_mismatch", f"the key does not match the input (expected {expected})", now
            )
        return spec, EncodeItem(job.key, kind, raw)

    # --- encoding -------------------------------------------------------------------------

    async def _encode_all(self, todo: Sequence[tuple[ModelSpec, EncodeItem]], now: int) -> Rows:
        """Every item, in Retina calls of at most ``encode_batch`` per model, a few at once
        (``encode_concurrency`` across every batch in hand): Retina tokenises and fetches the
        next call while it runs inference on this one."""
        by_model = sorted(todo, key=lambda t: t[0].name)
        chunks = [
            (spec, [item for _, item in group[i : i + self._config.encode_batch]])
            for _, g in groupby(by_model, key=lambda t: t[0].name)
            for group in [list(g)]
            for spec in [group[0][0]]
            for i in range(0, len(group), self._config.encode_batch)
        ]

        async def encode(spec: ModelSpec, chunk: list[EncodeItem]) -> Rows:
            async with self._encode_slots:
                return await self._encode(spec, chunk, now)

        return Rows.merged(await asyncio.gather(*(encode(*c) for c in chunks)))

    async def _encode(self, spec: ModelSpec, items: Sequence[EncodeItem], now: int) -> Rows:
        """One Embed call as rows. Backend faults raise (the batch backs off). A call Retina
        refuses or fails for another reason is tried again item by item, so one bad input
        never costs its neighbours; alone, the item's own verdict stands."""
        request = retina_pb2.EmbedRequest(
            model=spec.name, revision=spec.revision, inputs=[i.to_input() for i in items]
        )
        try:
            started = time.perf_counter()
            response = await self._encoding.embed(request)
            self._metrics.encode_seconds.observe(time.perf_counter() - started)
            self._metrics.encode_batch_size.observe(len(items))
            return to_rows(spec, items, response, now)
        except (UnknownModel, PreconditionFailed) as exc:
            # Retina serves another model set or revision: nothing in this call can be encoded.
            return _all_failed(spec, items, "rejected_by_retina", exc.message, now)
        except (InvalidInput, EncoderFailed) as exc:
            if len(items) > 1:
                parts = await asyncio.gather(*(self._encode(spec, [i], now) for i in items))
                return Rows.merged(parts)
            if isinstance(exc, InvalidInput):
                return _all_failed(spec, items, "rejected_by_retina", exc.message, now)
            rows = Rows()
            rows.transient[items[0].key] = items[0].failure(
                spec, "encoder_failed", exc.message, now
            )
            return rows

    # --- per-item retries -----------------------------------------------------------------

    def _start_retries(
        self,
        rows: Rows,
        items: dict[str, tuple[ModelSpec, EncodeItem]],
        by_key: dict[str, list[Delivery]],
    ) -> set[str]:
        """Hand each transiently failed item to a retry task of its own; the keys handed over
        are not committed with the batch. Past ``max_retrying`` the fault is final now: it
        moves to ``rows.failures``."""
        handed: set[str] = set()
        for key, failure in rows.transient.items():
            running = self._retrying.get(key)
            if running is not None:
                running[1].extend(by_key[key])  # committed when that retry ends
            elif len(self._retrying) < self._config.max_retrying:
                spec, item = items[key]
                deliveries = list(by_key[key])
                task = asyncio.create_task(self._retry(spec, item, failure, deliveries))
                self._retrying[key] = (task, deliveries)
                self._metrics.item_retries.labels(failure.reason).inc()
            else:
                rows.failures[key] = failure
                continue
            handed.add(key)
        return handed

    async def _retry(
        self, spec: ModelSpec, item: EncodeItem, first: FailureRecord, deliveries: list[Delivery]
    ) -> None:
        """Retry one item until it is stored, fails permanently, or runs out of attempts or
        time; then write what it became and commit its deliveries. Backend faults met on the
        way are waited out without using up the item's attempts."""
        attempts = 0
        try:
            try:
                async for attempt in self._config.item_retry.retrying(
                    what=f"item {item.key[:12]}", stop=self._stop
                ):
                    with attempt:
                        attempts += 1
                        # The first attempt is the batch's, already failed: the policy waits
                        # (jittered) before every retry, the first one included.
                        rows = await self._attempt(spec, item, first if attempts == 1 else None)
            except _StillFailing as still:
                last = still.failure
                rows = Rows()
                rows.failures[item.key] = item.failure(
                    spec, f"{last.reason} after {attempts} attempts", last.message, _now_ms()
                )
            job = deliveries[0].job
            await self._until_done("finishing a retried item", lambda: self._finish(rows, job))
            await self._until_done("committing", lambda: self._consumer.commit(deliveries))
        except Stopping:
            return  # uncommitted: redelivered to whoever consumes next
        except Exception:
            log.exception("retrying item %s failed; it will be redelivered", item.key)
        finally:
            self._retrying.pop(item.key, None)

    async def _attempt(
        self, spec: ModelSpec, item: EncodeItem, failed: FailureRecord | None
    ) -> Rows:
        """One more try of one item (or ``failed``, the outcome of a try already made); raises
        _StillFailing while its fault may still pass."""
        if failed is not None:
            raise _StillFailing(failed)
        rows = await self._until_done(
            "retrying an item", lambda: self._encode(spec, [item], _now_ms())
        )
        if item.key in rows.transient:
            raise _StillFailing(rows.transient[item.key])
        return rows

    async def _finish(self, rows: Rows, job: jobs_pb2.EmbedJob) -> None:
        await self._store.put_many(list(rows.vectors.values()))
        await self._store.put_failures(list(rows.failures.values()))
        await self._dead_letter([_letter_for(f, job) for f in rows.failures.values()])
        self._metrics.jobs.labels("stored" if rows.vectors else "failed").inc()

    async def _abandon_retries(self) -> None:
        tasks = [task for task, _ in self._retrying.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- isolation and backoff ------------------------------------------------------------

    async def _isolate(self, deliveries: Sequence[Delivery]) -> None:
        """A batch that failed for a reason other than a backend fault, job by job: a job that
        fails again alone is dead-lettered (``unprocessable``) and committed past."""
        for delivery in deliveries:
            try:
                await self._isolate_one(delivery)
            except Stopping:
                return

    async def _isolate_one(self, delivery: Delivery) -> None:
        try:
            await self._until_done("processing a job", lambda: self.process([delivery]))
        except Stopping:
            raise
        except Exception as exc:
            log.exception("job %s cannot be processed; dead-lettering it", delivery.job.key)
            message = exc.message if isinstance(exc, ServiceError) else type(exc).__name__
            letter = _letter(delivery.job, "unprocessable", message, _now_ms())
            await self._until_done("dead-lettering", lambda: self._dead_letter([letter]))
            await self._until_done("committing", lambda: self._consumer.commit([delivery]))

    async def _until_done(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """``step`` until it succeeds, backing off (jittered, until stopped) on backend faults,
        with ``problem`` saying why meanwhile. Other errors are raised to the caller."""
        async for attempt in self._config.backoff.retrying(what=what, stop=self._stop):
            with attempt:
                try:
                    result = await step()
                except EmbarkError as exc:
                    if exc.retriable:
                        self.problem = f"{what}: {exc.message}"
                        self._metrics.transient_errors.labels(self._step).inc()
                    raise
                self.problem = None
                return result
        raise AssertionError("unreachable: the retrying loop returns or raises")

    async def _dead_letter(self, letters: Sequence[jobs_pb2.DeadLetter]) -> None:
        for letter in letters:
            await self._consumer.dead_letter(letter)
            self._metrics.dead_letters.labels(letter.reason.split(" ", 1)[0]).inc()


def _all_failed(
    spec: ModelSpec, items: Sequence[EncodeItem], reason: str, message: str, now: int
) -> Rows:
    rows = Rows()
    for item in items:
        rows.failures[item.key] = item.failure(spec, reason, message, now)
    return rows


def _now_ms() -> int:
    return int(time.time() * 1000)


def _letter(job: jobs_pb2.EmbedJob, reason: str, message: str, now: int) -> jobs_pb2.DeadLetter:
    return jobs_pb2.DeadLetter(job=job, reason=reason, message=message, failed_at_ms=now)


def _letter_for(failure: FailureRecord, job: jobs_pb2.EmbedJob) -> jobs_pb2.DeadLetter:
    return _letter(job, failure.reason, failure.message, failure.failed_at_ms)


__all__ = ["BatchConfig", "BatchOutcome", "Worker"]
