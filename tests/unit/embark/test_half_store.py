"""Half-precision storage (EMBARK_STORE__VECTOR_DTYPE=float16) on the SQLite store: rows are
written as float16 (half the bytes), every reader gets float32 back within a cosine of 0.9999,
float32 rows written before the switch still read, and a row of neither length is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from embark.backends import open_store
from embark.settings import StoreSettings
from embark.store.base import StoredVector
from embark.store.sqlite import SqliteConfig
from embark.vectors import DimensionMismatch

DIM = 384


def _rows(n: int, seed: int) -> tuple[list[StoredVector], np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype("<f4")
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows = [
        StoredVector(f"{seed}-{i:030d}", "m", "r", "text", f"t{i}", v[i].tobytes(), DIM, 0)
        for i in range(n)
    ]
    return rows, v


def _settings(path: Path, dtype: str) -> StoreSettings:
    return StoreSettings(sqlite=SqliteConfig(path=path), vector_dtype=dtype)  # type: ignore[arg-type]


async def test_float16_rows_are_half_the_bytes_and_read_back_as_close_float32(
    tmp_path: Path,
) -> None:
    path = tmp_path / "half.sqlite3"
    store = await open_store(_settings(path, "float16"))
    rows, v = _rows(200, seed=1)
    await store.put_many(rows)
    found = await store.get_many([r.key for r in rows])
    scanned = {r.key: r for r in await store.scan("m", "r")}
    await store.close()
    stored = dict(sqlite3.connect(path).execute("SELECT key, length(vector) FROM embeddings"))
    assert set(stored.values()) == {2 * DIM}
    for i, row in enumerate(rows):
        for got in (found[row.key], scanned[row.key]):
            assert isinstance(got, StoredVector)
            back = np.frombuffer(got.vector, dtype="<f4")
            assert back.shape == (DIM,)
            cosine = float(back @ v[i] / np.linalg.norm(back))
            assert cosine >= 0.9999


async def test_float32_rows_written_before_the_switch_still_read(tmp_path: Path) -> None:
    path = tmp_path / "mixed.sqlite3"
    old, _ = _rows(5, seed=2)
    plain = await open_store(_settings(path, "float32"))
    await plain.put_many(old)
    await plain.close()
    half = await open_store(_settings(path, "float16"))
    new, _ = _rows(5, seed=3)
    await half.put_many(new)
    found = await half.get_many([r.key for r in old + new])
    await half.close()
    for row in old:  # exact: written as float32, read as written
        got = found[row.key]
        assert isinstance(got, StoredVector)
        assert got.vector == row.vector
    for row in new:
        got = found[row.key]
        assert isinstance(got, StoredVector)
        assert len(got.vector) == 4 * DIM


async def test_a_vector_of_the_wrong_length_is_refused(tmp_path: Path) -> None:
    store = await open_store(_settings(tmp_path / "bad.sqlite3", "float16"))
    [row], _ = _rows(1, seed=4)
    with pytest.raises(DimensionMismatch):
        await store.put_many([StoredVector(row.key, "m", "r", "text", "t", b"\0" * 10, DIM, 0)])
    await store.close()
