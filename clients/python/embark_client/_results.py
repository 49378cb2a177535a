"""What the client answers with: ``EmbeddingResult`` and ``CategorizeResult`` (plain frozen
dataclasses over the protobuf answers; vectors stay bytes until ``array()``), and
``make_input``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from embark_api.v1 import embark_pb2, inputs_pb2
from embark_client._errors import InvalidInput

_LAYOUTS: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int8": np.dtype(np.int8),
    "binary": np.dtype(np.uint8),
}


def dtype_value(name: str) -> int:
    """The request field for an output dtype name (float32, float16, int8, binary)."""
    if name not in _LAYOUTS:
        raise InvalidInput(f"unknown dtype {name!r}; use one of {', '.join(_LAYOUTS)}")
    return embark_pb2.Dtype.Value("DTYPE_" + name.upper())


@dataclass(frozen=True)
class EmbeddingResult:
    status: str
    model: str
    revision: str
    dim: int
    key: str
    reason: str
    vector: bytes  # laid out as `dtype` says (little-endian float32 by default)
    dtype: str = "float32"  # float32 | float16 | int8 | binary (packed sign bits)

    @property
    def hit(self) -> bool:
        return self.status == "HIT"

    @property
    def final(self) -> bool:
        """HIT or FAILED: asking again will not change the answer (until a failure expires)."""
        return self.status in ("HIT", "FAILED")

    def array(self) -> npt.NDArray[Any]:
        """The vector as numbers: float32 (or float16, int8) values, or binary's packed bytes
        (``np.unpackbits(result.array())[:dim]`` gives the bits)."""
        layout = _LAYOUTS[self.dtype]
        expected = (self.dim + 7) // 8 if self.dtype == "binary" else layout.itemsize * self.dim
        if len(self.vector) != expected:
            raise ValueError(f"vector has {len(self.vector)} bytes, expected {expected}")
        return np.frombuffer(self.vector, dtype=layout)

    @classmethod
    def from_proto(cls, e: embark_pb2.Embedding) -> EmbeddingResult:
        return cls(
            embark_pb2.Status.Name(e.status),
            e.model,
            e.revision,
            e.dim,
            e.key,
            e.reason,
            e.vector,
            embark_pb2.Dtype.Name(e.dtype).removeprefix("DTYPE_").lower(),
        )


@dataclass(frozen=True)
class CategorizeResult:
    """A head's answer: ``categories`` (label, probability), best first, when HIT (or UNCERTAIN:
    the candidates, the best below the asked ``min_probability``). ``section`` (the HS section,
    e.g. "XVI", and its probability) only for heads whose labels are HS chapters."""

    status: str
    categories: list[tuple[str, float]]
    model: str
    revision: str
    reason: str
    section: tuple[str, float] | None = None
    section_title: str = ""

    @property
    def hit(self) -> bool:
        return self.status == "HIT"

    @classmethod
    def from_proto(cls, r: embark_pb2.CategorizeResponse) -> CategorizeResult:
        return cls(
            embark_pb2.Status.Name(r.status),
            [(c.label, c.probability) for c in r.categories],
            r.model,
            r.revision,
            r.reason,
            (r.section.label, r.section.probability) if r.section.label else None,
            r.section_title,
        )


def make_input(*, text: str | None = None, image_url: str | None = None) -> inputs_pb2.Input:
    if text is not None and image_url is None:
        return inputs_pb2.Input(text=text)
    if image_url is not None and text is None:
        return inputs_pb2.Input(image_url=image_url)
    raise InvalidInput("give exactly one of text and image_url")
