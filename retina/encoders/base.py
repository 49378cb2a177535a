"""The encoder interface. One Protocol; one file per implementation (text.py, image.py).

Encoding is split so the server can overlap the steps and batch across calls:
``preprocess`` turns one raw input into model-ready data (tokenise, decode an image) and raises
ItemFailed for that item alone; ``infer`` runs the ONNX session on a batch of prepared items.
Both are blocking CPU work: the server calls them in an executor, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

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


# Graph rewrites that cost more than they save on CPU. SkipLayerNormFusion turns Add (+ bias)
# + LayerNormalization into the contrib SkipLayerNormalization, whose CPU kernel took 0.24 ms
# for a (64, 384) input where Add + LayerNormalization took 0.06 ms (onnxruntime 1.32, 1
# thread, one-node graphs); MiniLM-L6 has 12 of them, and leaving them unfused cut its int8
# CPU time by ~20% (bench/encoders.py: the "SkipLayerNorm fused" row).
DISABLED_OPTIMIZERS: Final = ("SkipLayerNormFusion",)


def new_session(model: Path | bytes, *, intra_op_threads: int) -> ort.InferenceSession:
    """A CPU session with full graph optimisation; shared by serving and the build's timing so
    the reported latency is the served configuration."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads
    # One model, one request stream per session: inter-op parallelism only adds thread contention.
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(
        source,
        sess_options=opts,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )


def l2_normalize(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Rows scaled to unit length; the floor keeps an all-zero row finite (it stays zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.asarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


OutputDtype = Literal["float32", "float16"]


def finish_vectors(
    x: npt.NDArray[np.float32],
    *,
    normalize: bool = True,
    dimensions: int | None = None,
    dtype: OutputDtype = "float32",
) -> npt.NDArray[np.float32]:
    """The one post-processing step every encoder ends with: Matryoshka truncation to
    ``dimensions`` (before normalising, so the truncated vector is unit length), L2
    normalisation, and rounding to ``dtype``'s precision. The result stays a float32 array
    (the wire and archive format); float16 rounding makes the revision's vectors exactly
    representable in half precision, so a store may keep them at half the size losslessly."""
    if dimensions is not None:
        x = np.ascontiguousarray(x[..., :dimensions])
    if normalize:
        x = l2_normalize(x)
    if dtype == "float16":
        x = x.astype(np.float16).astype(np.float32)
    return np.asarray(x, dtype=np.float32)
