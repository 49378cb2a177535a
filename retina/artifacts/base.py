"""Model artifacts: how a catalog model is built from registry packages, and what the build
reports. One builder per model family (text.py, image.py); ``retina.artifacts.build`` runs
them, caches each output under the content hash of its inputs, and writes the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from retina.encoders.base import EncoderKind


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
    served ONNX file whose bytes (with ``preprocessing_version``) define the revision."""

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


class ModelBuilder(Protocol):
    name: str
    kind: EncoderKind
    dim: int

    def inputs_digest(self) -> str:
        """A hash of everything the build reads (source files' bytes, builder version, settings
        that change the output). Same digest -> the cached artifact is reused, nothing rebuilt."""
        ...

    def build(self, out_dir: Path) -> BuildReport:
        """Build into an empty ``out_dir``; raise ArtifactError (e.g. below the parity gate)."""
        ...

    def validate(self, artifact_dir: Path) -> Parity:
        """Re-measure the parity of a complete build in ``artifact_dir`` against the fp32
        reference, without rebuilding; raise ArtifactError below the gate."""
        ...
