"""What the client answers with: ``EmbeddingResult`` and ``CategorizeResult`` (plain frozen
dataclasses over the protobuf answers; vectors stay bytes until ``array()``), and
``make_input``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from embark_api.v1 import embark_pb2, inputs_pb2
from embark_client._errors import InvalidInput

_LE_F32 = np.dtype("<f4")


@dataclass(frozen=True)
class EmbeddingResult:
    status: str
    model: str
    revision: str
    dim: int
    key: str
    reason: str
    vector: bytes  # little-endian float32; decoded only when asked

    @property
    def hit(self) -> bool:
        return self.status == "HIT"

    @property
    def final(self) -> bool:
        """HIT or FAILED: asking again will not change the answer (until a failure expires)."""
        return self.status in ("HIT", "FAILED")

    def array(self) -> npt.NDArray[np.float32]:
        if len(self.vector) != 4 * self.dim:
            raise ValueError(f"vector has {len(self.vector)} bytes, expected {4 * self.dim}")
        return np.frombuffer(self.vector, dtype=_LE_F32).astype(np.float32, copy=False)

    @classmethod
    def from_proto(cls, e: embark_pb2.Embedding) -> EmbeddingResult:
        return cls(
            embark_pb2.Status.Name(e.status), e.model, e.revision, e.dim, e.key, e.reason, e.vector
        )


@dataclass(frozen=True)
class CategorizeResult:
    """A head's answer: ``categories`` (label, probability), best first, only when HIT."""

    status: str
    categories: list[tuple[str, float]]
    model: str
    revision: str
    reason: str

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
        )


def make_input(*, text: str | None = None, image_url: str | None = None) -> inputs_pb2.Input:
    if text is not None and image_url is None:
        return inputs_pb2.Input(text=text)
    if image_url is not None and text is None:
        return inputs_pb2.Input(image_url=image_url)
    raise InvalidInput("give exactly one of text and image_url")
