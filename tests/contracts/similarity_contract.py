"""The backend-agnostic contract of ``SimilarityIndex``: what every implementation must do.

A backend's test module subclasses ``SimilarityContract`` and provides an async ``pair``
fixture yielding ``(store, index)``: an ``EmbeddingStore`` whose ``put_many`` makes rows
searchable (for Cassandra, the ``IndexingStore`` that ``open_store`` builds) and the index
itself, with the spaces in ``SPACES`` set up as ``embark schema apply`` sets them up and
nothing written yet. Every score is checked against numpy's cosine of the same vectors.
"""

from __future__ import annotations

import numpy as np
import pytest

from embark import vectors
from embark.keys import canonical_text, derive_key
from embark.similar.base import F32, SimilarityIndex, Space
from embark.store.base import EmbeddingStore, StoredVector

SPACE_A = Space("sim-a", "rev-1", 16)
SPACE_A2 = Space("sim-a", "rev-2", 16)  # same model, next revision: never mixed with SPACE_A
SPACE_B = Space("sim-b", "rev-1", 8)
SPACES = (SPACE_A, SPACE_A2, SPACE_B)

Pair = tuple[EmbeddingStore, SimilarityIndex]


def row(space: Space, text: str, values: F32) -> StoredVector:
    canonical = canonical_text(text)
    return StoredVector(
        key=derive_key(space.model, space.revision, "text", canonical).digest,
        model=space.model,
        revision=space.revision,
        kind="text",
        input=canonical,
        vector=vectors.to_bytes(values, space.dim),
        dim=space.dim,
        created_at_ms=1_767_225_600_000,
    )


def clustered(space: Space, clusters: int, size: int, seed: int = 7) -> list[StoredVector]:
    """``clusters`` random directions, each with ``size`` noisy copies (cosine ~0.99 within a
    cluster, ~0 across): the shape of near-duplicates among distinct items."""
    rng = np.random.default_rng(seed)
    anchors = rng.standard_normal((clusters, space.dim)).astype(np.float32)
    rows = []
    for c in range(clusters):
        for i in range(size):
            noisy = anchors[c] + 0.05 * rng.standard_normal(space.dim).astype(np.float32)
            rows.append(row(space, f"item {c}-{i}", noisy / np.linalg.norm(noisy)))
    return rows


def numpy_cosines(rows: list[StoredVector], query: F32) -> dict[str, float]:
    matrix = np.stack([vectors.from_bytes(r.vector, r.dim) for r in rows]).astype(np.float64)
    q = query.astype(np.float64)
    scores = matrix @ q / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q))
    return {r.key: float(s) for r, s in zip(rows, scores, strict=True)}


class SimilarityContract:
    async def test_nearest_first_with_numpys_cosine(self, pair: Pair) -> None:
        store, index = pair
        rows = clustered(SPACE_A, clusters=6, size=10)
        await store.put_many(rows)
        query = vectors.from_bytes(rows[25].vector, SPACE_A.dim) + np.float32(0.01)

        found = await index.search(SPACE_A, query, 10)

        exact = numpy_cosines(rows, query)
        best = sorted(exact, key=exact.__getitem__, reverse=True)[:10]
        assert [n.key for n in found] == best
        for n in found:
            assert n.score == pytest.approx(exact[n.key], abs=1e-5)
        by_key = {r.key: r.input for r in rows}
        assert all(n.input == by_key[n.key] for n in found)

    async def test_scores_are_cosines_from_minus_one_to_one(self, pair: Pair) -> None:
        store, index = pair
        v = np.zeros(SPACE_B.dim, dtype=np.float32)
        v[0] = 3.0  # not unit length: the score is the cosine, not the dot product
        w = np.zeros(SPACE_B.dim, dtype=np.float32)
        w[1] = 0.5
        rows = [row(SPACE_B, "same", v), row(SPACE_B, "opposite", -v), row(SPACE_B, "right", w)]
        await store.put_many(rows)

        found = await index.search(SPACE_B, v / 3, 3)

        assert [(n.input, round(n.score, 5)) for n in found] == [
            ("same", 1.0),
            ("right", 0.0),
            ("opposite", -1.0),
        ]

    async def test_revisions_never_mix(self, pair: Pair) -> None:
        store, index = pair
        old = clustered(SPACE_A, clusters=2, size=5)
        new = clustered(SPACE_A2, clusters=2, size=5)  # the same vectors, other keys
        await store.put_many(old + new)

        found = await index.search(SPACE_A2, vectors.from_bytes(new[0].vector, 16), 10)

        assert {n.key for n in found} == {r.key for r in new}

    async def test_k_bounds_the_answer(self, pair: Pair) -> None:
        store, index = pair
        rows = clustered(SPACE_A, clusters=3, size=4)
        await store.put_many(rows)
        query = vectors.from_bytes(rows[0].vector, 16)

        assert len(await index.search(SPACE_A, query, 3)) == 3
        assert len(await index.search(SPACE_A, query, 1000)) == len(rows)

    async def test_an_empty_space_has_no_neighbours(self, pair: Pair) -> None:
        store, index = pair
        await store.put_many(clustered(SPACE_A, clusters=1, size=3))

        assert await index.search(SPACE_B, np.ones(8, dtype=np.float32), 5) == []

    async def test_writing_again_changes_nothing(self, pair: Pair) -> None:
        store, index = pair
        rows = clustered(SPACE_A, clusters=2, size=3)
        await store.put_many(rows)
        await store.put_many(rows)  # a redelivered batch: idempotent

        found = await index.search(SPACE_A, vectors.from_bytes(rows[0].vector, 16), 100)

        assert sorted(n.key for n in found) == sorted(r.key for r in rows)

    async def test_rows_written_after_a_search_are_found(self, pair: Pair) -> None:
        store, index = pair
        first = clustered(SPACE_A, clusters=1, size=3, seed=1)
        await store.put_many(first)
        query = vectors.from_bytes(first[0].vector, 16)
        assert len(await index.search(SPACE_A, query, 10)) == 3

        later = clustered(SPACE_A, clusters=1, size=2, seed=2)
        await store.put_many(later)

        found = await index.search(SPACE_A, query, 10)
        assert {n.key for n in found} == {r.key for r in first + later}
