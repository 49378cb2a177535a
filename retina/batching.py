"""Dynamic micro-batching: concurrent Embed calls' prepared items share onnxruntime runs.

One ``MicroBatcher`` per served encoder. A call hands it its prepared items and waits; a worker
task takes queued items (first come, first served, across calls) into a batch of at most
``max_items``, waiting at most ``max_wait_s`` after the first item for others to join, then
runs ``encoder.infer`` on the batch in the inference pool behind the shared inference slots.
While every slot is busy the queue keeps growing, so batches get larger exactly when the
server is loaded (the usual adaptive-batching behaviour: no wait is added when idle beyond
``max_wait_s``, and a long queue never waits at all).

Results are identical to unbatched inference because the encoders guarantee row independence
(image: static quantization; text: static quantization, or one item per session run for a model
whose activation scales are computed per batch; see ``retina.encoders.text``).

Failure isolation. An exception from ``infer`` on a merged batch must not fail calls whose items
are fine, so the batch is retried one item at a time (in the same executor job):

- some items succeed alone: only the items that still fail get an ``ItemFailed``
  (``inference_failed``) in their own slot; the exception is logged with its traceback;
- every item of a batch of several fails alone too: the model itself is broken (not one
  input), so the exception reaches every call in the batch, which the server reports as
  INTERNAL, rather than recording permanent per-item failures for a systemic fault;
- a batch of one item that fails: the item gets a *retriable* ``ItemFailed`` in its slot
  (alone it cannot tell a poison input from a broken model), and its caller retries it alone.

A call cancelled while queued (its client went away) has its items skipped, not inferred.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt

from retina.encoders.base import Encoder
from retina.errors import ItemFailed

logger = logging.getLogger(__name__)

AnyEncoder: TypeAlias = Encoder[Any]
Vectors: TypeAlias = npt.NDArray[np.float32]

INFERENCE_FAILED: Final = "inference_failed"


@dataclass(eq=False, slots=True)
class _Call:
    """One submit(): its items, where their vectors go, and the future its caller awaits."""

    items: Sequence[object]
    vectors: Vectors
    future: asyncio.Future[None]
    failed: dict[int, ItemFailed] = field(default_factory=dict)
    remaining: int = 0


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What a submit() gets back: an ``(n, dim)`` array (rows of failed items are zero) and the
    failed items by index."""

    vectors: Vectors
    failed: dict[int, ItemFailed]


