"""Building a text model for the OpenVINO backend (``backend = "openvino"`` in a definition).

Owns the conversion of the build's fp32 ONNX graph into OpenVINO IR and its post-training int8
quantization by NNCF; ``retina.artifacts.text.TextBuilder`` calls it in place of onnxruntime's
dynamic quantizer and gates the result exactly as it gates the ONNX build (cosine against the
fp32 reference on the parity sample).

The recipe (bench/encoders_openvino.py measured the alternatives on MiniLM-L6, parity sample,
cosine against the numpy fp32 forward pass):

- NNCF ``ModelType.TRANSFORMER``, preset MIXED (symmetric weights per channel, asymmetric
  activations), *static* per-tensor activation scales calibrated on the titles-like
  calibration sentences (never the parity sample). Static scales are what lets Retina run
  padded batches: no scale depends on the batch.
- Everything quantized: cosine mean 0.9947, min 0.946, below the gate. The FFN
  down-projections (``encoder.layer.N.output.dense``: their input is the GELU output, whose
  rare large values a per-tensor scale cannot hold) left in floating point: mean 0.9983, min
  0.9937; with NNCF's SmoothQuant at alpha 0.7 (the definition's ``smooth_alpha``; NNCF's
  default 0.95): mean 0.9990, min 0.9945 — the recipe. Only layer 0's in floating point
  clears the gate too (0.9980 / 0.9918) for ~9% less CPU: too thin a margin to be the default.
- The ops left in floating point run in bf16 on CPUs with AMX or AVX512-BF16 (``openvino.json``
  ``inference_precision``; f32 elsewhere): cosine 0.99999 to f32 on the sample.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from retina.encoders import text_openvino
from retina.errors import ArtifactError

logger = logging.getLogger(__name__)

# Node-name patterns of the graph retina.artifacts.bert_onnx exports (OpenVINO keeps the ONNX
# names) whose MatMul NNCF leaves in floating point: the FFN down-projections (see above).
FP32_PATTERNS: Final = (r"encoder\.layer\.\d+\.output\.dense.*",)
MISSING_EXTRA: Final = (
    "backend = 'openvino' needs the openvino extra at build time "
    "(`uv sync --extra openvino`: openvino and nncf)"
)


def versions() -> str:
    """The OpenVINO and NNCF versions (the built bytes depend on them); raises ArtifactError
    when either is missing."""
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        raise ArtifactError(MISSING_EXTRA) from exc
    return f"openvino={ov.__version__};nncf={nncf.__version__}"


def convert(fp32_onnx: Path, out_dir: Path, *, precision: text_openvino.Precision) -> None:
    """The fp32 ONNX graph as OpenVINO IR (weights kept in fp32) in ``out_dir``."""
    import openvino as ov

    model = ov.convert_model(str(fp32_onnx))
    _save(model, out_dir, precision)


def quantize(
    fp32_onnx: Path,
    out_dir: Path,
    feeds: Sequence[Mapping[str, npt.NDArray[np.int64]]],
    *,
    smooth_alpha: float | None,
    fp32_patterns: Sequence[str] = FP32_PATTERNS,
    precision: text_openvino.Precision,
) -> None:
    """NNCF post-training int8 of ``fp32_onnx`` into ``out_dir``: static activation scales
    from ``feeds`` (one unpadded calibration text each), MatMuls matching ``fp32_patterns``
    left in floating point, SmoothQuant at ``smooth_alpha`` (None: off)."""
    import nncf
    import openvino as ov

    # NNCF logs every node it skips at INFO; the build report says what was left in fp32.
    nncf.set_log_level(logging.WARNING)
    model = ov.convert_model(str(fp32_onnx))
    names = {port.get_any_name() for port in model.inputs}
    # The exported graph takes no token_type_ids; the feeds are built for any graph.
    dataset = nncf.Dataset([{k: v for k, v in feed.items() if k in names} for feed in feeds])
    advanced = nncf.AdvancedQuantizationParameters(
        smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(
            matmul=-1 if smooth_alpha is None else smooth_alpha
        )
    )
    try:
        quantized = nncf.quantize(
            model,
            dataset,
            model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(feeds),
            ignored_scope=nncf.IgnoredScope(patterns=list(fp32_patterns), validate=False),
            advanced_parameters=advanced,
        )
    # NNCF raises plain exceptions on graphs it cannot handle; the build reports them.
    except Exception as exc:
        raise ArtifactError(f"NNCF could not quantize {fp32_onnx.name}: {exc}") from exc
    _save(quantized, out_dir, precision)


def _save(model: Any, out_dir: Path, precision: text_openvino.Precision) -> None:
    import openvino as ov

    out_dir.mkdir(parents=True, exist_ok=True)
    # compress_to_fp16 would round the fp32 weights left unquantized: keep them exact.
    ov.save_model(model, out_dir / text_openvino.MODEL_FILE, compress_to_fp16=False)
    config = text_openvino.OpenVINOConfig(inference_precision=precision)
    (out_dir / text_openvino.CONFIG_FILE).write_text(
        json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8"
    )


def defines(*, precision: text_openvino.Precision, fp32_patterns: Sequence[str]) -> dict[str, Any]:
    """What the OpenVINO build adds to a text model's revision input."""
    return {"inference_precision": precision, "fp32_patterns": list(fp32_patterns)}


def files() -> tuple[str, ...]:
    """The model files of an OpenVINO build (besides the tokenizer and the spec)."""
    return (text_openvino.MODEL_FILE, text_openvino.WEIGHTS_FILE, text_openvino.CONFIG_FILE)
