"""The in-process queue: the shared queue contract, then its bound and its offsets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from embark.queue.base import Enqueued
from embark.queue.local import LocalBroker, LocalJobConsumer, LocalJobQueue
from embark_api.v1 import jobs_pb2
from tests.contracts.queue_contract import QueueContract, make_job


class TestLocalQueue(QueueContract):
    settle_s = 5.0
    poll_timeout_s = 0.05

    @pytest.fixture
    def broker(self) -> LocalBroker:
        return LocalBroker(max_buffered=1_000)

    @pytest.fixture
    async def queue(self, broker: LocalBroker) -> AsyncIterator[LocalJobQueue]:
        queue = LocalJobQueue(broker)
        yield queue
        await queue.close()

    @pytest.fixture
    async def make_consumer(
        self, broker: LocalBroker
    ) -> AsyncIterator[Callable[[], LocalJobConsumer]]:
        made: list[LocalJobConsumer] = []

        def make() -> LocalJobConsumer:
            made.append(LocalJobConsumer(broker))
            return made[-1]

        yield make
        for consumer in made:
            await consumer.close()


@pytest.fixture
def small_broker() -> LocalBroker:
    return LocalBroker(max_buffered=3, max_dead_letters=2)


async def test_full_buffer_drops_and_counts(small_broker: LocalBroker) -> None:
    queue = LocalJobQueue(small_broker)

    answers = [queue.enqueue(make_job(f"k{i}")) for i in range(5)]

    assert answers == [Enqueued.QUEUED] * 3 + [Enqueued.DROPPED] * 2
    assert (small_broker.queued_total, small_broker.dropped_total) == (3, 2)
    assert await queue.flush(1.0) == 0


async def test_consumed_but_uncommitted_jobs_still_count_against_the_bound(
    small_broker: LocalBroker,
) -> None:
    queue, consumer = LocalJobQueue(small_broker), LocalJobConsumer(small_broker)
    for i in range(3):
        queue.enqueue(make_job(f"k{i}"))

    batch = await consumer.poll_batch(10, 0.01)
    assert [d.job.key for d in batch] == ["k0", "k1", "k2"]
    assert queue.enqueue(make_job("k3")) is Enqueued.DROPPED

    await consumer.commit(batch[:2])
    assert queue.enqueue(make_job("k3")) is Enqueued.QUEUED
    assert queue.enqueue(make_job("k4")) is Enqueued.QUEUED
    assert queue.enqueue(make_job("k5")) is Enqueued.DROPPED


async def test_offsets_are_ordered_and_a_new_consumer_starts_at_the_commit(
    small_broker: LocalBroker,
) -> None:
    queue = LocalJobQueue(small_broker)
    for i in range(3):
        queue.enqueue(make_job(f"k{i}"))
    first = LocalJobConsumer(small_broker)

    batch = await first.poll_batch(2, 0.01)
    assert [(d.partition, d.offset) for d in batch] == [(0, 0), (0, 1)]
    await first.commit(batch[:1])
    assert small_broker.committed == 1

    second = LocalJobConsumer(small_broker)
    assert [d.offset for d in await second.poll_batch(10, 0.01)] == [1, 2]
    # An older commit never moves the offset back.
    await second.commit(batch[:1])
    assert small_broker.committed == 1


async def test_poll_waits_for_a_job_then_times_out(small_broker: LocalBroker) -> None:
    consumer = LocalJobConsumer(small_broker)
    assert list(await consumer.poll_batch(10, 0.01)) == []

    LocalJobQueue(small_broker).enqueue(make_job("late"))
    assert [d.job.key for d in await consumer.poll_batch(10, 0.01)] == ["late"]
    assert list(await consumer.poll_batch(10, 0.01)) == []


async def test_dead_letters_are_kept_up_to_their_bound(small_broker: LocalBroker) -> None:
    consumer = LocalJobConsumer(small_broker)
    for i in range(3):
        await consumer.dead_letter(jobs_pb2.DeadLetter(job=make_job(f"d{i}"), reason="x"))

    assert [letter.job.key for letter in small_broker.dead_letters] == ["d1", "d2"]
