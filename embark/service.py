"""The EmbArk read path, independent of gRPC: look inputs up, answer hits, answer misses with
the model's OOV vector and queue them (or, with a deadline, encode them through Retina).

The hit path is `get_many` down to `_answer`: canonicalise, key, one batched store read, and
bytes copied straight from the store row into the response. No encoder is ever loaded here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from embark.catalog import Catalog, ModelSpec
from embark.encoding import EncodeItem, Encoding, to_input, to_rows
from embark.errors import (
    BackendUnavailable,
    DeadlineExceeded,
    EmbarkError,
    InvalidInput,
    Overloaded,
)
from embark.keys import CacheKey, InputKind, KeyDeriver
from embark.metrics import EmbarkMetrics
from embark.queue.base import Enqueued, JobQueue
from embark.store.base import EmbeddingStore, FailureRecord, Lookup, PartialLookup, StoredVector
from embark_api.v1 import embark_pb2, inputs_pb2, jobs_pb2, retina_pb2

log = logging.getLogger(__name__)

Status = embark_pb2.Status
# Plain ints: attribute lookups on the enum wrapper cost a Python call per answer.
_HIT, _PENDING, _FAILED = Status.HIT, Status.PENDING, Status.FAILED
_UNAVAILABLE = Status.UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Limits:
    """Request validation and timing limits (built from EmbarkSettings)."""

    max_batch: int
    max_text_chars: int
    max_url_chars: int
    lookup_timeout_s: float  # the store read's share of a request's time
    pending_window_s: float  # a queued key is not queued again within this window
    pending_window_size: int  # bound on the de-duplication window's memory
    max_in_flight: int = 256  # calls worked on at once; beyond it RESOURCE_EXHAUSTED


class PendingWindow:
    """Keys queued recently. A bounded LRU with expiry: a key is re-queued only after the window
    (KFC may have dropped it, e.g. a redelivered job that failed transiently many times)."""

    def __init__(self, window_s: float, max_size: int) -> None:
        self._window_s = window_s
        self._max_size = max_size
        self._until: OrderedDict[str, float] = OrderedDict()

    def should_queue(self, key: str) -> bool:
        now = time.monotonic()
        until = self._until.get(key)
        if until is not None and until > now:
            return False
        self._until[key] = now + self._window_s
        self._until.move_to_end(key)
        while len(self._until) > self._max_size:
            self._until.popitem(last=False)
        return True

    def forget(self, key: str) -> None:
        self._until.pop(key, None)


class EmbarkService:
    def __init__(
        self,
        *,
        catalog: Catalog,
        store: EmbeddingStore,
        queue: JobQueue,
        encoding: Encoding | None,
        limits: Limits,
        metrics: EmbarkMetrics,
    ) -> None:
        self.catalog = catalog
        self._store = store
        self._queue = queue
        self._encoding = encoding
        self._limits = limits
        self._metrics = metrics
        self._pending = PendingWindow(limits.pending_window_s, limits.pending_window_size)
        self._in_flight = 0
        self._derivers: dict[str, KeyDeriver] = {}
        self.reload_catalog(catalog)

    def reload_catalog(self, catalog: Catalog) -> None:
        """Serve ``catalog`` from the next call on (``embark.catalog.reload_on_sighup``). Both
        fields change with no await between them, so no call sees one without the other."""
        # Per model: the key hasher with the model's fixed fields already fed (hit path).
        derivers = {
            name: KeyDeriver(spec.name, spec.revision, spec.kind, fold_case=spec.fold_case)
            for name, spec in catalog.items()
        }
        self.catalog, self._derivers = catalog, derivers

    @property
    def read_through(self) -> bool:
        """Whether ``wait_ms`` can compute a miss now (an encoder is reachable)."""
        return self._encoding is not None

    @contextlib.contextmanager
    def admit(self, time_remaining_s: float | None) -> Iterator[None]:
        """Admission for one call: refuse work nobody waits for any more (the caller's deadline
        passed while the call was queued: DEADLINE_EXCEEDED, before any store read) and work
        beyond ``max_in_flight`` (RESOURCE_EXHAUSTED: queueing it would grow memory and latency
        without bound while callers time out anyway). Counts every refused call by reason."""
        try:
            if time_remaining_s is not None and time_remaining_s <= 0:
                raise DeadlineExceeded("the caller's deadline passed before the call was served")
            if self._in_flight >= self._limits.max_in_flight:
                raise Overloaded(
                    f"{self._in_flight} calls in progress (limit {self._limits.max_in_flight});"
                    " retry with backoff"
                )
            self._in_flight += 1
            try:
                yield
            finally:
                self._in_flight -= 1
        except EmbarkError as exc:
            self._metrics.rejected.labels(exc.code.name.lower()).inc()
            raise

    async def get_many(
        self,
        model: str,
        inputs: Sequence[inputs_pb2.Input],
        wait_ms: int = 0,
        *,
        budget_s: float | None = None,
        on_lookup: Callable[[Sequence[embark_pb2.Embedding]], None] | None = None,
    ) -> list[embark_pb2.Embedding]:
        """One embedding per input, in order. Raises only for a bad request (unknown model,
        invalid input); backend trouble becomes a per-answer status, never an exception.
        ``budget_s`` (what the caller's deadline leaves for the store read) caps the lookup
        timeout, so a degraded answer still arrives before the caller gives up. ``on_lookup``
        sees the answers as the archive gave them, before any read-through (the HTTP front
        reports which items were archive hits)."""
        spec = self.catalog.require(model)
        if not inputs:
            raise InvalidInput("no inputs given")
        if len(inputs) > self._limits.max_batch:
            raise InvalidInput(f"{len(inputs)} inputs; at most {self._limits.max_batch} a call")
        keys = [self._key(spec, i, item) for i, item in enumerate(inputs)]
        timeout_s = self._limits.lookup_timeout_s
        if budget_s is not None:
            timeout_s = max(0.001, min(timeout_s, budget_s))
        found, store_ok = await self._lookup(keys, timeout_s)
        answers: list[embark_pb2.Embedding] = []
        misses: list[tuple[int, CacheKey]] = []
        answer = self._answer
        for i, key in enumerate(keys):
            one = answer(spec, key, found.get(key.digest), store_ok)
            answers.append(one)
            # UNAVAILABLE (the store did not answer) may be a miss too: queue it like one, as
            # its answer says; KFC skips it if the archive had it after all.
            if one.status == _PENDING or one.status == _UNAVAILABLE:
                misses.append((i, key))
        if on_lookup is not None:
            on_lookup(answers)
        if misses and wait_ms > 0 and self._encoding is not None and store_ok:
            await self._read_through(spec, misses, answers, wait_ms / 1000)
        self._queue_misses(spec, misses, answers)
        self._metrics.count_answers(model, answers)
        return answers

    def _queue_misses(
        self,
        spec: ModelSpec,
        misses: Sequence[tuple[int, CacheKey]],
        answers: list[embark_pb2.Embedding],
    ) -> None:
        """Queue what is still a miss; say so in the answer when the queue drops it."""
        for i, key in misses:
            status = answers[i].status
            if status not in (_PENDING, _UNAVAILABLE):
                continue  # answered by read-through
            if self._enqueue(spec, key):
                continue
            if status == _PENDING:
                answers[i].status = Status.DROPPED
                answers[i].reason = "the job queue is full; nothing was queued, ask again later"
            else:  # UNAVAILABLE stays (the archive is the first problem), but says the drop
                answers[i].reason = (
                    "the archive did not answer in time, and the job queue is full:"
                    " nothing was queued, ask again later"
                )

    def _key(self, spec: ModelSpec, index: int, item: inputs_pb2.Input) -> CacheKey:
        which = item.WhichOneof("kind")
        kind: InputKind = "image" if which == "image_url" else "text"
        if which is None:
            raise InvalidInput(f"input {index}: set text or image_url")
        if kind != spec.kind:
            raise InvalidInput(f"input {index}: model {spec.name!r} takes {spec.kind}, not {kind}")
        raw = item.text if kind == "text" else item.image_url
        limit = self._limits.max_text_chars if kind == "text" else self._limits.max_url_chars
        if len(raw) > limit:
            raise InvalidInput(f"input {index}: {len(raw)} characters; at most {limit}")
        try:
            key = self._derivers[spec.name].key(raw)
        except EmbarkError as exc:
            raise InvalidInput(f"input {index}: {exc.message}") from None
        if key is None:
            raise InvalidInput(f"input {index}: empty {kind}")
        return key

    async def _lookup(
        self, keys: Sequence[CacheKey], timeout_s: float
    ) -> tuple[Mapping[str, Lookup], bool]:
        started = time.perf_counter()
        try:
            digests = list(dict.fromkeys(k.digest for k in keys))
            # A timer around the awaited lookup, not wait_for: wait_for wraps it in a Task that
            # runs a loop iteration later, 9.3 against 6.3 us a call on uvloop when the LRU
            # answers it all (bench/hit_micro.py).
            async with asyncio.timeout(timeout_s):
                found = await self._store.get_many(digests)
        except (BackendUnavailable, TimeoutError) as exc:
            # Degrade, don't fail: the caller still gets an OOV answer within its deadline, and
            # whatever the LRU answered (PartialLookup) is still answered as HIT.
            reason = "timeout" if isinstance(exc, TimeoutError) else "unavailable"
            self._metrics.store_errors.labels(reason).inc()
            log.warning("store lookup failed (%s): %s", reason, exc or "timed out")
            return (exc.found if isinstance(exc, PartialLookup) else {}), False
        finally:
            self._metrics.lookup_seconds.observe(time.perf_counter() - started)
        return found, True

    @staticmethod
    def _answer(
        spec: ModelSpec, key: CacheKey, found: Lookup | None, store_ok: bool
    ) -> embark_pb2.Embedding:
        if isinstance(found, StoredVector):
            # The stored bytes go into the message as they are: no decode, no copy in Python.
            return embark_pb2.Embedding(
                model=spec.name,
                revision=spec.revision,
                dim=spec.dim,
                key=key.digest,
                status=_HIT,
                vector=found.vector,
            )
        answer = embark_pb2.Embedding(
            model=spec.name, revision=spec.revision, dim=spec.dim, key=key.digest, vector=spec.oov
        )
        if isinstance(found, FailureRecord):
            answer.status = _FAILED
            answer.reason = f"{found.reason}: {found.message}"
        elif store_ok:
            answer.status = _PENDING
        else:
            answer.status = _UNAVAILABLE
            answer.reason = "the archive did not answer in time; a job was queued if possible"
        return answer

    def _enqueue(self, spec: ModelSpec, key: CacheKey) -> bool:
        """Queue a miss unless it was queued recently. False only when the queue dropped it."""
        if not self._pending.should_queue(key.digest):
            return True
        job = jobs_pb2.EmbedJob(
            key=key.digest,
            model=spec.name,
            revision=spec.revision,
            input=to_input(key.kind, key.canonical),
            enqueued_at_ms=int(time.time() * 1000),
        )
        if self._queue.enqueue(job) is Enqueued.DROPPED:
            self._pending.forget(key.digest)
            self._metrics.misses_dropped.labels(spec.name).inc()
            return False
        self._metrics.misses_enqueued.labels(spec.name).inc()
        return True

    async def _read_through(
        self,
        spec: ModelSpec,
        misses: Sequence[tuple[int, CacheKey]],
        answers: list[embark_pb2.Embedding],
        timeout_s: float,
    ) -> None:
        """Encode misses now. Within the deadline: write back and answer HIT (or FAILED). Past
        it, or if Retina fails: leave them PENDING, so they are queued like any miss."""
        assert self._encoding is not None
        unique = [
            EncodeItem(key.digest, key.kind, key.canonical)
            for key in {key.digest: key for _, key in misses}.values()
        ]
        request = retina_pb2.EmbedRequest(
            model=spec.name, revision=spec.revision, inputs=[item.to_input() for item in unique]
        )
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._encoding.embed(request)
            rows = to_rows(spec, unique, response, int(time.time() * 1000))
        except (EmbarkError, TimeoutError) as exc:
            log.info("read-through for %s gave up: %s", spec.name, exc or "deadline passed")
            return
        finally:
            self._metrics.read_through_seconds.observe(time.perf_counter() - started)
        written = True
        try:
            await self._store.put_many(list(rows.vectors.values()))
            await self._store.put_failures(list(rows.failures.values()))
        except EmbarkError as exc:
            log.warning("read-through write-back failed: %s", exc)
            written = False
        # An item whose fault may pass (rows.transient) stays PENDING and is queued: KFC
        # retries it with its own bounded policy.
        for i, key in misses:
            if (row := rows.vectors.get(key.digest)) is not None:
                answers[i].status, answers[i].vector = Status.HIT, row.vector
                if not written:
                    # The vector is still a correct answer; queue it so KFC stores it.
                    self._enqueue(spec, key)
            elif (failure := rows.failures.get(key.digest)) is not None:
                answers[i].status = Status.FAILED
                answers[i].reason = f"{failure.reason}: {failure.message}"
