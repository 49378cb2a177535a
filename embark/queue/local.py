"""The embedded queue: an in-process, bounded job log with a producer and a consumer side.

It keeps Kafka's semantics that matter to KFC — ordered offsets, explicit commit, redelivery of
what was consumed but not committed when a consumer re-opens — so the same KFC loop runs on it.
It is memory only: jobs pending at exit are lost, which `embark dev` accepts (a miss is simply
queued again on its next request). Producer and consumer must share one event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from embark.queue.base import Delivery, Enqueued
from embark.queue.offsets import CommitWindow
from embark_api.v1 import jobs_pb2


class LocalBroker:
    """One partition of jobs. Uncommitted jobs count against ``max_buffered``."""

    def __init__(self, max_buffered: int, max_dead_letters: int = 10_000) -> None:
        self.max_buffered = max_buffered
        self._log: deque[jobs_pb2.EmbedJob] = deque()
        self._base = 0  # offset of _log[0]
        self.committed = 0  # next offset to be consumed by a new consumer
        self.dead_letters: deque[jobs_pb2.DeadLetter] = deque(maxlen=max_dead_letters)
        self.queued_total = 0
        self.dropped_total = 0
        self._arrived = asyncio.Event()

    @property
    def end(self) -> int:
        return self._base + len(self._log)

    def append(self, job: jobs_pb2.EmbedJob) -> Enqueued:
        if self.end - self.committed >= self.max_buffered:
            self.dropped_total += 1
            return Enqueued.DROPPED
        self._log.append(job)
        self.queued_total += 1
        self._arrived.set()
        return Enqueued.QUEUED

    def read(self, start: int, max_items: int) -> list[Delivery]:
        first = max(start, self._base)
        return [
            Delivery(job=self._log[off - self._base], partition=0, offset=off)
            for off in range(first, min(self.end, first + max_items))
        ]

    def commit(self, next_offset: int) -> None:
        if next_offset > self.committed:
            self.committed = next_offset
            # Committed jobs are never read again: drop them so memory stays bounded.
            while self._base < self.committed and self._log:
                self._log.popleft()
                self._base += 1

    async def wait_for(self, offset: int, timeout_s: float) -> None:
        while self.end <= offset:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout_s)
            except TimeoutError:
                return


class LocalJobQueue:
    """JobQueue over a LocalBroker: enqueue is a bounded append, never a wait."""

    def __init__(self, broker: LocalBroker) -> None:
        self.broker = broker

    def enqueue(self, job: jobs_pb2.EmbedJob) -> Enqueued:
        return self.broker.append(job)

    @property
    def buffered(self) -> int:
        """Jobs appended and not yet committed by the consumer."""
        return self.broker.end - self.broker.committed

    @property
    def delivery_failed_total(self) -> int:
        return 0  # an appended job is in the log: delivery cannot fail

    async def flush(self, timeout_s: float) -> int:
        return 0  # appended jobs are already in the log

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


class LocalJobConsumer:
    """JobConsumer over a LocalBroker. A new consumer starts at the committed offset, so jobs
    consumed but not committed by a closed consumer are delivered again (at-least-once)."""

    def __init__(self, broker: LocalBroker) -> None:
        self.broker = broker
        self._position = broker.committed
        self._window = CommitWindow()

    async def poll_batch(self, max_items: int, timeout_s: float) -> Sequence[Delivery]:
        await self.broker.wait_for(self._position, timeout_s)
        batch = self.broker.read(self._position, max_items)
        if batch:
            self._position = batch[-1].offset + 1
        for delivery in batch:
            self._window.handed_out(0, delivery.offset)
        return batch

    async def commit(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self._window.done(0, delivery.offset)
        position = self._window.position(0)
        if position is not None:
            self.broker.commit(position)

    async def dead_letter(self, letter: jobs_pb2.DeadLetter) -> None:
        self.broker.dead_letters.append(letter)

    async def close(self) -> None:
        self._position = self.broker.committed
        self._window = CommitWindow()
