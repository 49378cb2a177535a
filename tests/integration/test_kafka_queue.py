"""The Kafka job queue against a real broker: the backend-agnostic queue contract, plus what only
Kafka has (a bounded producer buffer when the cluster is unreachable, topic creation, malformed
messages turned into dead letters and committed past).

Each test gets its own jobs topic (``topic_name``), dead-letter topic and consumer group.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from confluent_kafka import OFFSET_INVALID, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from embark.errors import BackendUnavailable
from embark.queue.base import Delivery, Enqueued, JobConsumer
from embark.queue.kafka import (
    MALFORMED_REASON,
    KafkaConfig,
    KafkaJobConsumer,
    KafkaJobQueue,
    ensure_topics,
)
from embark_api.v1 import jobs_pb2
from tests.contracts.queue_contract import MakeConsumer, QueueContract, make_job

# Nothing listens on port 1: connections are refused at once, as with a Kafka that is down.
UNREACHABLE = "127.0.0.1:1"
PARTITIONS = 3


@pytest.fixture
def kafka_config(
    kafka_bootstrap: str, topic_name: str, handed_out_topics: list[str]
) -> KafkaConfig:
    dead_letter_topic = f"{topic_name}.dlq"
    handed_out_topics.append(dead_letter_topic)  # deleted with the jobs topic at session end
    return KafkaConfig(
        bootstrap_servers=kafka_bootstrap,
        client_id="embark-tests",
        jobs_topic=topic_name,
        dead_letter_topic=dead_letter_topic,
        partitions=PARTITIONS,
        group_id=f"kfc-{topic_name}",
        # The broker's minimum (group.min.session.timeout.ms): a consumer a test abandons
        # without closing cannot hold its partitions for long.
        session_timeout_s=6.0,
        request_timeout_s=10.0,
        close_timeout_s=5.0,
        dead_letter_timeout_s=10.0,
    )


@pytest.fixture
async def topics(kafka_config: KafkaConfig) -> KafkaConfig:
    """``kafka_config`` with its topics created."""
    await ensure_topics(kafka_config)
    return kafka_config


@pytest.fixture
async def producer(topics: KafkaConfig) -> AsyncIterator[KafkaJobQueue]:
    queue = KafkaJobQueue(topics)
    yield queue
    await queue.close()


@pytest.fixture
async def consumers(topics: KafkaConfig) -> AsyncIterator[MakeConsumer]:
    made: list[KafkaJobConsumer] = []

    def make() -> JobConsumer:
        made.append(KafkaJobConsumer(topics))
        return made[-1]

    yield make
    for consumer in made:
        await consumer.close()


class TestKafkaQueue(QueueContract):
    @pytest.fixture
    def queue(self, producer: KafkaJobQueue) -> KafkaJobQueue:
        return producer

    @pytest.fixture
    def make_consumer(self, consumers: MakeConsumer) -> MakeConsumer:
        return consumers


def unreachable(**overrides: float) -> KafkaConfig:
    config = KafkaConfig(
        bootstrap_servers=UNREACHABLE,
        jobs_topic="never.created",
        dead_letter_topic="never.created.dlq",
        request_timeout_s=1.0,
        close_timeout_s=0.2,
    )
    return KafkaConfig.model_validate({**config.model_dump(), **overrides})


class TestUnreachableKafka:
    async def test_enqueue_drops_beyond_the_buffer_bound_and_close_drops_the_rest(self) -> None:
        queue = KafkaJobQueue(unreachable(buffer_max_messages=5))
        try:
            answers = [queue.enqueue(make_job(f"k{i}")) for i in range(20)]

            assert answers == [Enqueued.QUEUED] * 5 + [Enqueued.DROPPED] * 15
            assert (queue.queued_total, queue.dropped_total) == (5, 15)
        finally:
            await queue.close()
        # Closing gives up on the five buffered jobs, and counts them.
        assert (queue.delivery_failed_total, queue.dropped_total) == (5, 20)
        assert queue.enqueue(make_job("late")) is Enqueued.DROPPED

    async def test_jobs_that_time_out_in_the_buffer_count_as_dropped(self) -> None:
        queue = KafkaJobQueue(unreachable(message_timeout_s=0.5))
        try:
            answers = [queue.enqueue(make_job(f"k{i}")) for i in range(3)]
            assert answers == [Enqueued.QUEUED] * 3

            assert await queue.flush(10.0) == 0  # emptied by the timeouts, not by delivery

            assert (queue.queued_total, queue.delivery_failed_total) == (3, 3)
            assert queue.dropped_total == 3
        finally:
            await queue.close()

    async def test_ping_raises_backend_unavailable(self) -> None:
        queue = KafkaJobQueue(unreachable())
        try:
            with pytest.raises(BackendUnavailable):
                await queue.ping()
        finally:
            await queue.close()

    async def test_ensure_topics_raises_backend_unavailable(self) -> None:
        with pytest.raises(BackendUnavailable):
            await ensure_topics(unreachable())


def describe_topics(config: KafkaConfig) -> dict[str, int]:
    """Partition count per existing topic of ``config``."""
    admin = AdminClient({"bootstrap.servers": config.bootstrap_servers})
    metadata = admin.list_topics(timeout=10)
    return {
        name: len(metadata.topics[name].partitions)
        for name in (config.jobs_topic, config.dead_letter_topic)
        if name in metadata.topics
    }


class TestKafkaTopics:
    async def test_ensure_topics_creates_both_topics_and_is_idempotent(
        self, kafka_config: KafkaConfig
    ) -> None:
        assert await asyncio.to_thread(describe_topics, kafka_config) == {}

        await ensure_topics(kafka_config)
        await ensure_topics(kafka_config)

        assert await asyncio.to_thread(describe_topics, kafka_config) == {
            kafka_config.jobs_topic: PARTITIONS,
            kafka_config.dead_letter_topic: PARTITIONS,
        }

    async def test_ping_raises_when_the_jobs_topic_is_missing(
        self, kafka_config: KafkaConfig
    ) -> None:
        queue = KafkaJobQueue(kafka_config)
        try:
            with pytest.raises(BackendUnavailable, match="does not exist"):
                await queue.ping()
        finally:
            await queue.close()


@pytest.fixture
def raw_producer(topics: KafkaConfig) -> Iterator[Producer]:
    """A plain producer, to write what EmbArk never would."""
    producer = Producer({"bootstrap.servers": topics.bootstrap_servers})
    yield producer
    producer.flush(10)


def committed(config: KafkaConfig, partitions: list[int]) -> dict[int, int]:
    """The group's committed offset per partition (negative when nothing is committed)."""
    probe = Consumer({"bootstrap.servers": config.bootstrap_servers, "group.id": config.group_id})
    try:
        found = probe.committed(
            [TopicPartition(config.jobs_topic, p) for p in partitions], timeout=10
        )
    finally:
        probe.close()
    return {tp.partition: tp.offset for tp in found}


