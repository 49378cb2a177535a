"""onnxruntime's int8 recipe for text models: SmoothQuant, then dynamic int8 per channel.

Owns the steps ``retina.artifacts.text.TextBuilder`` runs for ``backend = "onnxruntime"``:
per-channel activation ranges on calibration text (``activation_ranges``), SmoothQuant
(``smooth_quant``, which moves those ranges into the weights), and ``quantize_dynamic`` with
signed per-channel weights (``quantize_int8``; unsigned weights fall back to onnxruntime's
non-VNNI kernel, about 2x slower). The measurements behind the constants are in their comments;
the module docstring of ``retina.artifacts.text`` has the recipe's history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from retina.errors import ArtifactError

# SmoothQuant's migration strength, swept with dynamic int8 by bench/smooth_sweep.py (cosine
# mean / min vs the fp32 reference, bench/results/smooth_sweep.json): all-MiniLM-L6-v2 peaks at
# 0.7 (0.9975 / 0.9936; unsmoothed 0.9923 / 0.9831; 0.8 keeps the mean but drops the min to
# 0.984); paraphrase-MiniLM-L3-v2 is flat from 0.6 to 0.9 (0.9975-0.9982). One value for both.
SMOOTH_ALPHA: Final = 0.7

# Mixed precision, the alternative (not the served recipe: slower for less fidelity than
# smoothing): the weight MatMuls to leave in fp32, named by the module they compute
# (``restore_fp32_weights`` names the nodes so). Chosen by a per-node sensitivity sweep
# (quantize one MatMul at a time, 1 - cosine mean vs the numpy fp32 reference): the FFN
# down-projections (input: GELU output, long-tailed) dominate, led by layers 0, 2 and 1 (1.5e-3,
# 1.0e-3, 0.7e-3 of the 7.9e-3 total loss); FFN up-projections follow (3-5e-4 each), attention
# output 1-2e-4, Q/K/V below 2e-5. Keeping these three in fp32 gives 0.9953 at +25-45% latency.
L6_FP32_MATMULS: Final = (
    "encoder.layer.0.output.dense",
    "encoder.layer.2.output.dense",
    "encoder.layer.1.output.dense",
)


def activation_ranges(
    model_path: Path, feeds: Iterable[Mapping[str, npt.NDArray[np.int64]]]
) -> dict[str, npt.NDArray[np.float32]]:
    """Per-channel max |x| over ``feeds`` of every activation that feeds a weight MatMul (a
    MatMul whose second input is an initializer), by tensor name."""
    model = onnx.load(str(model_path))
    weights = {i.name for i in model.graph.initializer}
    acts = sorted(
        {n.input[0] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights}
    )
    for act in acts:
        model.graph.output.append(onnx.helper.make_tensor_value_info(act, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    # Unoptimised, so every intermediate tensor keeps its name and can be fetched.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    ranges: dict[str, npt.NDArray[np.float32]] = {}
    for feed in feeds:
        for act, out in zip(acts, session.run(acts, dict(feed)), strict=True):
            arr = np.asarray(out, dtype=np.float32)
            peak = np.abs(arr).reshape(-1, arr.shape[-1]).max(axis=0)
            ranges[act] = peak if act not in ranges else np.maximum(ranges[act], peak)
    return ranges


def smoothing_scales(
    act_peak: npt.NDArray[np.floating], weight_peak: npt.NDArray[np.floating], alpha: float
) -> npt.NDArray[np.float32]:
    """SmoothQuant's per-input-channel s = max|x|^alpha / max|W row|^(1 - alpha) (see
    ``smooth_quant``); both peaks are floored at 1e-5 so a silent channel keeps a finite s."""
    scale = np.power(np.maximum(act_peak, 1e-5), alpha) / np.power(
        np.maximum(weight_peak, 1e-5), 1 - alpha
    )
    return np.asarray(scale, dtype=np.float32)


def smooth_quant(
    model_path: Path, ranges: Mapping[str, npt.NDArray[np.float32]], *, alpha: float
) -> int:
    """SmoothQuant (Xiao et al., ICML 2023), in place; returns how many activations it smoothed.

    Dynamic int8 quantizes each activation with one scale per tensor, so a few channels with
    large values (MiniLM's FFN activations) leave every other channel a handful of levels. For
    each activation x feeding weight MatMuls x @ W, a per-channel s = max|x|^alpha /
    max|W row|^(1 - alpha) moves that range into the weights: x @ W = (x / s) @ (s W). The
    weights are quantized per output channel and absorb it well; x / s is a Mul node before
    the MatMuls (one per activation, 4 per layer: a cheap elementwise op). Exact in fp32.
    """
    model = onnx.load(str(model_path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    weight_uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            weight_uses[name] = weight_uses.get(name, 0) + 1
        if node.op_type == "MatMul" and node.input[1] in inits:
            users.setdefault(node.input[0], []).append(node)
    muls: dict[str, onnx.NodeProto] = {}
    for act, nodes in users.items():
        if act not in ranges:
            raise ArtifactError(f"{model_path.name}: no calibration range for {act}")
        mats = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        if any(weight_uses[n.input[1]] != 1 for n in nodes):
            raise ArtifactError(f"{model_path.name}: a weight feeding {act} is shared")
        w_peak = np.max([np.abs(m).max(axis=1) for m in mats], axis=0)
        scale = smoothing_scales(ranges[act], w_peak, alpha)
        for node, mat in zip(nodes, mats, strict=True):
            scaled = (mat * scale[:, None]).astype(np.float32)
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(scaled, node.input[1]))
            node.input[0] = f"{act}/smoothed"
        graph.initializer.append(
            numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{act}/smooth_inv")
        )
        muls[act] = onnx.helper.make_node(
            "Mul", [act, f"{act}/smooth_inv"], [f"{act}/smoothed"], name=f"{act}/smooth"
        )
    # Each Mul goes right before the first node that reads its output: topological order kept.
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        for name in node.input:
            act = name.removesuffix("/smoothed")
            if name.endswith("/smoothed") and act in muls:
                ordered.append(muls.pop(act))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.save(model, str(model_path))
    return len(users)


def quantize_int8(src: Path, dst: Path, *, fp32_matmuls: Sequence[str] = ()) -> None:
    """Dynamic int8: weights per output channel, signed (see the module docstring); the MatMul
    nodes named in ``fp32_matmuls`` stay fp32 (mixed precision)."""
    names = {n.name for n in onnx.load(str(src)).graph.node if n.op_type == "MatMul"}
    unknown = sorted(set(fp32_matmuls) - names)
    if unknown:
        raise ArtifactError(f"{src.name}: no MatMul named {unknown} to keep in fp32")
    quantize_dynamic(
        src,
        dst,
        per_channel=True,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(fp32_matmuls),
    )
