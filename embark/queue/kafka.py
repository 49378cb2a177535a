"""The Apache Kafka job queue: the producer EmbArk enqueues misses with, the consumer KFC reads
them with, the dead-letter topic, and the start-up topic creation.

Owns the mapping of the ``JobQueue`` / ``JobConsumer`` contracts (``embark.queue.base``) onto
confluent-kafka (librdkafka):

- ``KafkaJobQueue`` never blocks a request: ``produce()`` only appends to librdkafka's bounded
  local buffer; a full buffer, a refused message or a delivery report that failed (the job timed
  out while Kafka was down) are all counted as drops. A background thread serves delivery reports.
- ``KafkaJobConsumer`` commits only what the caller hands back (after the store write), so a
  crash or a rebalance redelivers uncommitted work (at-least-once). Every call into the consumer
  runs on one dedicated thread: librdkafka calls block, and confluent-kafka refuses concurrent
  calls into one consumer from several threads.
- ``ensure_topics`` creates the jobs and dead-letter topics, idempotently.

Connection settings and credentials arrive in a ``KafkaConfig`` built from the service settings;
nothing here reads the environment.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

# NewTopic's documented home; the package's stubs only re-export it from cimpl.
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from google.protobuf.message import DecodeError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from embark.errors import BackendUnavailable
from embark.queue.base import Delivery, Enqueued
from embark.queue.offsets import CommitWindow
from embark_api.v1 import jobs_pb2

if TYPE_CHECKING:
    from embark.queue.base import JobConsumer, JobQueue

log = logging.getLogger(__name__)

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

# The reason a dead letter carries when the message itself could not be read as an EmbedJob.
MALFORMED_REASON = "malformed"

# Kafka record headers, as confluent-kafka takes them.
_Headers = list[tuple[str, str | bytes | None]]

# Commit failures that mean "a rebalance took the partition": the deliveries will be redelivered
# to the new owner, which is the at-least-once contract, not an outage.
_REBALANCE_CODES = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError._ASSIGNMENT_LOST,
    }
)


class KafkaConfig(BaseModel):
    """Where Kafka is, which topics EmbArk and KFC use, and how hard to try. Built from the
    service settings (``EMBARK_`` / ``KFC_``) and passed down; credentials are never in code."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The devstack broker on loopback: the only address that is right without configuration.
    bootstrap_servers: str = "127.0.0.1:9092"
    # Names the client in broker logs and quotas; EmbArk and KFC override it with their own.
    client_id: str = "embark"
    # The topic names of DESIGN.md; shared by every EmbArk and KFC instance of a deployment.
    jobs_topic: str = "embark.jobs"
    dead_letter_topic: str = "embark.jobs.dlq"
    # Partitions bound KFC's parallelism (one consumer per partition at most) and can only be
    # added later, which moves keys between partitions; 12 splits evenly over 1-4 and 6 consumers.
    partitions: int = Field(default=12, ge=1)
    # None asks the broker for its default.replication.factor: right on a single-node devstack
    # (1) and on a production cluster whose operators set it (typically 3), without a code default
    # that is wrong for one of them.
    replication_factor: int | None = Field(default=None, ge=1)
    # The topics' min.insync.replicas: how many replicas must hold a job before acks=all (the
    # producer's setting) acknowledges it. None takes the broker's min.insync.replicas. On a
    # cluster with replication 3, 2 lets one broker die without losing an acknowledged job or
    # stopping producers (docs/cluster.md); it must not exceed replication_factor.
    min_insync_replicas: int | None = Field(default=None, ge=1)
    # KFC instances share one group so each job is handled by one of them.
    group_id: str = "kfc"
    # queue.buffering.max.messages: the bound on misses buffered in EmbArk while Kafka is slow or
    # down. A job is a few hundred bytes, so 100k (librdkafka's own default) is tens of MB; beyond
    # it enqueue answers DROPPED rather than growing memory or blocking a request.
    buffer_max_messages: int = Field(default=100_000, ge=1)
    # message.timeout.ms: how long a buffered job may wait for Kafka before it is reported as
    # dropped. Five minutes rides out a broker restart or a leader election; a dropped miss costs
    # little, since the next request for the same input enqueues it again.
    message_timeout_s: float = Field(default=300.0, gt=0)
    # How long close() waits for buffered jobs; shorter than the gRPC grace and Nomad's
    # kill_timeout so a shutdown never hangs on an unreachable Kafka.
    close_timeout_s: float = Field(default=5.0, ge=0)
    # Readiness probes and admin calls must answer quickly; a slower cluster is "not ready".
    request_timeout_s: float = Field(default=5.0, gt=0)
    # session.timeout.ms: a KFC that dies silently (SIGKILL, a lost node) stalls its partitions
    # this long before they move to a live member. librdkafka heartbeats from its own thread,
    # so a slow batch never counts against it (max.poll.interval does); 10 s keeps crash
    # recovery quick yet rides out a GC pause or network blip. The broker's minimum is 6 s.
    session_timeout_s: float = Field(default=10.0, gt=0)
    # max.poll.interval.ms: one batch (Retina call + store write) must finish within it or the
    # member is evicted and its partitions redelivered. librdkafka's default.
    max_poll_interval_s: float = Field(default=300.0, gt=0)
    # How long dead_letter() waits for the DLQ write to be acknowledged before it reports the
    # dead-letter topic unavailable (KFC then retries without committing).
    dead_letter_timeout_s: float = Field(default=10.0, gt=0)
    # Plaintext suits the loopback devstack; production clusters set SASL_SSL and credentials.
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # A private CA for the brokers' certificates; None trusts the system store.
    ssl_ca_location: Path | None = None
    # A client certificate and key (PEM) for brokers that require one (ssl.client.auth=required,
    # i.e. mutual TLS); the key's passphrase is a secret. Only with SSL / SASL_SSL.
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None

    @model_validator(mode="after")
    def _check_security(self) -> Self:
        uses_sasl = self.security_protocol.startswith("SASL_")
        if uses_sasl and (
            self.sasl_mechanism is None or self.sasl_username is None or self.sasl_password is None
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                "sasl_username and sasl_password"
            )
        if not uses_sasl and self.sasl_mechanism is not None:
            raise ValueError("sasl_mechanism is set but security_protocol is not SASL_*")
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            raise ValueError("ssl_certificate_location and ssl_key_location go together")
        if self.ssl_certificate_location is not None and not self.security_protocol.endswith("SSL"):
            raise ValueError("a client certificate needs security_protocol SSL or SASL_SSL")
        if self.jobs_topic == self.dead_letter_topic:
            raise ValueError("jobs_topic and dead_letter_topic must differ")
        if (
            self.min_insync_replicas is not None
            and self.replication_factor is not None
            and self.min_insync_replicas > self.replication_factor
        ):
            raise ValueError(
                f"min_insync_replicas {self.min_insync_replicas} exceeds replication_factor "
                f"{self.replication_factor}: no write could ever be acknowledged"
            )
        return self


