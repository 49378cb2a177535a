"""The job queue contract: what every ``JobQueue`` / ``JobConsumer`` pair must do, whichever
backend it runs on. Owns the behaviour EmbArk and KFC rely on, stated once:

- ``enqueue`` answers QUEUED when the queue is healthy, and every queued job is consumed;
- jobs of one key are consumed in the order they were enqueued;
- a committed job is not delivered again to a new consumer of the same group;
- a job that was consumed but not committed is delivered again after the consumer closes
  (at-least-once), even when jobs after it were committed first (deliveries finish out of
  order: KFC retries one item while the batches after it are done);
- ``dead_letter`` accepts a letter; ``close`` is idempotent.

A backend's test module subclasses ``QueueContract`` (``class TestKafkaQueue(QueueContract)``)
and provides two fixtures:

- ``queue``: a ``JobQueue`` on a fresh, empty queue, closed by the fixture;
- ``make_consumer``: a callable returning a NEW ``JobConsumer`` of one consumer group on that
  same queue each time it is called; the fixture closes whatever it made that is still open.

``consumer`` (the first consumer) is built here from ``make_consumer``. Tests only ever run one
consumer of the group at a time, so no backend needs to share work between live consumers.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from embark.queue.base import Delivery, Enqueued, JobConsumer, JobQueue
from embark_api.v1 import inputs_pb2, jobs_pb2

MakeConsumer = Callable[[], JobConsumer]


def make_job(key: str, seq: int = 0) -> jobs_pb2.EmbedJob:
    """A well-formed job; ``seq`` rides in ``enqueued_at_ms`` so tests can check order."""
    return jobs_pb2.EmbedJob(
        key=key,
        model="contract-model",
        revision="r1",
        input=inputs_pb2.Input(text=f"input of {key}"),
        enqueued_at_ms=seq,
    )


class QueueContract:
    """Backend-agnostic tests; see the module docstring for the fixtures a subclass provides."""

    #: How long a test waits for jobs to arrive. Covers a consumer-group join on a real broker.
    settle_s: float = 30.0
    #: ``poll_batch`` arguments used while waiting.
    batch_size: int = 100
    poll_timeout_s: float = 0.5

    @pytest.fixture
    async def consumer(self, make_consumer: MakeConsumer) -> AsyncIterator[JobConsumer]:
        consumer = make_consumer()
        yield consumer
        await consumer.close()

    # --- helpers ---

    @staticmethod
    def keys(prefix: str, n: int) -> list[str]:
        run = uuid.uuid4().hex[:8]
        return [f"{prefix}-{run}-{i:04d}" for i in range(n)]

    async def enqueue_all(self, queue: JobQueue, jobs: Sequence[jobs_pb2.EmbedJob]) -> None:
        answers = [queue.enqueue(job) for job in jobs]
        assert answers == [Enqueued.QUEUED] * len(jobs)
        assert await queue.flush(self.settle_s) == 0

    async def collect(
        self,
        consumer: JobConsumer,
        done: Callable[[list[Delivery]], bool],
        what: str,
    ) -> list[Delivery]:
        """Poll until ``done(all deliveries so far)`` or fail after ``settle_s``."""
        seen: list[Delivery] = []
        deadline = time.monotonic() + self.settle_s
        while not done(seen):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"waited {self.settle_s}s for {what}; got {len(seen)} deliveries: "
                    f"{sorted({d.job.key for d in seen})[:10]}..."
                )
            seen.extend(await consumer.poll_batch(self.batch_size, self.poll_timeout_s))
        return seen

    async def collect_keys(self, consumer: JobConsumer, keys: Sequence[str]) -> list[Delivery]:
        wanted = set(keys)
        return await self.collect(
            consumer,
            lambda seen: wanted <= {d.job.key for d in seen},
            f"{len(wanted)} jobs",
        )

    # --- the contract ---

    async def test_implements_the_protocols(self, queue: JobQueue, consumer: JobConsumer) -> None:
        assert isinstance(queue, JobQueue)
        assert isinstance(consumer, JobConsumer)

    async def test_ping_answers_when_healthy(self, queue: JobQueue) -> None:
        await queue.ping()

    async def test_enqueue_returns_queued(self, queue: JobQueue) -> None:
        for key in self.keys("queued", 5):
            assert queue.enqueue(make_job(key)) is Enqueued.QUEUED

    async def test_every_enqueued_job_is_consumed(
        self, queue: JobQueue, consumer: JobConsumer
    ) -> None:
        keys = self.keys("all", 50)
        await self.enqueue_all(queue, [make_job(k) for k in keys])

        seen = await self.collect_keys(consumer, keys)

        assert {d.job.key for d in seen} == set(keys)
        assert all(d.job == make_job(d.job.key) for d in seen)

    async def test_jobs_of_one_key_arrive_in_order(
        self, queue: JobQueue, consumer: JobConsumer
    ) -> None:
        (ordered,) = self.keys("ordered", 1)
        others = self.keys("other", 20)
        jobs: list[jobs_pb2.EmbedJob] = []
        for seq, other in enumerate(others):
            jobs += [make_job(ordered, seq), make_job(other)]
        await self.enqueue_all(queue, jobs)

        seen = await self.collect(
            consumer,
            lambda seen: sum(d.job.key == ordered for d in seen) >= len(others),
            f"{len(others)} jobs of key {ordered}",
        )

        sequence = [d.job.enqueued_at_ms for d in seen if d.job.key == ordered]
        assert sequence == list(range(len(others)))

    async def test_committed_jobs_are_not_delivered_to_a_new_consumer(
        self, queue: JobQueue, consumer: JobConsumer, make_consumer: MakeConsumer
    ) -> None:
        done = self.keys("done", 20)
        await self.enqueue_all(queue, [make_job(k) for k in done])
        await consumer.commit(await self.collect_keys(consumer, done))
        await consumer.close()
        # A job enqueued after the commit marks "the new consumer has caught up": everything
        # it is given before that job would be a redelivery.
        (sentinel,) = self.keys("sentinel", 1)
        await self.enqueue_all(queue, [make_job(sentinel)])

        successor = make_consumer()
        seen = await self.collect_keys(successor, [sentinel])

        assert {d.job.key for d in seen} == {sentinel}

    async def test_uncommitted_jobs_are_redelivered_after_close(
        self, queue: JobQueue, consumer: JobConsumer, make_consumer: MakeConsumer
    ) -> None:
        keys = self.keys("redo", 20)
        await self.enqueue_all(queue, [make_job(k) for k in keys])
        await self.collect_keys(consumer, keys)
        await consumer.close()  # without committing: as if KFC died before the store write

        successor = make_consumer()
        seen = await self.collect_keys(successor, keys)

        assert {d.job.key for d in seen} == set(keys)

    async def test_an_open_job_is_redelivered_even_when_later_ones_were_committed(
        self, queue: JobQueue, consumer: JobConsumer, make_consumer: MakeConsumer
    ) -> None:
        # One key, so every job lands in one partition, in this order.
        (key,) = self.keys("open", 1)
        jobs = [make_job(key, seq) for seq in range(6)]
        await self.enqueue_all(queue, jobs)
        seen = await self.collect(consumer, lambda s: len(s) >= len(jobs), "6 jobs")
        in_retry = seen[2]
        await consumer.commit([d for d in seen if d is not in_retry])
        await consumer.close()  # dies while job 2 is still being retried

        successor = make_consumer()
        again = await self.collect(successor, lambda s: len(s) >= 4, "the open job and after")

        # The open job comes back, with what followed it; nothing before it does.
        assert [d.job.enqueued_at_ms for d in again] == [2, 3, 4, 5]
        await successor.commit(again)

    async def test_commit_of_nothing_is_a_no_op(self, consumer: JobConsumer) -> None:
        await consumer.commit([])

    async def test_dead_letter_is_accepted(self, consumer: JobConsumer) -> None:
        (key,) = self.keys("dead", 1)
        letter = jobs_pb2.DeadLetter(
            job=make_job(key), reason="not_an_image", message="contract test", failed_at_ms=1
        )
        await consumer.dead_letter(letter)

    async def test_close_is_idempotent(self, queue: JobQueue, consumer: JobConsumer) -> None:
        await queue.close()
        await queue.close()
        await consumer.close()
        await consumer.close()
