"""Smoke tests of the integration servers themselves: a real Cassandra 5.0 answers CQL through
cassandra-driver, and a real Kafka broker carries one message from producer to consumer group.

Owns nothing of EmbArk's code; if these fail, every other integration test will too, so read
their failure (and the server log tail attached to it) first.
"""

from __future__ import annotations

import time

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

# confluent_kafka.admin re-exports NewTopic without __all__, which mypy --strict rejects.
from confluent_kafka.cimpl import NewTopic

from tests.integration.servers import LOCAL_DC, parse_address


def _cluster(cassandra_contact: str) -> Cluster:
    host, port = parse_address(cassandra_contact, 9042)
    profile = ExecutionProfile(load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=LOCAL_DC))
    return Cluster([host], port=port, execution_profiles={EXEC_PROFILE_DEFAULT: profile})


def test_cassandra_is_5_0(cassandra_contact: str) -> None:
    cluster = _cluster(cassandra_contact)
    try:
        row = cluster.connect().execute("SELECT release_version FROM system.local").one()
    finally:
        cluster.shutdown()
    assert row is not None
    assert row.release_version.startswith("5.0"), row.release_version


def test_cassandra_keyspace_round_trip(cassandra_contact: str, keyspace_name: str) -> None:
    cluster = _cluster(cassandra_contact)
    try:
        session = cluster.connect()
        session.execute(
            f"CREATE KEYSPACE {keyspace_name} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        session.set_keyspace(keyspace_name)
        session.execute("CREATE TABLE kv (k text PRIMARY KEY, v vector<float, 3>)")
        session.execute("INSERT INTO kv (k, v) VALUES (%s, %s)", ("a", [0.5, -1.0, 2.0]))
        row = session.execute("SELECT v FROM kv WHERE k = %s", ("a",)).one()
    finally:
        cluster.shutdown()
    assert row is not None
    assert list(row.v) == [0.5, -1.0, 2.0]


def test_kafka_round_trip(kafka_bootstrap: str, topic_name: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created = admin.create_topics(
        [NewTopic(topic_name, num_partitions=1, replication_factor=1)], operation_timeout=30
    )
    created[topic_name].result(timeout=30)

    delivery_errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            delivery_errors.append(err)

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    producer.produce(topic_name, key=b"key", value=b"hello devstack", on_delivery=on_delivery)
    assert producer.flush(30) == 0, "message still queued after 30 s"
    assert delivery_errors == []

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"{topic_name}-group",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic_name])
        received: Message | None = None
        deadline = time.monotonic() + 30
        while received is None and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            received = msg
        assert received is not None, "no message consumed within 30 s"
        assert (received.key(), received.value()) == (b"key", b"hello devstack")
        consumer.commit(message=received, asynchronous=False)
    finally:
        consumer.close()
