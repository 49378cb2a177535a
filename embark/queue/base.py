"""The job queue's interface: a producer side that never blocks a request, and a consumer side
with explicit commit (at-least-once: commit only after the store write succeeded).

One Protocol per side; one file per implementation beside this one.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from embark_api.v1 import jobs_pb2


class Enqueued(enum.Enum):
    """What happened to one enqueue call; never an exception on the request path."""

    QUEUED = "queued"  # accepted into the (bounded) local buffer / the queue
    DROPPED = "dropped"  # the buffer is full: counted, reported to the caller, not pending


@dataclass(frozen=True, slots=True)
class Delivery:
    """One consumed job plus the opaque position the consumer commits."""

    job: jobs_pb2.EmbedJob
    partition: int
    offset: int


@runtime_checkable
class JobQueue(Protocol):
    """Producer side, used by EmbArk."""

    def enqueue(self, job: jobs_pb2.EmbedJob) -> Enqueued:
        """Hand a job to the queue without waiting on the network. Never raises for a full
        or unreachable queue: answers DROPPED instead (and the implementation counts it)."""
        ...

    @property
    def buffered(self) -> int:
        """Jobs accepted but not yet delivered (a gauge for metrics; may be approximate)."""
        ...

    @property
    def delivery_failed_total(self) -> int:
        """Jobs accepted (answered PENDING) whose delivery then failed: the only way a queued
        miss is lost, so it is counted (a metric), never silent."""
        ...

    async def flush(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for buffered jobs to be delivered; return how many remain."""
        ...

    async def ping(self) -> None:
        """Return when the queue answers; raise BackendUnavailable otherwise (readiness)."""
        ...

    async def close(self) -> None:
        """Flush what can be flushed and release resources. Idempotent."""
        ...


@runtime_checkable
class JobConsumer(Protocol):
    """Consumer side, used by KFC."""

    async def poll_batch(self, max_items: int, timeout_s: float) -> Sequence[Delivery]:
        """Up to ``max_items`` jobs, waiting at most ``timeout_s`` for the first one."""
        ...

    async def commit(self, deliveries: Sequence[Delivery]) -> None:
        """Mark these deliveries done. The committed position of a partition moves past every
        delivery that is done and stops at the first that is not (``embark.queue.offsets``):
        deliveries may finish out of order, and one still in retry is redelivered after a
        crash together with what followed it."""
        ...

    async def dead_letter(self, letter: jobs_pb2.DeadLetter) -> None:
        """Publish a permanently failed job to the dead-letter destination."""
        ...

    async def close(self) -> None:
        """Leave the group (uncommitted deliveries will be redelivered). Idempotent."""
        ...
