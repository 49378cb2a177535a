"""The Cassandra similarity index against a real Cassandra 5.0: the shared contract through the
store ``open_store`` builds with similarity search on (so writes reach the index exactly as
KFC's do), then what only Cassandra has (the schema, TTLs, a missing table, the hit path)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from embark import vectors
from embark.backends import open_similarity_index, open_store
from embark.errors import PreconditionFailed
from embark.settings import StoreSettings
from embark.similar.base import Space
from embark.similar.cassandra import schema_statements, table_name
from embark.similar.indexing import IndexingStore
from embark.store.cassandra import CassandraConfig, CassandraStore, apply_schema
from tests.contracts.similarity_contract import (
    SPACE_A,
    SPACES,
    Pair,
    SimilarityContract,
    clustered,
    row,
)
from tests.integration.servers import LOCAL_DC, cassandra_cluster, parse_address

_TEST_REQUEST_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def cql(cassandra_contact: str) -> Any:
    cluster = cassandra_cluster(*parse_address(cassandra_contact, 9042))
    try:
        yield cluster.connect()
    finally:
        cluster.shutdown()


@pytest.fixture
async def config(
    cassandra_contact: str, keyspace_name: str, cql: Any
) -> AsyncIterator[CassandraConfig]:
    """A keyspace of this test with the contract's vector tables, as `embark schema apply`
    creates them with similarity search on; dropped afterwards."""
    config = CassandraConfig(
        contact_points=(cassandra_contact,),
        keyspace=keyspace_name,
        local_dc=LOCAL_DC,
        request_timeout_s=_TEST_REQUEST_TIMEOUT_S,
    )
    try:
        await asyncio.to_thread(apply_schema, config, schema_statements(keyspace_name, SPACES))
        yield config
    finally:
        await asyncio.to_thread(cql.execute, f"DROP KEYSPACE IF EXISTS {keyspace_name}", timeout=60)


@pytest.fixture
async def store(config: CassandraConfig) -> AsyncIterator[IndexingStore]:
    opened = await open_store(
        StoreSettings(backend="cassandra", cassandra=config, similarity_search=True)
    )
    assert isinstance(opened, IndexingStore)
    try:
        yield opened
    finally:
        await opened.close()


class TestCassandraSimilarity(SimilarityContract):
    @pytest.fixture
    async def pair(self, store: IndexingStore) -> Pair:
        index = await open_similarity_index(
            StoreSettings(backend="cassandra", similarity_search=True), store
        )
        assert index is not None
        return store, index


async def test_vector_rows_carry_the_store_ttl(
    store: IndexingStore, config: CassandraConfig, cql: Any
) -> None:
    [one] = clustered(SPACE_A, clusters=1, size=1)
    await store.put_many([one])

    table = table_name(SPACE_A.model, SPACE_A.revision)
    (ttl,) = cql.execute(
        f"SELECT TTL(input) FROM {config.keyspace}.{table} WHERE key = %s", (one.key,)
    ).one()
    assert config.vector_ttl_s - 60 <= ttl <= config.vector_ttl_s


async def test_a_space_without_a_table_fails_the_search_not_the_write(
    store: IndexingStore,
) -> None:
    unknown = Space("no-such-model", "rev-x", 16)
    [one] = clustered(unknown, clusters=1, size=1)

    await store.put_many([one])  # the cache write succeeds; the index write is skipped, logged

    assert one.key in await store.get_many([one.key])
    with pytest.raises(PreconditionFailed, match="embark schema apply"):
        await store.index.search(unknown, vectors.from_bytes(one.vector, 16), 5)


async def test_search_off_writes_no_vector_rows(config: CassandraConfig, cql: Any) -> None:
    plain = await open_store(StoreSettings(backend="cassandra", cassandra=config))
    assert isinstance(plain, CassandraStore)
    try:
        await plain.put_many(clustered(SPACE_A, clusters=1, size=2))
        assert await open_similarity_index(StoreSettings(backend="cassandra"), plain) is None
    finally:
        await plain.close()
    table = table_name(SPACE_A.model, SPACE_A.revision)
    assert cql.execute(f"SELECT count(*) FROM {config.keyspace}.{table}").one()[0] == 0


async def test_zero_vectors_are_stored_but_not_indexed(store: IndexingStore) -> None:
    rows = clustered(SPACE_A, clusters=1, size=2)
    zero = dataclasses.replace(row(SPACE_A, "nothing at all", np.ones(16)), vector=bytes(64))
    await store.put_many([*rows, zero])

    assert zero.key in await store.get_many([zero.key])
    found = await store.index.search(SPACE_A, np.ones(16, dtype=np.float32), 10)
    assert {n.key for n in found} == {r.key for r in rows}
