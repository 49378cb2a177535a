"""The numpy serialiser of ``vector<float, n>`` bind markers (embark/similar/cassandra.py)
writes exactly the driver's bytes, refuses a wrong length, and leaves other columns alone;
plus the vector table names (readable, distinct per revision, within Cassandra's limit)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from cassandra.cqltypes import UTF8Type, lookup_casstype
from cassandra.protocol import ColumnMetadata

from embark.similar.cassandra import _fast_vectors, table_name

VECTOR_384 = lookup_casstype(
    "org.apache.cassandra.db.marshal.VectorType(org.apache.cassandra.db.marshal.FloatType, 384)"
)


def test_same_bytes_as_the_driver_and_length_checked() -> None:
    statement = SimpleNamespace(
        column_metadata=[
            ColumnMetadata("ks", "t", "key", UTF8Type),
            ColumnMetadata("ks", "t", "v", VECTOR_384),
        ]
    )
    _fast_vectors(statement)
    key_type, fast = (c.type for c in statement.column_metadata)
    values = np.random.default_rng(0).standard_normal(384).astype(np.float32)

    assert key_type is UTF8Type
    assert fast.serialize(values, 5) == VECTOR_384.serialize(values.tolist(), 5)
    assert fast.deserialize(fast.serialize(values, 5), 5) == pytest.approx(values.tolist())
    with pytest.raises(ValueError, match="383 values"):
        fast.serialize(values[:-1], 5)


def test_table_names() -> None:
    a, b = table_name("minilm-l6", "r-1"), table_name("minilm-l6", "r-2")
    long = table_name("A" * 200 + " model", "r-1")

    assert a.startswith("vec_minilm_l6_")
    assert a != b
    assert len(long) <= 48
    assert long.replace("_", "").isalnum()
    assert long.islower()
