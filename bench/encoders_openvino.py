"""The OpenVINO + NNCF variants of MiniLM-L6 for ``bench/encoders.py`` (issue 18's untried route).

Each variant is built in the bench's scratch directory from the same exported fp32 ONNX graph
and calibration feeds the served recipe uses, by the build's own code
(``retina.artifacts.text_openvino``), and loaded as the ``TextEncoder`` Retina serves
(``retina.encoders.text_openvino``): what is timed is the served path, tokens to vector.

    .venv/bin/python -m bench.encoders --only openvino   # these rows + PyTorch + ORT int8, ~3 min

Variants, kept or not, with the reason in the note:

- OpenVINO fp32 with f32 inference: the runtime's own fp32 baseline.
- OpenVINO fp32 with bf16 inference (AMX / AVX512-BF16 where the CPU has them).
- NNCF int8, everything quantized (NNCF's defaults): below the fidelity gate.
- NNCF int8, FFN down-projections in floating point, SmoothQuant 0.7, bf16 elsewhere: the
  recipe ``backend = "openvino"`` builds.
- The same with only layer 0's FFN down-projection in floating point (the cheapest mix that
  clears the gate, with a thin margin).
- The same with f32 elsewhere (for CPUs without bf16).
- NNCF int8 *weights only* (``compress_weights`` INT8_SYM, per channel), activations in bf16:
  no activation scale at all, so the best int8 fidelity, row-independent.
- The same weights under f32 inference, where the CPU plugin quantizes activations itself at
  run time, per token group of 32 (``DYNAMIC_QUANTIZATION_GROUP_SIZE``): per-token scales, the
  scheme that would let the FFN down-projections be int8 at the gate. Under bf16 the plugin
  does not apply it (the cosines are identical to the row above).

OpenVINO runs inference on its own worker threads, not the caller's, so these variants' CPU
time is the process's CPU time (``bench.encoders.cpu_time`` measures every row that way).

``op_profile`` says where the recipe's batch-1 time goes, from the CPU plugin's own per-node
counters: what stands between it and the ~1 ms the GEMMs' arithmetic alone would take.
"""

from __future__ import annotations

import collections
import importlib.util
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from retina.artifacts import text_openvino as ov_build
from retina.encoders import text as text_encoder
from retina.encoders import text_openvino

Make = Callable[[int], text_encoder.TextEncoder]
# The catalog name of the recipe's row: bench.encoders checks the goals against it.
KEPT = "L6 OpenVINO int8 NNCF, FFN down fp32, SQ 0.7, bf16"
RECIPE = "ov-int8-recipe"


