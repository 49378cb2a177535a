"""`embark schema apply` with similarity search on, and `embark index backfill`, against a real
Cassandra 5.0: vectors written while search was off become searchable after the backfill."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embark import vectors
from embark.catalog import CATALOG_FORMAT, ModelSpec, model_entry
from embark.cli import main
from embark.similar.cassandra import CassandraSimilarityIndex
from embark.store.cassandra import CassandraConfig, open_cassandra_store
from tests.contracts.similarity_contract import SPACE_A, clustered
from tests.integration.servers import LOCAL_DC, cassandra_cluster, parse_address

SPEC = ModelSpec(
    name=SPACE_A.model,
    kind="text",
    dim=SPACE_A.dim,
    revision=SPACE_A.revision,
    oov=vectors.to_bytes(np.ones(SPACE_A.dim), SPACE_A.dim),
)


@pytest.fixture
def environment(
    cassandra_contact: str, keyspace_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CassandraConfig]:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"format": CATALOG_FORMAT, "models": [model_entry(SPEC)]}))
    for name, value in {
        "EMBARK_CATALOG": str(catalog),
        "EMBARK_STORE__BACKEND": "cassandra",
        "EMBARK_STORE__CASSANDRA__CONTACT_POINTS": json.dumps([cassandra_contact]),
        "EMBARK_STORE__CASSANDRA__KEYSPACE": keyspace_name,
        "EMBARK_STORE__CASSANDRA__LOCAL_DC": LOCAL_DC,
        "EMBARK_STORE__CASSANDRA__REQUEST_TIMEOUT_S": "15",
    }.items():
        monkeypatch.setenv(name, value)
    config = CassandraConfig(
        contact_points=(cassandra_contact,),
        keyspace=keyspace_name,
        local_dc=LOCAL_DC,
        request_timeout_s=15,
    )
    try:
        yield config
    finally:
        cluster = cassandra_cluster(*parse_address(cassandra_contact, 9042))
        try:
            cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {keyspace_name}", timeout=60)
        finally:
            cluster.shutdown()


async def _search(config: CassandraConfig, query: Any) -> set[str]:
    store = await open_cassandra_store(config)
    try:
        return {n.key for n in await CassandraSimilarityIndex(store).search(SPACE_A, query, 50)}
    finally:
        await store.close()


async def _write_without_search(config: CassandraConfig, rows: Any) -> None:
    store = await open_cassandra_store(config)
    try:
        await store.put_many(rows)
    finally:
        await store.close()


def test_backfill_indexes_what_was_stored_before(
    environment: CassandraConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["schema", "apply"]) == 0  # search off: the store's tables only
    rows = clustered(SPACE_A, clusters=2, size=4)
    asyncio.run(_write_without_search(environment, rows))

    monkeypatch.setenv("EMBARK_STORE__SIMILARITY_SEARCH", "true")
    assert main(["schema", "apply"]) == 0  # now the vector table too
    query = vectors.from_bytes(rows[0].vector, SPACE_A.dim)
    assert asyncio.run(_search(environment, query)) == set()

    assert main(["index", "backfill", "--no-progress"]) == 0

    assert asyncio.run(_search(environment, query)) == {r.key for r in rows}


def test_backfill_of_an_unknown_model_is_a_clear_error(
    environment: CassandraConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["index", "backfill", "--model", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