def _client_config(config: KafkaConfig) -> dict[str, str | int | float | bool]:
    """The settings every client (producer, consumer, admin) shares: address and security."""
    conf: dict[str, str | int | float | bool] = {
        "bootstrap.servers": config.bootstrap_servers,
        "client.id": config.client_id,
        "security.protocol": config.security_protocol,
        "socket.timeout.ms": int(config.request_timeout_s * 1000),
    }
    if config.sasl_mechanism is not None:
        conf["sasl.mechanism"] = config.sasl_mechanism
    if config.sasl_username is not None:
        conf["sasl.username"] = config.sasl_username
    if config.sasl_password is not None:
        conf["sasl.password"] = config.sasl_password.get_secret_value()
    if config.ssl_ca_location is not None:
        conf["ssl.ca.location"] = str(config.ssl_ca_location)
    if config.ssl_certificate_location is not None:
        conf["ssl.certificate.location"] = str(config.ssl_certificate_location)
    if config.ssl_key_location is not None:
        conf["ssl.key.location"] = str(config.ssl_key_location)
    if config.ssl_key_password is not None:
        conf["ssl.key.password"] = config.ssl_key_password.get_secret_value()
    return conf


def _producer_config(config: KafkaConfig) -> dict[str, str | int | float | bool]:
    return {
        **_client_config(config),
        # Idempotence (which implies acks=all) keeps retries from duplicating or reordering
        # jobs of one key within a partition.
        "enable.idempotence": True,
        "acks": "all",
        # The Java client's partitioner, so a key lands on the same partition whichever client
        # (or tool) produced it.
        "partitioner": "murmur2_random",
        "queue.buffering.max.messages": config.buffer_max_messages,
        "message.timeout.ms": int(config.message_timeout_s * 1000),
    }