def available() -> tuple[bool, str]:
    missing = [m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"{', '.join(missing)} not installed (uv sync --extra openvino)"
    return True, ""


def openvino_variants(
    fp32_onnx: Path,
    tokenizer: Path,
    feeds: Sequence[Mapping[str, npt.NDArray[np.int64]]],
    work: Path,
) -> list[tuple[str, str, Make]]:
    """(name, note, make(threads)) for every OpenVINO variant, built in ``work``."""
    full, recipe = work / "ov-int8-all", work / RECIPE
    fp32, layer0 = work / "ov-fp32", work / "ov-int8-layer0"
    ov_build.convert(fp32_onnx, fp32, precision="f32")
    ov_build.quantize(fp32_onnx, full, feeds, smooth_alpha=None, fp32_patterns=(), precision="bf16")
    ov_build.quantize(fp32_onnx, recipe, feeds, smooth_alpha=0.7, precision="bf16")
    only_first = (r"encoder\.layer\.0\.output\.dense.*",)
    ov_build.quantize(
        fp32_onnx, layer0, feeds, smooth_alpha=0.7, fp32_patterns=only_first, precision="bf16"
    )
    weights = work / "ov-int8-weights"
    _compress_weights(fp32_onnx, weights)
    for d in (fp32, full, recipe, layer0, weights):
        shutil.copyfile(tokenizer, d / text_encoder.TOKENIZER_FILE)

    def make(
        d: Path, precision: text_openvino.Precision, name: str, extra: Mapping[str, str] = {}
    ) -> Make:
        def load(threads: int) -> text_encoder.TextEncoder:
            import openvino as ov

            config = text_openvino.cpu_config(threads, precision) | dict(extra)
            compiled = ov.Core().compile_model(str(d / text_openvino.MODEL_FILE), "CPU", config)
            session = text_openvino.OpenVINOSession(compiled)
            tok = text_encoder.load_tokenizer(d / text_encoder.TOKENIZER_FILE, max_tokens=256)
            return text_encoder.TextEncoder(
                name=name, revision="bench", session=session, tokenizer=tok, batch_coupled=False
            )

        return load

    return [
        (
            "L6 OpenVINO fp32 (f32)",
            "the runtime's fp32 baseline",
            make(fp32, "f32", "ov-fp32"),
        ),
        (
            "L6 OpenVINO fp32 as bf16 (AMX)",
            "not kept: more CPU than int8, batched or not",
            make(fp32, "bf16", "ov-bf16"),
        ),
        (
            "L6 OpenVINO int8 NNCF, everything quantized",
            "not kept: cosine min below 0.99",
            make(full, "bf16", "ov-int8-all"),
        ),
        (KEPT, 'backend = "openvino": padded batches', make(recipe, "bf16", "ov")),
        (
            "L6 OpenVINO int8 NNCF, layer 0 FFN down fp32, SQ 0.7, bf16",
            "not kept: ~9% less CPU than the recipe, but cosine min ~0.992 (thin margin)",
            make(layer0, "bf16", "ov-layer0"),
        ),
        (
            "L6 OpenVINO int8 NNCF, FFN down fp32, SQ 0.7, f32",
            "the recipe on CPUs without bf16",
            make(recipe, "f32", "ov-f32"),
        ),
        (
            "L6 OpenVINO int8 weights only, bf16",
            "not kept: the best int8 fidelity, but no faster than the recipe, slower batched",
            make(weights, "bf16", "ov-w8"),
        ),
        (
            "L6 OpenVINO int8 weights, per-token dynamic activations, f32",
            "not kept: the plugin's run-time activation scales only apply in f32: slower",
            make(weights, "f32", "ov-w8-dq", {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "32"}),
        ),
    ]


def _compress_weights(fp32_onnx: Path, out_dir: Path) -> None:
    """Every MatMul's weights as int8 (symmetric, per output channel), activations untouched."""
    import nncf
    import openvino as ov

    model = nncf.compress_weights(
        ov.convert_model(str(fp32_onnx)), mode=nncf.CompressWeightsMode.INT8_SYM
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, out_dir / text_openvino.MODEL_FILE, compress_to_fp16=False)


def op_profile(work: Path, ids: Sequence[int], threads: int, calls: int = 200) -> dict[str, Any]:
    """One text (``ids``) through the recipe built in ``work``, compiled as Retina compiles it
    plus the plugin's per-node counters (PERF_COUNT): milliseconds a call per (node type,
    kernel), with the wall clock and the process CPU of the same calls."""
    import openvino as ov

    config = text_openvino.cpu_config(threads) | {"PERF_COUNT": True}
    compiled = ov.Core().compile_model(str(work / RECIPE / text_openvino.MODEL_FILE), "CPU", config)
    request = compiled.create_infer_request()
    tokens = np.asarray([ids], dtype=np.int64)
    by_input = {"input_ids": tokens, "attention_mask": np.ones_like(tokens)}
    feeds = {p.get_any_name(): by_input.get(p.get_any_name(), np.zeros_like(tokens))
             for p in compiled.inputs}  # fmt: skip
    for _ in range(30):
        request.infer(feeds)
    ms: dict[tuple[str, str], float] = collections.defaultdict(float)
    nodes: collections.Counter[tuple[str, str]] = collections.Counter()
    wall = cpu = 0.0
    for _ in range(calls):
        w0, c0 = time.perf_counter(), time.process_time()
        request.infer(feeds)
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
        for node in request.profiling_info:
            key = (node.node_type, node.exec_type)
            ms[key] += node.real_time.total_seconds() * 1e3 / calls
            nodes[key] += 1
    rows = [
        {"node_type": k[0], "kernel": k[1], "nodes": nodes[k] // calls, "ms": v}
        for k, v in sorted(ms.items(), key=lambda kv: -kv[1])
        if v > 0
    ]
    return {
        "threads": threads,
        "tokens": len(ids),
        "calls": calls,
        "wall_ms": wall * 1e3 / calls,
        "cpu_ms": cpu * 1e3 / calls,
        "nodes_ms": sum(r["ms"] for r in rows),
        "rows": rows,
    }
