"""The backend-agnostic contract of ``EmbeddingStore``: what every implementation must do.

A backend's test module subclasses ``StoreContract`` and provides an async ``store`` fixture
that yields an open, empty-or-not store; the tests never assume the store is empty (each test
works in its own model revision), never look inside the backend, and close nothing but what
they opened, so the same suite runs against SQLite, Cassandra and anything added later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from embark import vectors
from embark.keys import InputKind, canonical_input, derive_key
from embark.store.base import EmbeddingStore, FailureRecord, StoredVector
from embark.vectors import DimensionMismatch

_CREATED_AT_MS = 1_767_225_600_123  # 2026-01-01, with a millisecond part that must survive


def _revision() -> str:
    # Every test writes under its own revision, so a store shared between tests still gives
    # each test exactly its own rows.
    return f"rev-{uuid.uuid4().hex[:12]}"


def make_vector(
    raw: str,
    *,
    model: str = "contract-model",
    revision: str,
    kind: InputKind = "text",
    dim: int = 8,
    seed: int = 0,
) -> StoredVector:
    """A well-formed row: the key derived as EmbArk derives it, the canonical input beside."""
    canonical = canonical_input(kind, raw)
    key = derive_key(model, revision, kind, canonical)
    values = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return StoredVector(
        key=key.digest,
        model=model,
        revision=revision,
        kind=kind,
        input=canonical,
        vector=vectors.to_bytes(values, dim),
        dim=dim,
        created_at_ms=_CREATED_AT_MS + seed,
    )


def make_failure(row: StoredVector, *, reason: str = "not_found") -> FailureRecord:
    return FailureRecord(
        key=row.key,
        model=row.model,
        revision=row.revision,
        reason=reason,
        message=f"GET {row.input}: 404",
        failed_at_ms=_CREATED_AT_MS + 7,
    )


class StoreContract:
    """Mix into ``class TestXStore(StoreContract)`` beside a ``store`` fixture."""

    # Backends whose every call is a network round trip may lower this; the contract only
    # needs "a batch", not a particular size.
    batch_size: ClassVar[int] = 200

    async def test_is_an_embedding_store(self, store: EmbeddingStore) -> None:
        assert isinstance(store, EmbeddingStore)

    async def test_absent_keys_are_absent(self, store: EmbeddingStore) -> None:
        revision = _revision()
        keys = [make_vector(f"never written {i}", revision=revision).key for i in range(3)]
        assert dict(await store.get_many(keys)) == {}
        assert dict(await store.get_many([])) == {}

    async def test_round_trip_keeps_every_field(self, store: EmbeddingStore) -> None:
        revision = _revision()
        text = make_vector("  Ünïcode\u00a0text,\twith   spaces ", revision=revision, dim=384)
        image = make_vector(
            "HTTPS://Example.COM:443/a%7Eb.png#frag", revision=revision, kind="image", dim=16
        )
        await store.put_many([text, image])

        found = await store.get_many([text.key, image.key])

        assert found == {text.key: text, image.key: image}
        stored = found[text.key]
        assert isinstance(stored, StoredVector)
        assert stored.vector == text.vector  # bytes, bit for bit
        np.testing.assert_array_equal(
            vectors.from_bytes(stored.vector, stored.dim),
            vectors.from_bytes(text.vector, text.dim),
        )

    async def test_re_put_is_idempotent(self, store: EmbeddingStore) -> None:
        revision = _revision()
        row = make_vector("same input twice", revision=revision)
        await store.put_many([row])
        await store.put_many([row])
        await store.put_many([row, row])  # a batch may repeat a key (KFC redelivery)

        assert dict(await store.get_many([row.key, row.key])) == {row.key: row}
        assert list(await store.scan(row.model, revision)) == [row]

    async def test_empty_writes_are_no_ops(self, store: EmbeddingStore) -> None:
        await store.put_many([])
        await store.put_failures([])

    async def test_failure_record_is_returned(self, store: EmbeddingStore) -> None:
        revision = _revision()
        failure = make_failure(make_vector("http://example.com/gone.png", revision=revision))
        await store.put_failures([failure])

        found = await store.get_many([failure.key])

        assert found == {failure.key: failure}
        assert isinstance(found[failure.key], FailureRecord)

    async def test_vector_supersedes_failure(self, store: EmbeddingStore) -> None:
        revision = _revision()
        row = make_vector("flaky input", revision=revision)
        await store.put_failures([make_failure(row)])
        await store.put_many([row])

        assert dict(await store.get_many([row.key])) == {row.key: row}

    async def test_vector_wins_over_a_later_failure(self, store: EmbeddingStore) -> None:
        # A late failure (e.g. a redelivered job whose retry failed) never hides a stored vector.
        revision = _revision()
        row = make_vector("already computed", revision=revision)
        await store.put_many([row])
        await store.put_failures([make_failure(row)])

        assert dict(await store.get_many([row.key])) == {row.key: row}

    async def test_batch_mixes_vectors_failures_and_misses(self, store: EmbeddingStore) -> None:
        revision = _revision()
        rows = [make_vector(f"item {i}", revision=revision, seed=i) for i in range(self.batch_size)]
        stored = rows[::2]
        failed = [make_failure(row) for row in rows[1::4]]
        await store.put_many(stored)
        await store.put_failures(failed)

        found = await store.get_many([row.key for row in rows])

        expected = {row.key: row for row in stored} | {f.key: f for f in failed}
        assert dict(found) == expected
        assert len(found) < len(rows)  # the rest are misses, absent from the result

    async def test_scan_returns_exactly_one_revision(self, store: EmbeddingStore) -> None:
        model = f"scan-model-{uuid.uuid4().hex[:8]}"
        wanted, other = _revision(), _revision()
        mine = [make_vector(f"x{i}", model=model, revision=wanted, seed=i) for i in range(25)]
        theirs = [make_vector(f"x{i}", model=model, revision=other, seed=i) for i in range(5)]
        await store.put_many(mine + theirs)
        await store.put_failures([make_failure(make_vector("bad", model=model, revision=wanted))])

        scanned = await store.scan(model, wanted)

        assert all(isinstance(row, StoredVector) for row in scanned)
        assert sorted(scanned, key=lambda row: row.key) == sorted(mine, key=lambda row: row.key)
        assert list(await store.scan(model, _revision())) == []
        assert list(await store.scan("no-such-model", wanted)) == []

    async def test_dimension_mismatch_is_refused_on_write(self, store: EmbeddingStore) -> None:
        revision = _revision()
        good = make_vector("fine", revision=revision, dim=8)
        short = make_vector("short", revision=revision, dim=8)
        wrong = dataclasses.replace(short, vector=short.vector[:-4])

        with pytest.raises(DimensionMismatch):
            await store.put_many([good, wrong])

        # Validation precedes writing: the good row of the refused batch was not written.
        assert dict(await store.get_many([good.key, wrong.key])) == {}

    async def test_ping_answers(self, store: EmbeddingStore) -> None:
        await store.ping()

    async def test_close_is_idempotent(self, store: EmbeddingStore) -> None:
        await store.close()
        await store.close()

    @settings(
        max_examples=15,
        deadline=None,
        # One store serves every example: each example writes its own key. The contract is run
        # on purpose by one subclass per backend, so the same test is seen from several
        # executors; each subclass has its own store and examples share no state.
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(
        data=st.integers(min_value=1, max_value=64).flatmap(
            lambda dim: arrays(
                np.float32,
                dim,
                elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
            )
        )
    )
    async def test_vector_bytes_round_trip(
        self, store: EmbeddingStore, data: np.ndarray[tuple[int], np.dtype[np.float32]]
    ) -> None:
        blob = vectors.to_bytes(data, data.shape[0])
        key = hashlib.blake2b(blob, digest_size=16).hexdigest()
        row = StoredVector(
            key=key,
            model="contract-model",
            revision="property",
            kind="text",
            input=f"vector {key}",
            vector=blob,
            dim=data.shape[0],
            created_at_ms=_CREATED_AT_MS,
        )
        await store.put_many([row])

        found = await store.get_many([key])

        assert found == {key: row}
        stored = found[key]
        assert isinstance(stored, StoredVector)
        np.testing.assert_array_equal(vectors.from_bytes(stored.vector, stored.dim), data)
