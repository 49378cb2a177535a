"""The Embed call, independent of gRPC: validate, fetch, preprocess, infer, assemble.

``RetinaService.embed`` takes and returns the generated protobuf messages, so the gRPC servicer
(``retina.server``) is a thin wrapper and EmbArk / KFC can call the same method in-process
(``embark dev``) through a structural Protocol. Errors are ``retina.errors`` exceptions; the
server's guard maps them to gRPC codes, in-process callers read ``code``/``retriable``.

What fails what:

- the whole call, only when Retina itself cannot serve it: an unknown model (NOT_FOUND), a
  revision mismatch (FAILED_PRECONDITION), an empty or oversized batch (INVALID_ARGUMENT), too
  many calls in progress (RESOURCE_EXHAUSTED, retriable), the service closing.
- one slot (``ItemError``), for everything about one input: empty, too long, of the wrong kind
  for the model, a 404, not an image, too many pixels ... (permanent), and an image host that
  answers 5xx/408/429 or drops the connection (``retriable``: the caller retries that item
  alone, later; its neighbours are answered now). A preprocessing failure of any type is that
  item's too: no exception from decoding untrusted bytes ever fails the call as INTERNAL.

CPU work never runs on the event loop: preprocessing (tokenising, image decoding) runs in a
thread pool sized to the cores, inference in its own pool behind a semaphore
(``max_concurrent_inferences``), so one call's fetching and preprocessing overlap another
call's inference. Inference is micro-batched across calls (``retina.batching``): each encoder's
``MicroBatcher`` merges the prepared items of concurrent calls into runs of up to
``infer_chunk_items``, waiting at most ``batch_max_wait_ms`` for batch-mates; an item that
fails inference on its own becomes an ItemError in its slot, never a failed batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

from embark_api.v1 import inputs_pb2, retina_pb2
from retina.batching import MicroBatcher
from retina.encoders.base import Encoder, EncoderKind
from retina.errors import (
    Closing,
    InvalidRequest,
    ItemFailed,
    Overloaded,
    RevisionMismatch,
    UnknownModel,
)
from retina.metrics import RetinaMetrics
from retina.settings import RetinaSettings

logger = logging.getLogger(__name__)

AnyEncoder: TypeAlias = Encoder[Any]
# A slot on its way through the call: the encoder's prepared input (opaque here), or the
# ItemFailed that explains why this item has no vector.
_Slot: TypeAlias = object

_KIND_FIELD: dict[EncoderKind, str] = {"text": "text", "image": "image_url"}


class ImageSource(Protocol):
    """Where image bytes come from (``retina.fetch.ImageFetcher``; a fake in tests).
    ``fetch`` raises ItemFailed for any failure of that image (``retriable`` set for a
    transient one: ``FetchUnavailable``). It bounds its own concurrency (the fetcher's
    ``max_connections``), so the service starts every download of a call at once."""

    async def fetch(self, url: str) -> bytes: ...


class RetinaService:
    """Serves Embed for a fixed set of loaded encoders. Create it inside the event loop that
    will call it; ``await close()`` when done.

    ``images`` is required when any encoder is an image encoder; the caller owns it (and
    closes it), since it holds network resources whose lifetime the caller decides.
    """

    def __init__(
        self,
        encoders: Mapping[str, AnyEncoder],
        settings: RetinaSettings,
        *,
        images: ImageSource | None = None,
        metrics: RetinaMetrics | None = None,
    ) -> None:
        if images is None and any(e.kind == "image" for e in encoders.values()):
            raise ValueError("an image encoder is loaded but no image source was given")
        self._encoders = dict(encoders)
        self._settings = settings
        self._images = images
        self._metrics = metrics or RetinaMetrics()
        self._prep_pool = ThreadPoolExecutor(
            max_workers=settings.preprocess_threads, thread_name_prefix="retina-prep"
        )
        # Inference gets its own pool so a queue of preprocessing jobs never delays it, and so
        # an inference orphaned by a cancelled call still occupies its slot until it ends.
        self._infer_pool = ThreadPoolExecutor(
            max_workers=settings.max_concurrent_inferences, thread_name_prefix="retina-infer"
        )
        self._infer_slots = asyncio.Semaphore(settings.max_concurrent_inferences)
        self._batchers = {
            name: MicroBatcher(
                encoder,
                executor=self._infer_pool,
                slots=self._infer_slots,
                max_items=settings.infer_chunk_items,
                max_wait_s=settings.batch_max_wait_ms / 1000,
                on_batch=self._observer(name),
            )
            for name, encoder in self._encoders.items()
        }
        self._pending = 0
        self._closed = False

    @property
    def encoders(self) -> Mapping[str, AnyEncoder]:
        """The served encoders by model name (read-only view for health and listings)."""
        return dict(self._encoders)

    async def embed(self, request: retina_pb2.EmbedRequest) -> retina_pb2.EmbedResponse:
        """Encode ``request.inputs`` with ``request.model``: one result per input, in order."""
        if self._closed:
            raise Closing("retina is shutting down")
        encoder = self._encoder_for(request)
        raws = self._validate_inputs(request, encoder)
        if self._pending >= self._settings.max_pending_calls:
            raise Overloaded(
                f"{self._pending} Embed calls in progress (limit "
                f"{self._settings.max_pending_calls}); retry with backoff"
            )
        self._pending += 1
        started = time.perf_counter()
        try:
            if encoder.kind == "image":
                slots = await self._prepare_images(encoder, raws)
            else:
                slots = await self._prepare_texts(encoder, raws)
            vectors = await self._infer(encoder.name, slots)
        finally:
            self._pending -= 1
        self._metrics.embed_seconds.labels(encoder.name).observe(time.perf_counter() - started)
        self._metrics.batch_size.labels(encoder.name).observe(len(slots))
        self._metrics.items.labels(encoder.name, "vector").inc(len(vectors))
        if len(vectors) < len(slots):
            self._metrics.items.labels(encoder.name, "error").inc(len(slots) - len(vectors))
            for slot in slots:
                if isinstance(slot, ItemFailed):
                    self._metrics.item_failures.labels(encoder.name, slot.reason).inc()
        return retina_pb2.EmbedResponse(
            model=encoder.name,
            revision=encoder.revision,
            dim=encoder.dim,
            results=[_result(slot, vectors.get(i)) for i, slot in enumerate(slots)],
        )

    def _observer(self, name: str) -> Callable[[int, float], None]:
        histogram = self._metrics.infer_seconds.labels(name)

        def observe(_items: int, seconds: float) -> None:
            histogram.observe(seconds)

        return observe

    async def close(self) -> None:
        """Stop accepting calls and release the thread pools (waiting for running jobs in a
        thread, so the event loop is not blocked by an inference in progress)."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(b.close() for b in self._batchers.values()))
        await asyncio.to_thread(self._prep_pool.shutdown, wait=True, cancel_futures=True)
        await asyncio.to_thread(self._infer_pool.shutdown, wait=True, cancel_futures=True)

    # --- validation ---------------------------------------------------------------------

    def _encoder_for(self, request: retina_pb2.EmbedRequest) -> AnyEncoder:
        if not request.model:
            raise InvalidRequest("model is required")
        encoder = self._encoders.get(request.model)
        if encoder is None:
            known = ", ".join(sorted(self._encoders)) or "none"
            # At most 64 characters of a client-supplied name go back into the status message.
            shown = repr(request.model[:64]) + ("..." if len(request.model) > 64 else "")
            raise UnknownModel(f"unknown model {shown}; served models: {known}")
        if request.revision and request.revision != encoder.revision:
            raise RevisionMismatch(
                f"model {encoder.name!r} is served at revision {encoder.revision!r}, "
                f"the caller expects {request.revision!r}"
            )
        return encoder

    def _validate_inputs(
        self, request: retina_pb2.EmbedRequest, encoder: AnyEncoder
    ) -> list[str | ItemFailed]:
        """Whole-call checks (count); per-item checks become that slot's ItemFailed."""
        n = len(request.inputs)
        if n == 0:
            raise InvalidRequest("inputs is empty")
        if n > self._settings.max_batch_items:
            raise InvalidRequest(
                f"{n} inputs in one call; the limit is {self._settings.max_batch_items}"
            )
        expected = _KIND_FIELD[encoder.kind]
        raws: list[str | ItemFailed] = []
        for item in request.inputs:
            field = item.WhichOneof("kind")
            if field is None:
                raws.append(ItemFailed("empty_input", "the input has neither text nor image_url"))
                continue
            if field != expected:
                # Refused in its own slot: one misrouted job must not cost its batch-mates.
                raws.append(
                    ItemFailed("wrong_kind", f"model {encoder.name!r} takes {expected} inputs")
                )
                continue
            raws.append(self._check_item(item, encoder.kind))
        return raws

    def _check_item(self, item: inputs_pb2.Input, kind: EncoderKind) -> str | ItemFailed:
        value = item.text if kind == "text" else item.image_url
        if not value.strip():
            return ItemFailed("empty_input", f"the {_KIND_FIELD[kind]} is empty")
        if kind == "text" and len(value) > self._settings.max_text_chars:
            return ItemFailed(
                "too_large",
                f"text of {len(value)} characters; the limit is {self._settings.max_text_chars}",
            )
        return value

    # --- pipeline -----------------------------------------------------------------------

    async def _prepare_texts(
        self, encoder: AnyEncoder, raws: Sequence[str | ItemFailed]
    ) -> list[_Slot]:
        slots: list[_Slot] = list(raws)
        todo = [(i, raw) for i, raw in enumerate(raws) if isinstance(raw, str)]
        if not todo:
            return slots
        # One executor job per thread rather than per text: tokenising one text takes about
        # as long as a thread hand-off, so per-item jobs would mostly be overhead.
        n_chunks = min(self._settings.preprocess_threads, len(todo))
        chunks = [todo[k::n_chunks] for k in range(n_chunks)]
        loop = asyncio.get_running_loop()
        done = await asyncio.gather(
            *(
                loop.run_in_executor(
                    self._prep_pool, _preprocess_many, encoder, [raw for _, raw in chunk]
                )
                for chunk in chunks
            )
        )
        for chunk, prepared in zip(chunks, done, strict=True):
            for (i, _), slot in zip(chunk, prepared, strict=True):
                slots[i] = slot
        return slots

    async def _prepare_images(
        self, encoder: AnyEncoder, raws: Sequence[str | ItemFailed]
    ) -> list[_Slot]:
        # Each image is decoded as soon as its download ends, so decoding overlaps the
        # remaining downloads. gather() raises the first unexpected or transient error; the
        # other downloads are then cancelled rather than left running for a failed call.
        tasks = [
            asyncio.create_task(self._fetch_and_prepare(encoder, raw))
            for raw in raws
            if not isinstance(raw, ItemFailed)
        ]
        try:
            fetched = iter(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [raw if isinstance(raw, ItemFailed) else next(fetched) for raw in raws]

    async def _fetch_and_prepare(self, encoder: AnyEncoder, url: str) -> _Slot:
        assert self._images is not None  # checked in __init__ for image encoders
        try:
            data = await self._images.fetch(url)
        except ItemFailed as exc:
            return exc
        loop = asyncio.get_running_loop()
        (slot,) = await loop.run_in_executor(self._prep_pool, _preprocess_many, encoder, [data])
        return slot

    async def _infer(self, name: str, slots: list[_Slot]) -> dict[int, npt.NDArray[np.float32]]:
        """Infer every prepared slot through the encoder's micro-batcher; returns slot index ->
        vector, and turns the slots of items that failed inference into their ItemFailed."""
        ready = [i for i, slot in enumerate(slots) if not isinstance(slot, ItemFailed)]
        if not ready:
            return {}
        result = await self._batchers[name].submit([slots[i] for i in ready])
        vectors: dict[int, npt.NDArray[np.float32]] = {}
        for k, i in enumerate(ready):
            failure = result.failed.get(k)
            if failure is None:
                vectors[i] = result.vectors[k]
            else:
                slots[i] = failure
        return vectors


def _preprocess_many(encoder: AnyEncoder, raws: Sequence[str | bytes]) -> list[_Slot]:
    """Runs in the preprocessing pool; a failure stays in its item's slot. The encoders raise
    ItemFailed for what they recognise; anything else is still about this one untrusted input
    (a decoder bug on crafted bytes), so it is logged and failed here rather than failing the
    call as INTERNAL."""
    out: list[_Slot] = []
    for raw in raws:
        try:
            out.append(encoder.preprocess(raw))
        except ItemFailed as exc:
            out.append(exc)
        except Exception:
            logger.exception("%s: preprocessing raised an unexpected error", encoder.name)
            out.append(ItemFailed("bad_input", "the input could not be preprocessed"))
    return out


def _result(slot: _Slot, vector: npt.NDArray[np.float32] | None) -> retina_pb2.EmbedResult:
    if isinstance(slot, ItemFailed):
        return retina_pb2.EmbedResult(
            error=retina_pb2.ItemError(
                reason=slot.reason, message=slot.message, retriable=slot.retriable
            )
        )
    assert vector is not None  # every prepared slot was inferred
    return retina_pb2.EmbedResult(vector=vector.tobytes())
