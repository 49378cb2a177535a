"""`embark export --all` on the real Cassandra archive (EMBARK_STORE__* names it, as for
`embark serve`): every stored vector of the model's revision, and none of another revision."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from embark import vectors
from embark.catalog import ModelSpec, model_entry
from embark.cli import main
from embark.keys import derive_key
from embark.store.base import StoredVector
from embark.store.cassandra import CassandraConfig, apply_schema, open_cassandra_store
from tests.integration.servers import LOCAL_DC

SPEC = ModelSpec(name="m", kind="text", dim=3, revision="r-now", oov=vectors.to_bytes([0] * 3, 3))


def row(text: str, revision: str, values: list[float]) -> StoredVector:
    return StoredVector(
        derive_key(SPEC.name, revision, "text", text).digest, SPEC.name, revision, "text", text,
        vectors.to_bytes(values, 3), 3, 1,
    )  # fmt: skip


def test_export_all_reads_cassandra(
    cassandra_contact: str,
    keyspace_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = CassandraConfig(
        contact_points=(cassandra_contact,), keyspace=keyspace_name, local_dc=LOCAL_DC
    )
    apply_schema(config)

    async def seed() -> None:
        store = await open_cassandra_store(config)
        try:
            await store.put_many(
                [
                    row("one", "r-now", [1, 0, 0]),
                    row("two", "r-now", [0, 1, 0]),
                    row("old", "r-before", [0, 0, 1]),  # another revision: not exported
                ]
            )
        finally:
            await store.close()

    asyncio.run(seed())
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"format": 1, "models": [model_entry(SPEC)]}))
    monkeypatch.setenv("EMBARK_STORE__BACKEND", "cassandra")
    monkeypatch.setenv("EMBARK_STORE__CASSANDRA__CONTACT_POINTS", json.dumps([cassandra_contact]))
    monkeypatch.setenv("EMBARK_STORE__CASSANDRA__KEYSPACE", keyspace_name)
    monkeypatch.setenv("EMBARK_STORE__CASSANDRA__LOCAL_DC", LOCAL_DC)
    out = tmp_path / "all.npz"
    argv = ["export", "--all", "--model", "m", "--catalog", str(catalog), "--out", str(out)]
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (doc["written"], doc["store"], doc["revision"]) == (2, "cassandra", "r-now")
    with np.load(out) as npz:
        by_input = dict(zip(npz["inputs"].tolist(), npz["vectors"].tolist(), strict=True))
    assert by_input == {"one": [1.0, 0.0, 0.0], "two": [0.0, 1.0, 0.0]}
