"""The EmbArk read path, independent of gRPC: look inputs up, answer hits, answer misses with
the model's OOV vector and queue them (or, with a deadline, encode them through Retina).

The hit path is `get_many` down to `_answer`: canonicalise, key, one batched store read, and
bytes copied straight from the store row into the response. No encoder is ever loaded here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from embark.catalog import Catalog, ModelSpec
from embark.encoding import Encoding
from embark.errors import BackendUnavailable, EmbarkError, InvalidInput
from embark.keys import CacheKey, InputKind, canonical_input, derive_key
from embark.metrics import EmbarkMetrics
from embark.queue.base import Enqueued, JobQueue
from embark.store.base import EmbeddingStore, FailureRecord, Lookup, StoredVector
from embark_api.v1 import embark_pb2, inputs_pb2, jobs_pb2, retina_pb2

log = logging.getLogger(__name__)

Status = embark_pb2.Status


@dataclass(frozen=True, slots=True)
class Limits:
    """Request validation and timing limits (built from EmbarkSettings)."""

    max_batch: int
    max_text_chars: int
    max_url_chars: int
    lookup_timeout_s: float  # the store read's share of a request's time
    pending_window_s: float  # a queued key is not queued again within this window
    pending_window_size: int  # bound on the de-duplication window's memory


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

    async def get_many(
        self, model: str, inputs: Sequence[inputs_pb2.Input], wait_ms: int = 0
    ) -> list[embark_pb2.Embedding]:
        """One embedding per input, in order. Raises only for a bad request (unknown model,
        invalid input); backend trouble becomes a per-answer status, never an exception."""
        spec = self.catalog.require(model)
        if not inputs:
            raise InvalidInput("no inputs given")
        if len(inputs) > self._limits.max_batch:
            raise InvalidInput(f"{len(inputs)} inputs; at most {self._limits.max_batch} a call")
        keys = [self._key(spec, i, item) for i, item in enumerate(inputs)]
        found, store_ok = await self._lookup(keys)
        answers = [self._answer(spec, key, found.get(key.digest), store_ok) for key in keys]
        # UNAVAILABLE (the store did not answer) may be a miss too: queue it like one, as its
        # answer says; KFC skips it if the archive had it after all.
        misses = [
            (i, key)
            for i, key in enumerate(keys)
            if answers[i].status in (Status.PENDING, Status.UNAVAILABLE)
        ]
        if misses and wait_ms > 0 and self._encoding is not None and store_ok:
            await self._read_through(spec, misses, answers, wait_ms / 1000)
        for i, key in misses:
            status = answers[i].status
            if status not in (Status.PENDING, Status.UNAVAILABLE):
                continue  # answered by read-through
            if not self._enqueue(spec, key) and status == Status.PENDING:
                answers[i].status = Status.DROPPED
                answers[i].reason = "the job queue is full; nothing was queued, ask again later"
        for answer in answers:
            self._metrics.answers.labels(model, Status.Name(answer.status)).inc()
        return answers

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
            canonical = canonical_input(kind, raw)
        except EmbarkError as exc:
            raise InvalidInput(f"input {index}: {exc.message}") from None
        if not canonical:
            raise InvalidInput(f"input {index}: empty {kind}")
        return derive_key(spec.name, spec.revision, kind, canonical)

    async def _lookup(self, keys: Sequence[CacheKey]) -> tuple[Mapping[str, Lookup], bool]:
        started = time.perf_counter()
        try:
            digests = list(dict.fromkeys(k.digest for k in keys))
            found = await asyncio.wait_for(
                self._store.get_many(digests), self._limits.lookup_timeout_s
            )
        except (BackendUnavailable, TimeoutError) as exc:
            # Degrade, don't fail: the caller still gets an OOV answer within its deadline.
            self._metrics.store_errors.inc()
            log.warning("store lookup failed: %s", exc or "timed out")
            return {}, False
        finally:
            self._metrics.lookup_seconds.observe(time.perf_counter() - started)
        return found, True

    @staticmethod
    def _answer(
        spec: ModelSpec, key: CacheKey, found: Lookup | None, store_ok: bool
    ) -> embark_pb2.Embedding:
        answer = embark_pb2.Embedding(
            model=spec.name, revision=spec.revision, dim=spec.dim, key=key.digest
        )
        if isinstance(found, StoredVector):
            answer.status = Status.HIT
            answer.vector = found.vector
            return answer
        answer.vector = spec.oov
        if isinstance(found, FailureRecord):
            answer.status = Status.FAILED
            answer.reason = f"{found.reason}: {found.message}"
        elif store_ok:
            answer.status = Status.PENDING
        else:
            answer.status = Status.UNAVAILABLE
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
            input=_input(key.kind, key.canonical),
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
        unique = list({key.digest: key for _, key in misses}.values())
        request = retina_pb2.EmbedRequest(
            model=spec.name,
            revision=spec.revision,
            inputs=[_input(key.kind, key.canonical) for key in unique],
        )
        started = time.perf_counter()
        try:
            response = await asyncio.wait_for(self._encoding.embed(request), timeout_s)
        except (EmbarkError, TimeoutError) as exc:
            log.info("read-through for %s gave up: %s", spec.name, exc or "deadline passed")
            return
        finally:
            self._metrics.read_through_seconds.observe(time.perf_counter() - started)
        now = int(time.time() * 1000)
        vectors: dict[str, StoredVector] = {}
        failures: dict[str, FailureRecord] = {}
        if len(response.results) != len(unique):
            log.error(
                "retina answered %d results for %d inputs", len(response.results), len(unique)
            )
            return
        for key, result in zip(unique, response.results, strict=True):
            if result.WhichOneof("result") == "vector" and len(result.vector) != 4 * spec.dim:
                log.error(
                    "retina vector of %d bytes for %s (dim %d)",
                    len(result.vector),
                    spec.name,
                    spec.dim,
                )
            elif result.WhichOneof("result") == "vector":
                vectors[key.digest] = StoredVector(
                    key.digest,
                    spec.name,
                    spec.revision,
                    key.kind,
                    key.canonical,
                    result.vector,
                    spec.dim,
                    now,
                )
            else:
                failures[key.digest] = FailureRecord(
                    key.digest,
                    spec.name,
                    spec.revision,
                    result.error.reason,
                    result.error.message,
                    now,
                )
        written = True
        try:
            await self._store.put_many(list(vectors.values()))
            await self._store.put_failures(list(failures.values()))
        except EmbarkError as exc:
            log.warning("read-through write-back failed: %s", exc)
            written = False
        for i, key in misses:
            if (row := vectors.get(key.digest)) is not None:
                answers[i].status, answers[i].vector = Status.HIT, row.vector
                if not written:
                    # The vector is still a correct answer; queue it so KFC stores it.
                    self._enqueue(spec, key)
            elif (failure := failures.get(key.digest)) is not None:
                answers[i].status = Status.FAILED
                answers[i].reason = f"{failure.reason}: {failure.message}"


def _input(kind: InputKind, canonical: str) -> inputs_pb2.Input:
    return (
        inputs_pb2.Input(text=canonical)
        if kind == "text"
        else inputs_pb2.Input(image_url=canonical)
    )
