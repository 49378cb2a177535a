"""The text encoder on OpenVINO: the second Retina backend (``backend = "openvino"``).

Owns how a built OpenVINO text artifact (``model.xml`` + ``model.bin`` + ``tokenizer.json`` +
``encoder.json`` + ``openvino.json``) is compiled for the CPU and run. Tokenising, padding,
length bucketing, pooling and post-processing are ``retina.encoders.text.TextEncoder``'s: this
module only supplies the session it calls (``OpenVINOSession``, the slice of onnxruntime's
``InferenceSession`` the encoder uses), so both backends serve through one code path and the
same ``Encoder`` interface.

The artifact is quantized by NNCF with *static* activation scales (``retina.artifacts.
text_openvino``): no scale depends on the batch, so a padded batch gives every row the vector
it gets alone (``tests/unit/retina/test_text_openvino.py`` measures it) and Retina runs padded,
length-bucketed batches. ``openvino`` is an optional extra (``uv sync --extra openvino``): the
import fails with an ArtifactError naming the extra, never at Retina's import time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from retina.encoders import text
from retina.errors import ArtifactError

MODEL_FILE: Final = "model.xml"
WEIGHTS_FILE: Final = "model.bin"
CONFIG_FILE: Final = "openvino.json"
# The precision OpenVINO runs the ops left in floating point in (everything but the int8
# MatMuls): "bf16" uses AMX / AVX512-BF16 where the CPU has them (cosine 0.99999 to f32 on
# the parity sample, ~2x faster) and f32 elsewhere; "f32" pins f32 on every CPU.
Precision = Literal["f32", "bf16"]
MISSING_EXTRA: Final = (
    "it was built for the OpenVINO backend, which is not installed: "
    "`uv sync --extra openvino` (or pip install 'embark[openvino]'), or rebuild the model "
    'with backend = "onnxruntime"'
)


@dataclass(frozen=True, slots=True)
class OpenVINOConfig:
    """How the artifact is compiled (``openvino.json``, written by the build; part of the
    revision, since it changes the vectors slightly)."""

    inference_precision: Precision = "bf16"

    def to_dict(self) -> dict[str, Any]:
        return {"inference_precision": self.inference_precision}

    @classmethod
    def read(cls, artifact_dir: Path) -> OpenVINOConfig:
        path = artifact_dir / CONFIG_FILE
        if not path.is_file():
            return cls()
        doc = json.loads(path.read_text(encoding="utf-8"))
        precision = doc.get("inference_precision", "bf16")
        if precision not in ("f32", "bf16"):
            raise ArtifactError(f"{path}: inference_precision must be f32 or bf16")
        return cls(inference_precision=precision)


def is_openvino_artifact(artifact_dir: Path) -> bool:
    """Whether ``artifact_dir`` holds an OpenVINO build (rather than ``model.onnx``)."""
    return (artifact_dir / MODEL_FILE).is_file()


class OpenVINOSession:
    """A compiled OpenVINO model behind the calls ``TextEncoder`` makes on an onnxruntime
    session: ``get_inputs``, ``get_outputs`` and ``run``. An infer request is not thread-safe
    (an onnxruntime session is): one per calling thread, since RETINA_MAX_CONCURRENT_INFERENCES
    may run batches of one model at once."""

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled
        self._local = threading.local()
        self._inputs = [_port(p) for p in compiled.inputs]
        self._outputs = [_port(p) for p in compiled.outputs]

    def get_inputs(self) -> list[text.Port]:
        return list(self._inputs)

    def get_outputs(self) -> list[text.Port]:
        return list(self._outputs)

    def run(
        self, output_names: Sequence[str] | None, feeds: Mapping[str, npt.NDArray[Any]]
    ) -> list[npt.NDArray[np.float32]]:
        names = output_names or [o.name for o in self._outputs]
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        result = request.infer(dict(feeds))
        # Copies: the request's output tensors are overwritten by the next call.
        return [np.array(result[name], dtype=np.float32) for name in names]


def _port(port: Any) -> text.Port:
    shape = port.get_partial_shape()
    dims = tuple(d.get_length() if d.is_static else None for d in shape)
    return text.Port(name=port.get_any_name(), shape=dims)


def cpu_config(threads: int, precision: Precision = "bf16") -> dict[str, Any]:
    """The CPU plugin's settings Retina compiles a text model with: ``threads`` inference
    threads, the latency hint (one request at a time, all threads on it)."""
    return {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": precision,
        # One model per process at a time: no extra streams competing for the threads.
        "NUM_STREAMS": 1,
        # Pinned threads cannot move off a core a neighbour is busy on: on a shared 2-core
        # host, pinning cut raw batched throughput ~3x (118-132 vs 367-478 texts/s, same run)
        # and served ~1.7x. Retina shares its host (tokeniser threads, other services).
        "ENABLE_CPU_PINNING": False,
    }


def compile_model(
    model: Path | Any, *, threads: int, precision: Precision = "bf16"
) -> OpenVINOSession:
    """Compile ``model`` (a path to ``model.xml`` or an ``ov.Model``) for the CPU with
    ``cpu_config``, dynamic shapes as exported. Raises ArtifactError when OpenVINO is not
    installed."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise ArtifactError(f"cannot load {model}: {MISSING_EXTRA}") from exc
    source = str(model) if isinstance(model, Path) else model
    return OpenVINOSession(ov.Core().compile_model(source, "CPU", cpu_config(threads, precision)))


def load(
    artifact_dir: Path,
    *,
    name: str,
    revision: str,
    intra_op_threads: int,
    max_tokens: int = 256,
) -> text.TextEncoder:
    """Load a built OpenVINO text artifact. Raises ArtifactError when a file is missing or
    unreadable, or when OpenVINO is not installed."""
    model_path = artifact_dir / MODEL_FILE
    for path in (model_path, artifact_dir / WEIGHTS_FILE):
        if not path.is_file():
            raise ArtifactError(f"{name}: missing {path}")
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        raise ArtifactError(f"{name}: {MISSING_EXTRA}") from exc
    tokenizer, spec = text.load_text_files(artifact_dir, name=name, max_tokens=max_tokens)
    try:
        config = OpenVINOConfig.read(artifact_dir)
        session = compile_model(
            model_path, threads=intra_op_threads, precision=config.inference_precision
        )
    except ArtifactError:
        raise
    # OpenVINO raises bare RuntimeError subclasses on unreadable files.
    except Exception as exc:
        raise ArtifactError(f"{name}: cannot load {artifact_dir}: {exc}") from exc
    return text.TextEncoder(
        name=name,
        revision=revision,
        session=session,
        tokenizer=tokenizer,
        # Static activation scales (NNCF): rows of a padded batch are independent.
        batch_coupled=False,
        spec=spec,
    )
