"""The KFC loop: poll a batch of jobs, keep what still needs encoding, encode per model through
Retina, write vectors (and failure records), and only then commit.

Delivery semantics:
- At-least-once: offsets are committed after the store write succeeded; writes are idempotent,
  so a redelivered job is harmless.
- Transient trouble (Retina or the store unavailable) retries the SAME batch with exponential
  backoff and commits nothing; a stop request during backoff leaves it uncommitted, to be
  redelivered to whoever consumes next.
- Permanent per-item failures become a failure record plus a dead letter, and are committed:
  they never block the partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

from embark.catalog import Catalog
from embark.encoding import Encoding
from embark.errors import EmbarkError, InvalidInput, PreconditionFailed, UnknownModel
from embark.keys import InputKind
from embark.queue.base import Delivery, JobConsumer
from embark.store.base import EmbeddingStore, FailureRecord, StoredVector
from embark_api.v1 import jobs_pb2, retina_pb2
from kfc.metrics import KfcMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchConfig:
    max_batch: int  # jobs polled at once
    poll_timeout_s: float  # wait for the first job of a batch
    encode_batch: int  # inputs per Retina call
    encode_concurrency: int  # Retina calls in flight at once
    backoff_initial_s: float
    backoff_max_s: float


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    polled: int
    skipped: int  # already stored, or duplicates within the batch
    stored: int
    failed: int  # dead-lettered: failed per item, or not encodable by this deployment


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
        # The step in progress, for the cause label of kfc_transient_errors.
        self._step = "store_read"

    def reload_catalog(self, catalog: Catalog) -> None:
        """Take jobs of ``catalog``'s models and revisions from the next batch on (SIGHUP)."""
        self._catalog = catalog

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set. The batch in hand is finished (written and committed)
        before returning, unless it is stuck in transient-failure backoff."""
        while not stop.is_set():
            deliveries = await self._consumer.poll_batch(
                self._config.max_batch, self._config.poll_timeout_s
            )
            if deliveries:
                self._metrics.observe_poll(deliveries)
                await self.handle(deliveries, stop)

    async def handle(self, deliveries: Sequence[Delivery], stop: asyncio.Event) -> None:
        """Process one polled batch until it is committed or ``stop`` interrupts a backoff."""
        delay = self._config.backoff_initial_s
        while True:
            try:
                outcome = await self.process(deliveries)
                self._step = "commit"
                await self._consumer.commit(deliveries)
                self._metrics.observe(outcome)
            except EmbarkError as exc:
                if not exc.retriable:
                    raise
                self._metrics.transient_errors.labels(self._step).inc()
                log.warning("transient failure (%s), retrying in %.1fs: %s", self._step, delay, exc)
                if await _stopped_within(stop, delay):
                    return  # stopping: leave the batch uncommitted for redelivery
                delay = min(delay * 2, self._config.backoff_max_s)
            else:
                return

    async def process(self, deliveries: Sequence[Delivery]) -> BatchOutcome:
        """Encode and store what this batch needs; raise a retriable EmbarkError to retry it."""
        jobs = list({d.job.key: d.job for d in deliveries}.values())  # de-duplicate by key
        self._step = "store_read"
        stored = await self._store.get_many([j.key for j in jobs])
        todo = [j for j in jobs if j.key not in stored]
        vectors: list[StoredVector] = []
        failures: list[FailureRecord] = []
        letters: list[jobs_pb2.DeadLetter] = []
        self._step = "encode"
        by_model = sorted(todo, key=lambda j: (j.model, j.revision))
        chunks = [
            (model, revision, batch[i : i + self._config.encode_batch])
            for (model, revision), group in groupby(by_model, key=lambda j: (j.model, j.revision))
            for batch in [list(group)]
            for i in range(0, len(batch), self._config.encode_batch)
        ]
        # A few Embed calls in flight at once: Retina tokenises and fetches the next chunk
        # while it runs inference on this one, instead of idling between our round trips.
        slots = asyncio.Semaphore(self._config.encode_concurrency)

        async def encode(model: str, revision: str, chunk: list[jobs_pb2.EmbedJob]) -> None:
            async with slots:
                await self._encode(model, revision, chunk, vectors, failures, letters)

        await asyncio.gather(*(encode(*c) for c in chunks))
        self._step = "store_write"
        await self._store.put_many(vectors)
        await self._store.put_failures(failures)
        self._step = "dead_letter"
        for letter in letters:
            await self._consumer.dead_letter(letter)
            self._metrics.dead_letters.labels(letter.reason).inc()
        now_ms = int(time.time() * 1000)
        enqueued_at = {j.key: j.enqueued_at_ms for j in todo}
        for v in vectors:
            self._metrics.freshness.observe(max(0, now_ms - enqueued_at[v.key]) / 1000)
        # Every permanent failure has exactly one dead letter, including jobs that never reached
        # Retina (retired revision, rejected chunk) and so have no failure record.
        return BatchOutcome(
            len(deliveries), len(deliveries) - len(todo), len(vectors), len(letters)
        )

    async def _encode(
        self,
        model: str,
        revision: str,
        jobs: Sequence[jobs_pb2.EmbedJob],
        vectors: list[StoredVector],
        failures: list[FailureRecord],
        letters: list[jobs_pb2.DeadLetter],
    ) -> None:
        now = int(time.time() * 1000)
        spec = self._catalog.get(model)
        if spec is None or spec.revision != revision:
            # A job keyed for a model or revision this deployment no longer serves: encoding it
            # with another revision would store a vector under the wrong key. Dead-letter it.
            reason = "unknown_model" if spec is None else "revision_retired"
            message = f"{model}@{revision} is not served"
            letters.extend(_letter(job, reason, message, now) for job in jobs)
            return
        request = retina_pb2.EmbedRequest(
            model=model, revision=revision, inputs=[j.input for j in jobs]
        )
        try:
            started = time.perf_counter()
            response = await self._encoding.embed(request)
            self._metrics.encode_seconds.observe(time.perf_counter() - started)
            self._metrics.encode_batch_size.observe(len(jobs))
        except (UnknownModel, PreconditionFailed, InvalidInput) as exc:
            # Permanent for the whole chunk (Retina serves another revision, or refuses it).
            letters.extend(_letter(job, "rejected_by_retina", exc.message, now) for job in jobs)
            return
        if len(response.results) != len(jobs):
            # A Retina bug, not this input's fault; never let it crash-loop the partition.
            message = f"retina answered {len(response.results)} results for {len(jobs)} inputs"
            letters.extend(_letter(job, "bad_response", message, now) for job in jobs)
            return
        for job, result in zip(jobs, response.results, strict=True):
            kind: InputKind = "image" if job.input.WhichOneof("kind") == "image_url" else "text"
            if result.WhichOneof("result") == "vector" and len(result.vector) != 4 * spec.dim:
                message = f"vector of {len(result.vector)} bytes; {spec.name} has dim {spec.dim}"
                failures.append(FailureRecord(job.key, model, revision, "bad_vector", message, now))
                letters.append(_letter(job, "bad_vector", message, now))
            elif result.WhichOneof("result") == "vector":
                vectors.append(
                    StoredVector(
                        job.key,
                        model,
                        revision,
                        kind,
                        job.input.text or job.input.image_url,
                        result.vector,
                        spec.dim,
                        now,
                    )
                )
            else:
                failures.append(
                    FailureRecord(
                        job.key, model, revision, result.error.reason, result.error.message, now
                    )
                )
                letters.append(_letter(job, result.error.reason, result.error.message, now))


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True as soon as ``stop`` is set."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _letter(job: jobs_pb2.EmbedJob, reason: str, message: str, now: int) -> jobs_pb2.DeadLetter:
    return jobs_pb2.DeadLetter(job=job, reason=reason, message=message, failed_at_ms=now)
