"""The wire and storage form of a vector: little-endian float32 bytes with a checked dimension.

Vectors stay as bytes on the hit path (store -> response) and become numpy arrays only where a
computation needs them (categorizer heads, the client SDK).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from embark.errors import EmbarkError

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


def validate(blob: bytes, dim: int) -> None:
    """Raise DimensionMismatch unless ``blob`` is ``dim`` finite float32 values: what an
    encoder's answer must be before it is written to the archive for a whole TTL."""
    if not np.isfinite(from_bytes(blob, dim)).all():
        raise DimensionMismatch("vector has non-finite values")