class MicroBatcher:
    """Merges items of concurrent calls into batches for one encoder (see module docstring).
    Create it inside the event loop that will use it; ``await close()`` when done."""

    def __init__(
        self,
        encoder: AnyEncoder,
        *,
        executor: Executor,
        slots: asyncio.Semaphore,
        max_items: int,
        max_wait_s: float,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        """``on_batch(items, seconds)`` is called after each run (for metrics)."""
        if max_items < 1 or max_wait_s < 0:
            raise ValueError("max_items must be >= 1 and max_wait_s >= 0")
        self._encoder = encoder
        self._executor = executor
        self._slots = slots
        self._max_items = max_items
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: deque[tuple[_Call, int]] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    async def submit(self, items: Sequence[object]) -> BatchResult:
        """Infer ``items`` (prepared by this encoder), batched with other calls' items."""
        if self._closed:
            raise RuntimeError("MicroBatcher is closed")
        vectors = np.zeros((len(items), self._encoder.dim), dtype="<f4")
        if not items:
            return BatchResult(vectors, {})
        call = _Call(
            items=items,
            vectors=vectors,
            future=asyncio.get_running_loop().create_future(),
            remaining=len(items),
        )
        self._queue.extend((call, i) for i in range(len(items)))
        self._arrived.set()
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name=f"batcher-{self._encoder.name}")
        # Cancelling this await cancels the future: the worker then skips the call's items.
        await call.future
        return BatchResult(call.vectors, call.failed)

    async def close(self) -> None:
        """Stop the worker, let running batches finish, fail calls still queued."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
        while self._queue:
            call, _ = self._queue.popleft()
            if not call.future.done():
                call.future.set_exception(RuntimeError("the service closed"))

    # --- the worker ---------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            self._drop_cancelled()
            if not self._queue:
                self._arrived.clear()
                continue
            # Linger for batch-mates, unless a full batch is already waiting.
            deadline = loop.time() + self._max_wait_s
            while len(self._queue) < self._max_items:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            await self._slots.acquire()
            # Items that arrived while the slots were busy join this batch.
            batch = self._take()
            if not self._queue:
                self._arrived.clear()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._infer(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _drop_cancelled(self) -> None:
        while self._queue and self._queue[0][0].future.done():
            self._queue.popleft()

    def _take(self) -> list[tuple[_Call, int]]:
        batch: list[tuple[_Call, int]] = []
        while self._queue and len(batch) < self._max_items:
            entry = self._queue.popleft()
            if not entry[0].future.done():
                batch.append(entry)
        return batch

    async def _infer(self, batch: list[tuple[_Call, int]]) -> None:
        try:
            items = [call.items[i] for call, i in batch]
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            try:
                outcome = await loop.run_in_executor(
                    self._executor, infer_isolating_failures, self._encoder, items
                )
            # Whatever the model raised, every call in the batch gets it (INTERNAL at the server).
            except Exception as exc:  # noqa: BLE001
                for call, _ in batch:
                    if not call.future.done():
                        call.future.set_exception(exc)
                return
            if self._on_batch is not None:
                self._on_batch(len(items), time.perf_counter() - started)
            for (call, i), row in zip(batch, outcome, strict=True):
                if call.future.done():
                    continue
                if isinstance(row, ItemFailed):
                    call.failed[i] = row
                else:
                    call.vectors[i] = row
                call.remaining -= 1
                if call.remaining == 0:
                    call.future.set_result(None)
        finally:
            self._slots.release()


def infer_isolating_failures(
    encoder: AnyEncoder, items: Sequence[object]
) -> list[Vectors | ItemFailed]:
    """Runs in the inference pool: the batch's rows, or per-item failures when the batch fails
    but some of its items succeed alone. Raises when every item fails (see module docstring)."""
    try:
        return list(checked_infer(encoder, items))
    except Exception:
        if len(items) == 1:
            # Alone, an item cannot tell "this input breaks the model" from "the model broke":
            # it fails in its own slot, retriable, so its caller tries it again later and
            # gives up after a bounded number of attempts, instead of failing a whole call.
            logger.exception("%s: inference of a single item failed", encoder.name)
            return [ItemFailed(INFERENCE_FAILED, "the model failed on this input", retriable=True)]
        logger.exception("%s: batch of %d failed; retrying item by item", encoder.name, len(items))
    rows: list[Vectors | ItemFailed] = []
    first_error: Exception | None = None
    for item in items:
        try:
            rows.append(checked_infer(encoder, [item])[0])
        # Any failure of one item is that item's; the caller decides when all of them fail.
        except Exception as exc:  # noqa: BLE001
            first_error = first_error or exc
            rows.append(ItemFailed(INFERENCE_FAILED, "the model failed on this input"))
    if first_error is not None and all(isinstance(r, ItemFailed) for r in rows):
        raise first_error
    return rows


def checked_infer(encoder: AnyEncoder, items: Sequence[object]) -> Vectors:
    """``encoder.infer`` with its output checked: a wrong shape is an encoder bug (INTERNAL)."""
    vectors = encoder.infer(items)
    if vectors.shape != (len(items), encoder.dim):
        raise RuntimeError(
            f"{encoder.name}: infer returned shape {vectors.shape}, "
            f"expected {(len(items), encoder.dim)}"
        )
    return np.ascontiguousarray(vectors, dtype="<f4")
