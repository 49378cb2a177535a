"""The encoder interface. One Protocol; one file per implementation (text.py, image.py).

Encoding is split so the server can overlap the steps and batch across calls:
``preprocess`` turns one raw input into model-ready data (tokenise, decode an image) and raises
ItemFailed for that item alone; ``infer`` runs the ONNX session on a batch of prepared items.
Both are blocking CPU work: the server calls them in an executor, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

P = TypeVar("P")

EncoderKind = Literal["text", "image"]


class Encoder(Protocol[P]):
    name: str
    kind: EncoderKind
    dim: int
    revision: str

    def preprocess(self, raw: str | bytes) -> P:
        """One input -> prepared data. Text encoders take ``str``; image encoders take the
        fetched image ``bytes``. Raises ItemFailed when this input can never be encoded."""
        ...

    def infer(self, batch: Sequence[P]) -> npt.NDArray[np.float32]:
        """Prepared items -> an (n, dim) float32 array of L2-normalised embeddings."""
        ...

    def oov(self) -> npt.NDArray[np.float32]:
        """The model's out-of-vocabulary vector (dim,): what EmbArk answers on a miss. It is
        the embedding of a neutral input (empty text, a mid-grey image), so downstream models
        see an in-distribution vector rather than zeros."""
        ...
