"""Vector bytes: little-endian float32 with a checked dimension, finite values only."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from embark import vectors
from embark.vectors import DimensionMismatch

FINITE_F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
VECTORS = st.integers(min_value=1, max_value=512).flatmap(
    lambda dim: arrays(np.float32, dim, elements=FINITE_F32)
)


@given(VECTORS)
def test_round_trip_is_exact(vector: np.ndarray) -> None:  # type: ignore[type-arg]
    dim = vector.shape[0]
    blob = vectors.to_bytes(vector, dim)

    assert len(blob) == 4 * dim
    decoded = vectors.from_bytes(blob, dim)
    assert decoded.dtype == np.float32
    # Bit for bit, signed zeros included.
    assert decoded.tobytes() == vector.astype("<f4").tobytes()
    assert vectors.to_bytes(decoded, dim) == blob


@given(VECTORS)
def test_bytes_are_little_endian_whatever_the_input_order(vector: np.ndarray) -> None:  # type: ignore[type-arg]
    big_endian = vector.astype(">f4")
    assert vectors.to_bytes(big_endian, vector.shape[0]) == vector.astype("<f4").tobytes()


def test_known_encoding() -> None:
    assert vectors.to_bytes([1.0, -2.0], 2) == bytes.fromhex("0000803f000000c0")
    np.testing.assert_array_equal(vectors.from_bytes(bytes.fromhex("0000803f"), 1), [1.0])


def test_lists_and_column_vectors_are_accepted() -> None:
    assert vectors.to_bytes([[0.5], [0.25]], 2) == vectors.to_bytes(np.array([0.5, 0.25]), 2)


@given(st.integers(min_value=1, max_value=64), st.integers(min_value=-3, max_value=3))
def test_wrong_dimension_is_refused(dim: int, delta: int) -> None:
    if delta == 0 or dim + delta < 0:
        return
    values = np.zeros(dim + delta, dtype=np.float32)
    with pytest.raises(DimensionMismatch):
        vectors.to_bytes(values, dim)
    with pytest.raises(DimensionMismatch):
        vectors.from_bytes(values.tobytes(), dim)
    with pytest.raises(DimensionMismatch):
        vectors.check(values.tobytes(), dim)


@pytest.mark.parametrize("blob", [b"", b"\x00", b"\x00" * 7, b"\x00" * 9])
def test_truncated_bytes_are_refused(blob: bytes) -> None:
    with pytest.raises(DimensionMismatch, match="expected 8 "):
        vectors.from_bytes(blob, 2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    with pytest.raises(DimensionMismatch, match="non-finite"):
        vectors.to_bytes([0.0, bad, 1.0], 3)


def test_values_overflowing_float32_are_refused() -> None:
    # Finite as float64, infinite once stored as float32.
    with pytest.raises(DimensionMismatch, match="non-finite"):
        vectors.to_bytes(np.array([1e300, 0.0]), 2)