class _ClientLog:
    """librdkafka's own log lines and its error callback, routed into Python logging.

    While Kafka is down librdkafka logs every reconnect attempt and reports the same errors over
    and over; each error code is logged as a warning at most once a minute, and the log lines
    (which repeat those errors) go to a debug-level child logger.
    """

    _REPEAT_AFTER_S = 60.0

    def __init__(self, what: str) -> None:
        self._what = what
        self._librdkafka = logging.getLogger(f"{__name__}.librdkafka")
        self._warned_at: dict[int, float] = {}

    def log(self, level: int, msg: str, *args: object) -> None:
        """The ``logger`` interface confluent-kafka calls with each librdkafka log line."""
        self._librdkafka.debug(msg, *args)

    def on_error(self, err: KafkaError) -> None:
        now = time.monotonic()
        last = self._warned_at.get(err.code())
        repeat = last is not None and now - last < self._REPEAT_AFTER_S
        if not repeat:
            self._warned_at[err.code()] = now
        log.log(logging.DEBUG if repeat else logging.WARNING, "kafka %s: %s", self._what, err)

    def config(self) -> dict[str, Any]:
        return {"logger": self, "error_cb": self.on_error}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class KafkaJobQueue:
    """EmbArk's producer side. ``enqueue`` appends to librdkafka's bounded buffer and returns;
    a thread serves delivery reports so failures are counted even when no request arrives."""

    def __init__(self, config: KafkaConfig, *, poll_interval_s: float = 0.1) -> None:
        self._config = config
        self._producer = Producer({**_producer_config(config), **_ClientLog("producer").config()})
        # Counters move on the request path and on the poll thread.
        self._lock = threading.Lock()
        self._queued = 0
        self._dropped = 0
        self._delivery_failed = 0
        self._last_failure_warning = 0.0
        self._closed = False
        self._stop = threading.Event()
        self._poll_interval_s = poll_interval_s
        self._poller = threading.Thread(
            target=self._poll_loop, name="embark-kafka-delivery", daemon=True
        )
        self._poller.start()

    @property
    def queued_total(self) -> int:
        """Jobs accepted into the local buffer (some may still be dropped on delivery)."""
        return self._queued

    @property
    def dropped_total(self) -> int:
        """Jobs that will never reach Kafka: refused by a full buffer, or failed delivery."""
        return self._dropped

    @property
    def delivery_failed_total(self) -> int:
        """The part of ``dropped_total`` accepted locally whose delivery then failed."""
        return self._delivery_failed

    @property
    def buffered(self) -> int:
        """Jobs buffered or in flight now, plus librdkafka's own pending requests and delivery
        reports: a gauge of the backlog, not an exact job count."""
        return len(self._producer)

    def enqueue(self, job: jobs_pb2.EmbedJob) -> Enqueued:
        if self._closed:
            return self._drop("enqueue after close")
        try:
            self._producer.produce(
                self._config.jobs_topic,
                value=job.SerializeToString(),
                key=job.key.encode(),
                on_delivery=self._on_delivery,
            )
        except BufferError:
            return self._drop("local buffer full")
        except KafkaException as exc:
            # Refused locally (e.g. larger than message.max.bytes): same answer, never a raise.
            return self._drop(str(exc))
        # Delivery reports are served by the poll thread, not on the request path.
        with self._lock:
            self._queued += 1
        return Enqueued.QUEUED

    async def flush(self, timeout_s: float) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._producer.flush, timeout_s)

    async def ping(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _check_topic, self._producer, self._config)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._stop.set()
        self._poller.join()
        remaining = self._producer.flush(self._config.close_timeout_s)
        if remaining:
            # Purged jobs get a failed delivery report, so they are counted as dropped.
            log.warning("kafka producer closing with %d undelivered jobs; dropping them", remaining)
            self._producer.purge()
            self._producer.poll(0)
        self._producer.close()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._producer.poll(self._poll_interval_s)
            except Exception:
                # A callback raised: log it and keep serving reports rather than losing them all.
                log.exception("kafka producer poll failed")

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        with self._lock:
            self._delivery_failed += 1
            self._dropped += 1
            # One warning per ten seconds: an outage fails every buffered job at once.
            now = time.monotonic()
            warn = now - self._last_failure_warning >= 10.0
            if warn:
                self._last_failure_warning = now
            failed = self._delivery_failed
        if warn:
            log.warning(
                "kafka delivery failed (%s); %d jobs dropped on delivery so far", err, failed
            )

    def _drop(self, why: str) -> Enqueued:
        with self._lock:
            self._dropped += 1
        log.debug("job dropped: %s", why)
        return Enqueued.DROPPED