def read_dead_letters(
    config: KafkaConfig, want: int, timeout_s: float = 20.0
) -> list[tuple[jobs_pb2.DeadLetter, dict[str, bytes]]]:
    """The first ``want`` letters on the dead-letter topic, with their headers."""
    reader = Consumer(
        {
            "bootstrap.servers": config.bootstrap_servers,
            "group.id": f"{config.group_id}-dlq-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    reader.subscribe([config.dead_letter_topic])
    letters: list[tuple[jobs_pb2.DeadLetter, dict[str, bytes]]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(letters) < want and time.monotonic() < deadline:
            for msg in reader.consume(num_messages=10, timeout=0.5):
                if msg.error() is None:
                    # A consumed message's headers are a list of (name, bytes) pairs.
                    pairs = msg.headers() or []
                    assert isinstance(pairs, list)
                    headers = {k: v for k, v in pairs if isinstance(v, bytes)}
                    letters.append((jobs_pb2.DeadLetter.FromString(msg.value() or b""), headers))
    finally:
        reader.close()
    return letters


async def poll_until_unavailable(consumer: JobConsumer) -> BackendUnavailable:
    """Poll (expecting nothing) until ``poll_batch`` raises BackendUnavailable."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            assert await consumer.poll_batch(100, 0.5) == []
        except BackendUnavailable as exc:
            return exc
    pytest.fail("poll_batch never raised BackendUnavailable")


class TestMalformedMessages:
    async def test_malformed_messages_are_dead_lettered_and_committed_past(
        self,
        topics: KafkaConfig,
        raw_producer: Producer,
        consumers: MakeConsumer,
    ) -> None:
        garbage = b"\xff\xffnot an EmbedJob"
        good = make_job("good")
        # Partition 0: garbage, a good job, a job without model/revision/input.
        # Partition 1: garbage only.
        for key, value, partition in [
            (b"bad-0", garbage, 0),
            (b"good", good.SerializeToString(), 0),
            (b"bad-2", jobs_pb2.EmbedJob(key="bad-2").SerializeToString(), 0),
            (b"bad-3", garbage, 1),
        ]:
            raw_producer.produce(topics.jobs_topic, value=value, key=key, partition=partition)
        assert raw_producer.flush(10) == 0
        consumer = consumers()

        deliveries: list[Delivery] = []
        deadline = time.monotonic() + 30
        while not deliveries and time.monotonic() < deadline:
            deliveries += await consumer.poll_batch(100, 0.5)
        # Drain what is left so every malformed message has been seen.
        deliveries += await consumer.poll_batch(100, 1.0)

        assert [(d.job, d.partition, d.offset) for d in deliveries] == [(good, 0, 1)]
        letters = await asyncio.to_thread(read_dead_letters, topics, 3)
        by_key = {letter.job.key: (letter, headers) for letter, headers in letters}
        assert sorted(by_key) == ["bad-0", "bad-2", "bad-3"]
        assert all(letter.reason == MALFORMED_REASON for letter, _ in letters)
        assert by_key["bad-0"][1]["embark-raw-value"] == garbage
        assert by_key["bad-3"][1]["embark-source"] == f"{topics.jobs_topic}/1@0".encode()
        # Committed past at once where nothing earlier is outstanding; bad-2 waits for the
        # good job before it, which is not done yet.
        assert await asyncio.to_thread(committed, topics, [0, 1]) == {0: 1, 1: 1}

        await consumer.commit(deliveries)

        assert await asyncio.to_thread(committed, topics, [0, 1]) == {0: 3, 1: 1}

    async def test_a_dead_letter_that_cannot_be_written_rewinds_the_batch(
        self, topics: KafkaConfig, raw_producer: Producer, handed_out_topics: list[str]
    ) -> None:
        # A dead-letter topic that does not exist (the broker does not auto-create topics).
        missing = f"{topics.jobs_topic}.missing"
        handed_out_topics.append(missing)
        config = KafkaConfig.model_validate(
            {**topics.model_dump(), "dead_letter_topic": missing, "dead_letter_timeout_s": 1.0}
        )
        raw_producer.produce(topics.jobs_topic, value=b"\xff\xff", key=b"bad", partition=0)
        assert raw_producer.flush(10) == 0
        consumer = KafkaJobConsumer(config)
        try:
            assert "dead-letter" in (await poll_until_unavailable(consumer)).message

            # Not committed past, and fetched again rather than skipped in this session.
            assert await asyncio.to_thread(committed, topics, [0]) == {0: OFFSET_INVALID}
            with pytest.raises(BackendUnavailable, match="dead-letter"):
                await consumer.poll_batch(100, 5.0)
            with pytest.raises(BackendUnavailable, match="dead-letter"):
                await consumer.dead_letter(jobs_pb2.DeadLetter(job=make_job("x"), reason="r"))
        finally:
            await consumer.close()


class TestRebalance:
    async def test_a_revoked_partition_is_redelivered_and_not_committed_by_its_old_owner(
        self, producer: KafkaJobQueue, topics: KafkaConfig, consumers: MakeConsumer
    ) -> None:
        jobs = [make_job(f"rebalance-{i:02d}") for i in range(30)]
        assert all(producer.enqueue(job) is Enqueued.QUEUED for job in jobs)
        assert await producer.flush(10) == 0
        first = consumers()
        polled: list[Delivery] = []
        deadline = time.monotonic() + 30
        while len(polled) < len(jobs) and time.monotonic() < deadline:
            polled += await first.poll_batch(100, 0.5)
        assert len(polled) == len(jobs)

        # A second member joins; the first takes part in the rebalance by polling. Having
        # polled everything already, whatever the first gets now is a redelivery after its
        # new assignment: the partitions it kept.
        second = consumers()
        taken: list[Delivery] = []
        again: list[Delivery] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            taken and {d.partition for d in taken + again} == set(range(PARTITIONS))
        ):
            mine, theirs = await asyncio.gather(
                first.poll_batch(100, 0.5), second.poll_batch(100, 0.5)
            )
            again += mine
            taken += theirs

        moved = {d.partition for d in taken}
        kept = {d.partition for d in again}
        assert moved
        assert kept  # range assignment of 3 partitions to 2 members leaves the first some
        assert moved | kept == set(range(PARTITIONS))
        assert not moved & kept
        # Uncommitted jobs of a moved partition go to its new owner.
        assert {d.job.key for d in taken} == {d.job.key for d in polled if d.partition in moved}

        await first.commit(polled)

        offsets = await asyncio.to_thread(committed, topics, list(range(PARTITIONS)))
        for partition in kept:
            assert offsets[partition] == 1 + max(
                d.offset for d in polled if d.partition == partition
            )
        for partition in moved:
            assert offsets[partition] < 0  # the old owner did not commit over the new one
