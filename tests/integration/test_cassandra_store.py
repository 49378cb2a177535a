"""``CassandraStore`` against a real Cassandra 5.0: the store contract, plus what only Cassandra
has (TTLs, consistency-level failures, schema DDL, the driver's error mapping).

Each test gets its own keyspace (``keyspace_name``), created by ``apply_schema`` exactly as
``embark schema apply`` creates it, and dropped when the test ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from embark.errors import BackendUnavailable, EmbarkError
from embark.store.cassandra import (
    CassandraConfig,
    CassandraStore,
    apply_schema,
    open_cassandra_store,
)
from embark.vectors import DimensionMismatch
from tests.contracts.store_contract import StoreContract, make_failure, make_vector
from tests.integration.servers import LOCAL_DC, cassandra_cluster, parse_address

# The dev server shares two cores with the tests; DDL and the first requests on a fresh
# keyspace can take far longer than the production default of 2 s.
_TEST_REQUEST_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def cql(cassandra_contact: str) -> Iterator[Any]:
    """A plain driver session for looking behind the store (TTL(), raw rows) and dropping."""
    cluster = cassandra_cluster(*parse_address(cassandra_contact, 9042))
    try:
        yield cluster.connect()
    finally:
        cluster.shutdown()


@pytest.fixture
def config(cassandra_contact: str, keyspace_name: str) -> CassandraConfig:
    return CassandraConfig(
        contact_points=(cassandra_contact,),
        keyspace=keyspace_name,
        local_dc=LOCAL_DC,
        request_timeout_s=_TEST_REQUEST_TIMEOUT_S,
    )


@pytest.fixture
async def schema(config: CassandraConfig, cql: Any) -> AsyncIterator[CassandraConfig]:
    """The keyspace of this test, created as ``embark schema apply`` does; dropped afterwards."""
    try:
        await asyncio.to_thread(apply_schema, config)
        yield config
    finally:
        # Dropped here rather than only at session end, so a long run keeps the server small.
        await asyncio.to_thread(
            cql.execute, f"DROP KEYSPACE IF EXISTS {config.keyspace}", timeout=60
        )


@pytest.fixture
async def store(schema: CassandraConfig) -> AsyncIterator[CassandraStore]:
    opened = await open_cassandra_store(schema)
    try:
        yield opened
    finally:
        await opened.close()


class TestCassandraStore(StoreContract):
    """The backend-agnostic contract, on Cassandra."""


async def _reopen(config: CassandraConfig, **changes: Any) -> CassandraStore:
    return await open_cassandra_store(config.model_copy(update=changes))


def _closed_port() -> int:
    # Bind, read the port, close: nothing listens there for the rest of the test.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestCassandraSpecifics:
    async def test_vector_and_index_rows_carry_the_vector_ttl(
        self, store: CassandraStore, schema: CassandraConfig, cql: Any
    ) -> None:
        row = make_vector("ttl me", revision="ttl")
        await store.put_many([row])

        ks = schema.keyspace
        (ttl_vector, ttl_input) = cql.execute(
            f"SELECT TTL(vector), TTL(input) FROM {ks}.embeddings WHERE key = %s", (row.key,)
        ).one()
        assert schema.vector_ttl_s - 60 <= ttl_vector <= schema.vector_ttl_s
        assert schema.vector_ttl_s - 60 <= ttl_input <= schema.vector_ttl_s

    async def test_failure_rows_carry_the_failure_ttl(
        self, store: CassandraStore, schema: CassandraConfig, cql: Any
    ) -> None:
        failure = make_failure(make_vector("http://example.com/404.png", revision="ttl"))
        await store.put_failures([failure])

        (ttl,) = cql.execute(
            f"SELECT TTL(reason) FROM {schema.keyspace}.failures WHERE key = %s", (failure.key,)
        ).one()
        assert schema.failure_ttl_s - 60 <= ttl <= schema.failure_ttl_s

    async def test_rows_expire_and_leave_scan(self, schema: CassandraConfig, cql: Any) -> None:
        # The index table has only key columns (TTL() cannot read them), so check expiry itself.
        short = await _reopen(schema, vector_ttl_s=2, failure_ttl_s=2)
        try:
            row = make_vector("short-lived", revision="expiring")
            failure = make_failure(make_vector("short-lived failure", revision="expiring"))
            await short.put_many([row])
            await short.put_failures([failure])
            assert set(await short.get_many([row.key, failure.key])) == {row.key, failure.key}
            assert list(await short.scan(row.model, "expiring")) == [row]

            await asyncio.sleep(3.0)

            assert dict(await short.get_many([row.key, failure.key])) == {}
            assert list(await short.scan(row.model, "expiring")) == []
            # The whole (test-sized) index table: no row of any bucket is left.
            assert (
                list(cql.execute(f"SELECT key FROM {schema.keyspace}.embeddings_by_revision")) == []
            )
        finally:
            await short.close()

    async def test_scan_follows_pages(self, store: CassandraStore, schema: CassandraConfig) -> None:
        # 200 rows over the buckets with one key per page: most buckets need several pages.
        rows = [make_vector(f"paged {i}", revision="paged", seed=i) for i in range(200)]
        await store.put_many(rows)
        paged = await _reopen(schema, scan_page_size=1, max_concurrent_requests=4)
        try:
            scanned = await paged.scan(rows[0].model, "paged")
        finally:
            await paged.close()
        assert list(scanned) == sorted(rows, key=lambda row: row.key)

    async def test_corrupt_stored_vector_is_refused_on_read(
        self, store: CassandraStore, schema: CassandraConfig, cql: Any
    ) -> None:
        row = make_vector("will be corrupted", revision="corrupt", dim=8)
        await store.put_many([row])
        cql.execute(f"UPDATE {schema.keyspace}.embeddings SET dim = 9 WHERE key = %s", (row.key,))

        with pytest.raises(DimensionMismatch):
            await store.get_many([row.key])

    async def test_unknown_kind_is_refused_on_write(self, store: CassandraStore) -> None:
        row = make_vector("odd", revision="kind")
        with pytest.raises(EmbarkError, match="kind"):
            await store.put_many([dataclasses.replace(row, kind="audio")])  # type: ignore[arg-type]

    async def test_schema_apply_is_idempotent(
        self, store: CassandraStore, schema: CassandraConfig
    ) -> None:
        row = make_vector("survives re-apply", revision="schema")
        await store.put_many([row])

        await asyncio.to_thread(apply_schema, schema)
        await asyncio.to_thread(apply_schema, schema)

        assert dict(await store.get_many([row.key])) == {row.key: row}

    async def test_too_few_replicas_is_backend_unavailable(
        self, cassandra_contact: str, keyspace_name: str, cql: Any
    ) -> None:
        # RF 3 on a one-node cluster: LOCAL_QUORUM needs two replicas and only one is up, the
        # same answer a real cluster gives with two of three replicas down.
        config = CassandraConfig(
            contact_points=(cassandra_contact,),
            keyspace=keyspace_name,
            local_dc=LOCAL_DC,
            replication={"class": "NetworkTopologyStrategy", "replication_factor": 3},
            read_consistency="LOCAL_QUORUM",
            request_timeout_s=_TEST_REQUEST_TIMEOUT_S,
        )
        await asyncio.to_thread(apply_schema, config)
        try:
            degraded = await open_cassandra_store(config)
            try:
                row = make_vector("nowhere to go", revision="rf3")
                with pytest.raises(BackendUnavailable, match="during put_many") as raised:
                    await degraded.put_many([row])
                assert raised.value.retriable
                # The driver retried on the next host (there is none) after the replica's
                # Unavailable answer; the original answer is in the chained cause.
                assert "Unavailable" in str(raised.value.__cause__)
                with pytest.raises(BackendUnavailable, match="during get_many"):
                    await degraded.get_many([row.key])
                with pytest.raises(BackendUnavailable, match="during scan"):
                    await degraded.scan(row.model, "rf3")
            finally:
                await degraded.close()
        finally:
            await asyncio.to_thread(
                cql.execute, f"DROP KEYSPACE IF EXISTS {keyspace_name}", timeout=60
            )

    async def test_closed_port_is_backend_unavailable_fast(self) -> None:
        config = CassandraConfig(
            contact_points=(f"127.0.0.1:{_closed_port()}",),
            connect_timeout_s=1.0,
        )
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="connect: NoHostAvailable") as raised:
            await open_cassandra_store(config)
        with pytest.raises(BackendUnavailable, match="schema apply"):
            await asyncio.to_thread(apply_schema, config)
        assert time.monotonic() - started < 10
        # The message is for clients: no addresses in it (they stay in the chained cause).
        assert "127.0.0.1" not in raised.value.message
        assert raised.value.__cause__ is not None

    async def test_two_stores_prepare_their_own_statements(
        self, store: CassandraStore, schema: CassandraConfig
    ) -> None:
        other = await _reopen(schema)
        try:
            row = make_vector("seen by both", revision="two")
            await store.put_many([row])
            assert dict(await other.get_many([row.key])) == {row.key: row}
            await other.close()
            # Closing one store leaves the other's session and statements working.
            assert dict(await store.get_many([row.key])) == {row.key: row}
        finally:
            await other.close()

    async def test_missing_schema_is_reported_at_open(self, config: CassandraConfig) -> None:
        with pytest.raises(EmbarkError, match="embark schema apply"):
            await open_cassandra_store(config)

    async def test_schema_lost_after_open_is_backend_unavailable(
        self, store: CassandraStore, schema: CassandraConfig, cql: Any
    ) -> None:
        # What a node that crashed before its schema reached disk answers (the cluster tests
        # met it): a backend fault to retry, never a request error that becomes INTERNAL.
        row = make_vector("schema goes away", revision="r1")
        await store.put_many([row])
        await asyncio.to_thread(cql.execute, f"DROP TABLE {schema.keyspace}.embeddings", timeout=60)
        with pytest.raises(BackendUnavailable, match="embark schema apply"):
            await store.get_many([row.key])
        with pytest.raises(BackendUnavailable, match="embark schema apply"):
            await store.put_many([make_vector("and comes back", revision="r1")])

    async def test_closed_store_refuses_requests(self, store: CassandraStore) -> None:
        await store.close()
        with pytest.raises(RuntimeError, match="closed"):
            await store.get_many(["k"])


class TestCassandraConfig:
    """Validation that guards the DDL and the connection (no server needed)."""

    def test_defaults_are_valid(self) -> None:
        config = CassandraConfig()
        assert config.contact_points == ("127.0.0.1:9042",)
        assert config.read_consistency == "LOCAL_ONE"
        assert config.write_consistency == "LOCAL_QUORUM"

    @pytest.mark.parametrize("keyspace", ["Embark", "1ks", "ks; DROP KEYSPACE x", "", "k" * 49])
    def test_keyspace_must_be_a_plain_identifier(self, keyspace: str) -> None:
        with pytest.raises(ValidationError):
            CassandraConfig(keyspace=keyspace)

    def test_replication_cannot_inject_cql(self) -> None:
        with pytest.raises(ValidationError):
            CassandraConfig(replication={"class": "SimpleStrategy'}; DROP", "x": 1})
        with pytest.raises(ValidationError):
            CassandraConfig(replication={"replication_factor": 1})

    @pytest.mark.parametrize("point", ["127.0.0.1", "host:", ":9042", "host:99999", "h:x"])
    def test_contact_points_are_host_port(self, point: str) -> None:
        with pytest.raises(ValidationError):
            CassandraConfig(contact_points=(point,))

    def test_ipv6_contact_point(self) -> None:
        assert CassandraConfig(contact_points=["[::1]:9042"]).contact_points == ("[::1]:9042",)

    def test_credentials_go_together_and_stay_secret(self) -> None:
        with pytest.raises(ValidationError):
            CassandraConfig(username="embark")
        config = CassandraConfig(username="embark", password="s3cret")
        assert "s3cret" not in repr(config)

    def test_config_is_frozen(self) -> None:
        with pytest.raises(ValidationError):
            CassandraConfig().keyspace = "other"  # type: ignore[misc]