def _check_topic(client: Producer, config: KafkaConfig) -> None:
    """Raise BackendUnavailable unless the cluster answers and the jobs topic exists: without
    the topic every enqueued job would wait in the buffer and then be dropped."""
    try:
        metadata = client.list_topics(timeout=config.request_timeout_s)
    except KafkaException as exc:
        raise BackendUnavailable(f"kafka at {config.bootstrap_servers} did not answer") from exc
    if config.jobs_topic not in metadata.topics:
        raise BackendUnavailable(f"kafka topic {config.jobs_topic} does not exist")


async def ensure_topics(config: KafkaConfig) -> None:
    """Create the jobs and dead-letter topics with the configured partitions. Idempotent: an
    existing topic is left as it is (a differing partition count is logged, not changed, since
    adding partitions moves keys). Raises BackendUnavailable when Kafka does not answer."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, _ensure_topics, config)


def _topic_config(config: KafkaConfig) -> dict[str, str]:
    """Per-topic overrides of the broker's defaults; empty leaves the broker's."""
    if config.min_insync_replicas is None:
        return {}
    return {"min.insync.replicas": str(config.min_insync_replicas)}


def _ensure_topics(config: KafkaConfig) -> None:
    admin = AdminClient({**_client_config(config), **_ClientLog("admin").config()})
    topics = [
        NewTopic(
            name,
            num_partitions=config.partitions,
            replication_factor=config.replication_factor or -1,
            config=_topic_config(config),
        )
        for name in (config.jobs_topic, config.dead_letter_topic)
    ]
    futures = admin.create_topics(
        topics,
        request_timeout=config.request_timeout_s,
        # Wait for the topics to exist on the brokers, so producers and consumers started right
        # after find them.
        operation_timeout=config.request_timeout_s,
    )
    for name, future in futures.items():
        try:
            future.result()
            log.info(
                "kafka topic %s created with %d partitions, replication %s, min.insync.replicas %s",
                name,
                config.partitions,
                config.replication_factor or "(broker default)",
                config.min_insync_replicas or "(broker default)",
            )
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BackendUnavailable(f"could not create kafka topic {name}: {err}") from exc
    # The controller has committed the topics, but a broker answers metadata from its own cache,
    # which follows a moment later (seen on a freshly started KRaft broker): wait until the
    # topics are visible, so a client started right after (its ping included) finds them.
    deadline = time.monotonic() + config.request_timeout_s
    while True:
        try:
            metadata = admin.list_topics(timeout=config.request_timeout_s)
        except KafkaException as exc:
            raise BackendUnavailable(f"kafka at {config.bootstrap_servers} did not answer") from exc
        if all(t.topic in metadata.topics for t in topics) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for topic in topics:
        found = metadata.topics.get(topic.topic)
        if found is not None and len(found.partitions) != config.partitions:
            log.warning(
                "kafka topic %s has %d partitions, configuration says %d; left unchanged",
                topic.topic,
                len(found.partitions),
                config.partitions,
            )


class KafkaJobConsumer:
    """KFC's consumer side: batches from the jobs topic, synchronous commits of exactly what the
    caller hands back, and dead letters to the DLQ topic.

    A message that is not a readable ``EmbedJob`` is dead-lettered here and never returned; its
    offset is done at once. Commits move each partition's position past every done offset up to
    the first one still open (``embark.queue.offsets.CommitWindow``), so deliveries may finish
    out of order.
    """

    def __init__(self, config: KafkaConfig) -> None:
        self._config = config
        self._consumer = Consumer(
            {
                **_client_config(config),
                "group.id": config.group_id,
                # Offsets move only when KFC says the store write succeeded.
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                # A new group starts at the oldest job rather than skipping the backlog.
                "auto.offset.reset": "earliest",
                "session.timeout.ms": int(config.session_timeout_s * 1000),
                "max.poll.interval.ms": int(config.max_poll_interval_s * 1000),
                **_ClientLog("consumer").config(),
            }
        )
        # Dead letters go through their own producer, whose message timeout is the dead-letter
        # timeout, so a failed write is reported (not still pending) when dead_letter() returns.
        self._dlq = Producer(
            {
                **_producer_config(config),
                "message.timeout.ms": int(config.dead_letter_timeout_s * 1000),
                **_ClientLog("dead-letter producer").config(),
            }
        )
        # One thread for every consumer call: they block, and the rebalance callbacks (which run
        # inside consume) then share the bookkeeping below with commit without a lock.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kfc-consumer")
        self._assigned: set[int] = set()
        # Per partition: offsets handed out and not yet done (a dead-lettered malformed message
        # is done at once), and the position last committed.
        self._window = CommitWindow()
        self._committed: dict[int, int] = {}
        self._closed = False
        self._consumer.subscribe(
            [config.jobs_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    async def poll_batch(self, max_items: int, timeout_s: float) -> Sequence[Delivery]:
        """Up to ``max_items`` jobs: waits at most ``timeout_s`` for the first, then returns
        it with whatever else is already fetched."""
        if self._closed:
            raise BackendUnavailable("kafka consumer is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._poll_batch, max_items, timeout_s)

    async def commit(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        if self._closed:
            # The group has the partitions back; these deliveries will be redelivered.
            raise BackendUnavailable("kafka consumer is closed")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._commit, deliveries)

    async def dead_letter(self, letter: jobs_pb2.DeadLetter) -> None:
        if self._closed:
            raise BackendUnavailable("kafka consumer is closed")
        # The producer is thread-safe; the default executor keeps DLQ writes from queueing
        # behind a consume() in progress.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._write_dead_letters, [(letter, None)])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        # Leaving the group hands the partitions over at once; uncommitted deliveries are
        # redelivered to whoever gets them.
        await loop.run_in_executor(self._executor, self._consumer.close)
        self._executor.shutdown(wait=True)
        await loop.run_in_executor(None, self._close_dlq)

    def _close_dlq(self) -> None:
        # dead_letter() flushes each write, so this only matters for one cut short by close().
        if self._dlq.flush(self._config.close_timeout_s):
            self._dlq.purge()
        self._dlq.close()

    # --- on the consumer thread ---

    def _poll_batch(self, max_items: int, timeout_s: float) -> list[Delivery]:
        # Wait for the first message only, then take what is already fetched: consume(n, t)
        # alone would hold a half-full batch for the whole timeout while the backlog is small.
        messages = self._consumer.consume(num_messages=1, timeout=timeout_s)
        if messages and max_items > 1:
            messages += self._consumer.consume(num_messages=max_items - 1, timeout=0)
        deliveries: list[Delivery] = []
        malformed: list[tuple[Message, jobs_pb2.DeadLetter]] = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise BackendUnavailable(f"kafka consumer failed: {err}")
                log.warning("kafka consumer error: %s", err)
                continue
            partition, offset = msg.partition(), msg.offset()
            # Set on every message that is not an error event.
            assert partition is not None
            assert offset is not None
            letter = _decode(msg)
            self._window.handed_out(partition, offset)
            if isinstance(letter, jobs_pb2.EmbedJob):
                deliveries.append(Delivery(job=letter, partition=partition, offset=offset))
            else:
                malformed.append((msg, letter))
        if malformed:
            self._dead_letter_malformed(messages, deliveries, malformed)
        return deliveries

    def _dead_letter_malformed(
        self,
        messages: Sequence[Message],
        deliveries: Sequence[Delivery],
        malformed: Sequence[tuple[Message, jobs_pb2.DeadLetter]],
    ) -> None:
        try:
            self._write_dead_letters([(letter, _source_headers(msg)) for msg, letter in malformed])
        except BackendUnavailable:
            # Rewind to the start of this batch so nothing in it is lost in this session, then
            # let the caller back off: the batch (good jobs included) is fetched again.
            for msg in messages:
                partition, offset = msg.partition(), msg.offset()
                if msg.error() is None and partition is not None and offset is not None:
                    self._window.forget(partition, [offset])
            self._rewind(messages)
            raise
        touched: set[int] = set()
        for msg, _ in malformed:
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None
            assert offset is not None
            log.warning("malformed job at %s/%d@%d dead-lettered", msg.topic(), partition, offset)
            self._window.done(partition, offset)
            touched.add(partition)
        self._commit_positions(touched)

    def _rewind(self, messages: Sequence[Message]) -> None:
        first: dict[int, int] = {}
        for msg in messages:
            partition, offset = msg.partition(), msg.offset()
            if msg.error() is None and partition is not None and offset is not None:
                first.setdefault(partition, offset)
        for partition, offset in first.items():
            self._consumer.seek(TopicPartition(self._config.jobs_topic, partition, offset))

    def _commit(self, deliveries: Sequence[Delivery]) -> None:
        touched: set[int] = set()
        revoked: set[int] = set()
        for delivery in deliveries:
            if delivery.partition not in self._assigned:
                # Revoked since it was polled: its new owner redelivers it (at-least-once), and a
                # stale commit could move that owner's position.
                revoked.add(delivery.partition)
                continue
            self._window.done(delivery.partition, delivery.offset)
            touched.add(delivery.partition)
        if revoked:
            log.info(
                "not committing revoked partitions %s; they will be redelivered", sorted(revoked)
            )
        self._commit_positions(touched)

    def _commit_positions(self, partitions: set[int]) -> None:
        """Commit, synchronously, the position of each partition that moved forward."""
        positions: dict[int, int] = {}
        for partition in partitions:
            position = self._window.position(partition)
            if position is not None and position > self._committed.get(partition, -1):
                positions[partition] = position
        if not positions:
            return
        offsets = [
            TopicPartition(self._config.jobs_topic, partition, position)
            for partition, position in sorted(positions.items())
        ]
        try:
            results = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() in _REBALANCE_CODES:
                log.info("commit lost to a rebalance (%s); the jobs will be redelivered", err)
                return
            raise BackendUnavailable(f"kafka commit failed: {err}") from exc
        failed = [tp for tp in results if tp.error is not None]
        if failed:
            raise BackendUnavailable(f"kafka commit failed for {failed}")
        self._committed.update(positions)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update(tp.partition for tp in partitions)
        log.info("kafka partitions assigned: %s", sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)
        log.info(
            "kafka partitions revoked: %s; uncommitted jobs there will be redelivered",
            sorted(tp.partition for tp in partitions),
        )

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)
        log.warning(
            "kafka partitions lost (session timed out?): %s; their jobs will be redelivered",
            sorted(tp.partition for tp in partitions),
        )

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._assigned.discard(tp.partition)
            self._window.forget(tp.partition)
            self._committed.pop(tp.partition, None)

    # --- dead letters (any thread) ---

    def _write_dead_letters(
        self, letters: Sequence[tuple[jobs_pb2.DeadLetter, _Headers | None]]
    ) -> None:
        errors: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(err)

        try:
            for letter, headers in letters:
                self._dlq.produce(
                    self._config.dead_letter_topic,
                    value=letter.SerializeToString(),
                    key=letter.job.key.encode() or None,
                    headers=headers,
                    on_delivery=on_delivery,
                )
        except (BufferError, KafkaException) as exc:
            raise BackendUnavailable(f"dead-letter topic refused the write: {exc}") from exc
        # The DLQ producer's message timeout is dead_letter_timeout_s, so by then every letter
        # has a delivery report; the margin covers the report's own round trip.
        remaining = self._dlq.flush(self._config.dead_letter_timeout_s + 1.0)
        if remaining or errors:
            first = errors[0] if errors else "timed out"
            raise BackendUnavailable(f"dead-letter write to kafka failed: {first}")


def _decode(msg: Message) -> jobs_pb2.EmbedJob | jobs_pb2.DeadLetter:
    """The job in ``msg``, or the dead letter that reports why it is not one."""
    value = msg.value() or b""
    try:
        job = jobs_pb2.EmbedJob.FromString(value)
    except DecodeError as exc:
        problem = f"not an EmbedJob: {exc}"
    else:
        missing = [name for name in ("key", "model", "revision") if not getattr(job, name)]
        if not job.HasField("input") or job.input.WhichOneof("kind") is None:
            missing.append("input")
        if not missing:
            return job
        problem = f"EmbedJob without {', '.join(missing)}"
    raw_key = msg.key() or b""
    return jobs_pb2.DeadLetter(
        job=jobs_pb2.EmbedJob(key=raw_key.decode("utf-8", errors="replace")),
        reason=MALFORMED_REASON,
        message=f"{msg.topic()}/{msg.partition()}@{msg.offset()}: {problem}",
        failed_at_ms=_now_ms(),
    )


def _source_headers(msg: Message) -> _Headers:
    """Where a malformed message came from, and its bytes, which the DeadLetter cannot hold."""
    return [
        ("embark-source", f"{msg.topic()}/{msg.partition()}@{msg.offset()}".encode()),
        ("embark-raw-value", msg.value() or b""),
    ]


__all__ = [
    "MALFORMED_REASON",
    "KafkaConfig",
    "KafkaJobConsumer",
    "KafkaJobQueue",
    "ensure_topics",
]

if TYPE_CHECKING:
    # mypy proves the implementations satisfy the interfaces; nothing runs.
    def _conforms(queue: KafkaJobQueue, consumer: KafkaJobConsumer) -> tuple[JobQueue, JobConsumer]:
        return queue, consumer
