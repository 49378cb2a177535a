"""Model artifacts: what a build reports and the builder interface. One builder per model
kind (text.py, image.py), made from a user's definition (definition.py);
``retina.artifacts.build`` runs them, caches each output under the content hash of its inputs,
and writes the catalog.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from retina.encoders.base import EncoderKind
from retina.errors import ArtifactError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Parity:
    """Cosine similarity of the served (quantized) model against its fp32 reference on a fixed
    sample. ``reference`` names what was compared against."""

    cos_min: float
    cos_mean: float
    n: int
    reference: str


@dataclass(frozen=True, slots=True)
class BuildReport:
    """What a build produced. ``files`` are relative to the output directory; ``model`` is the
    served ONNX file. ``defines`` is the canonical JSON of everything that defines the vectors
    (source hashes, preprocessing, pooling, served precision, dtype, recipe version): the
    revision is its hash, so two machines building one definition agree on it even when their
    quantizers write different bytes."""

    name: str
    kind: EncoderKind
    dim: int
    model: str
    preprocessing_version: str
    size_bytes: int
    parity: Parity
    latency_ms_b1: float
    files: tuple[str, ...] = ()
    extra: dict[str, float | str] = field(default_factory=dict)
    defines: str = ""
    precision: str = "int8"
    dtype: str = "float32"
    fold_case: bool = False
    dimensions: int | None = None


def canonical(doc: Any) -> str:
    """One JSON spelling of ``doc`` (sorted keys, no spaces): the input of the revision hash."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def row_cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Row-wise cosine of two ``(n, dim)`` arrays (a zero row gives 0, not NaN)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.asarray((a64 * b64).sum(axis=1) / np.maximum(norms, 1e-30))


# Distinct inputs that embed to nearly one vector mean the inputs are not reaching the model
# as it expects (pixels in the wrong scale or order, a wrong output tensor): measured, correct
# specs give mean pairwise cosine 0.3-0.8 on the default samples.
MAX_MEAN_PAIRWISE_COS = 0.98
MIN_REFERENCE_COS = 0.99


def check_spread(name: str, vectors: npt.NDArray[np.float32], hint: str) -> float:
    """Refuse a model whose distinct sample inputs all embed alike; returns the mean pairwise
    cosine."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)
    sims = unit @ unit.T
    n = len(unit)
    mean = float((sims.sum() - np.trace(sims)) / max(n * (n - 1), 1))
    if mean > MAX_MEAN_PAIRWISE_COS:
        raise ArtifactError(
            f"{name}: distinct sample inputs embed almost identically (mean pairwise cosine "
            f"{mean:.4f} > {MAX_MEAN_PAIRWISE_COS}): the model is not seeing its inputs as "
            f"trained. {hint}"
        )
    return mean


def check_reference(name: str, got: npt.NDArray[np.float32], reference: Path, hint: str) -> float:
    """The fp32 build must reproduce the vectors of the user's own pipeline (``reference``,
    an .npy of shape (n, dim) for the parity sample); returns the mean cosine."""
    try:
        want = np.load(reference, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{name}: cannot read reference vectors {reference}: {exc}") from None
    if want.shape[0] != got.shape[0] or want.ndim != 2:
        raise ArtifactError(
            f"{name}: {reference} holds {want.shape}, expected one row per sample input "
            f"({got.shape[0]})"
        )
    dim = min(want.shape[1], got.shape[1])
    cos = row_cosines(got[:, :dim], want[:, :dim].astype(np.float32))
    if float(cos.mean()) < MIN_REFERENCE_COS:
        raise ArtifactError(
            f"{name}: the fp32 build does not reproduce your reference vectors (cosine mean "
            f"{cos.mean():.4f}, min {cos.min():.4f}, need {MIN_REFERENCE_COS}). {hint}"
        )
    return float(cos.mean())


class ModelBuilder(Protocol):
    name: str
    kind: EncoderKind

    def inputs_digest(self) -> str:
        """A hash of everything the build reads (source files' bytes, builder version, settings
        that change the output). Same digest -> the cached artifact is reused, nothing rebuilt."""
        ...

    def build(self, out_dir: Path) -> BuildReport:
        """Build into an empty ``out_dir``; raise ArtifactError (e.g. below the parity gate,
        with what the user should change)."""
        ...

    def validate(self, artifact_dir: Path) -> Parity:
        """Re-measure the parity of a complete build in ``artifact_dir`` against the fp32
        reference, without rebuilding; raise ArtifactError below the gate."""
        ...
