"""The wire and storage form of a vector: little-endian float32 bytes with a checked dimension,
and the one place that converts it to an output dtype at response time (gRPC and HTTP both call
``convert``).

Vectors stay as bytes on the hit path (store -> response) and become numpy arrays only where a
computation needs them (categorizer heads, the client SDK, a dtype other than float32).

    dtype     bytes a value   384-d vector   1280-d vector
    float32   4               1,536 B        5,120 B       (stored form; no conversion)
    float16   2                 768 B        2,560 B
    int8      1                 384 B        1,280 B       round(127 * v), for unit vectors
    binary    1/8                48 B          160 B       sign bits, MSB first
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from embark.errors import EmbarkError, InvalidInput
from embark_api.v1 import embark_pb2

Dtype = embark_pb2.Dtype

_LE_F32 = np.dtype("<f4")


class DimensionMismatch(EmbarkError):
    """A vector's length disagrees with its model's dimension: corrupt or mixed data."""


def to_bytes(vector: npt.ArrayLike, dim: int) -> bytes:
    """Encode one vector as little-endian float32; refuse a wrong dimension or non-finite values."""
    # Values beyond float32's range become inf here and are refused below as non-finite, not
    # reported as a numpy overflow warning (an exception where warnings are errors).
    with np.errstate(over="ignore"):
        arr = np.asarray(vector, dtype=_LE_F32).reshape(-1)
    if arr.shape[0] != dim:
        raise DimensionMismatch(f"vector has {arr.shape[0]} values, model dimension is {dim}")
    if not np.isfinite(arr).all():
        raise DimensionMismatch("vector has non-finite values")
    return arr.tobytes()


def from_bytes(blob: bytes, dim: int) -> npt.NDArray[np.float32]:
    """Decode little-endian float32 bytes, checking the length against ``dim``."""
    check(blob, dim)
    return np.frombuffer(blob, dtype=_LE_F32).astype(np.float32, copy=False)


def check(blob: bytes, dim: int) -> None:
    """Raise DimensionMismatch unless ``blob`` holds exactly ``dim`` float32 values."""
    if len(blob) != 4 * dim:
        raise DimensionMismatch(f"vector has {len(blob)} bytes, expected {4 * dim} (dim {dim})")


_LE_F16 = np.dtype("<f2")


def check_stored(blob: bytes, dim: int) -> None:
    """Raise DimensionMismatch unless ``blob`` holds ``dim`` values as stored: float32, or
    float16 where the archive stores half precision (EMBARK_STORE__VECTOR_DTYPE)."""
    if len(blob) != 4 * dim and len(blob) != 2 * dim:
        raise DimensionMismatch(
            f"vector has {len(blob)} bytes, expected {4 * dim} or {2 * dim} (dim {dim})"
        )


def narrow(blob: bytes) -> bytes:
    """float32 bytes as the float16 the archive stores (half the bytes; cosine to the float32
    vector >= 0.9999 for unit vectors, docs/performance.md)."""
    return np.frombuffer(blob, dtype=_LE_F32).astype(_LE_F16).tobytes()


def widen(blob: bytes, dim: int) -> bytes:
    """Stored bytes as float32 (the wire form): float16 rows are widened, float32 returned as
    they are. Which one is read from the length, so archives that mix both still read."""
    if len(blob) == 2 * dim:
        return np.frombuffer(blob, dtype=_LE_F16).astype(_LE_F32).tobytes()
    return blob


def validate(blob: bytes, dim: int) -> None:
    """Raise DimensionMismatch unless ``blob`` is ``dim`` finite float32 values: what an
    encoder's answer must be before it is written to the archive for a whole TTL."""
    if not np.isfinite(from_bytes(blob, dim)).all():
        raise DimensionMismatch("vector has non-finite values")


def convert(blob: bytes, dtype: int) -> bytes:
    """Stored float32 bytes in ``dtype``'s layout (``embark_pb2.Dtype``; float32: unchanged).
    int8 and binary assume L2-normalised vectors (values in [-1, 1]), as every catalog model
    produces: int8 keeps 127 steps a component, binary the sign (Hamming-distance search)."""
    if dtype == Dtype.DTYPE_FLOAT32:
        return blob
    values = np.frombuffer(blob, dtype=_LE_F32)
    if dtype == Dtype.DTYPE_FLOAT16:
        return values.astype("<f2").tobytes()
    if dtype == Dtype.DTYPE_INT8:
        quantised: npt.NDArray[np.int8] = np.clip(np.rint(values * 127.0), -127, 127).astype(
            np.int8
        )
        return quantised.tobytes()
    if dtype == Dtype.DTYPE_BINARY:
        return np.packbits(values > 0).tobytes()
    raise ValueError(f"unknown dtype {dtype}")


_VALUE_TYPES: dict[int, np.dtype[np.generic]] = {
    Dtype.DTYPE_FLOAT32: _LE_F32,
    Dtype.DTYPE_FLOAT16: np.dtype("<f2"),
    Dtype.DTYPE_INT8: np.dtype(np.int8),
    Dtype.DTYPE_BINARY: np.dtype(np.uint8),  # the packed bytes, 8 values each
}


def values(converted: bytes, dtype: int) -> npt.NDArray[np.generic]:
    """``convert``'s output as numbers (for JSON): floats, int8s, or binary's packed bytes."""
    return np.frombuffer(converted, dtype=_VALUE_TYPES[dtype])


def apply_dtype(answers: Sequence[embark_pb2.Embedding], dtype: int) -> None:
    """Convert every answer's vector to ``dtype`` in place and say so in its ``dtype`` field:
    what the gRPC servicer and the HTTP routes call once per response."""
    if dtype == Dtype.DTYPE_FLOAT32:
        return
    if dtype not in _VALUE_TYPES:
        raise InvalidInput(f"unknown dtype {dtype}; use float32, float16, int8 or binary")
    for answer in answers:
        answer.vector = convert(answer.vector, dtype)
        answer.dtype = dtype  # type: ignore[assignment]
