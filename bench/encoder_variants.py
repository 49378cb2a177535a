"""The MiniLM-L6 text variants ``bench/encoders.py`` measures besides the served recipe: the ones
tried for issue 18 and not kept, built here so every run shows them beside the served model.

- ``export_fused``: the same BERT as ``retina.artifacts.bert_onnx`` written with onnxruntime's
  fused contrib ops (``Attention`` with packed Q/K/V, ``BiasGelu``), SmoothQuant folded in at
  export (the attention-output smoothing goes exactly into V and W_o, the others are Mul nodes),
  so that dynamic int8 turns attention into ``QAttention``. onnxruntime's own transformer
  optimizer did not recognise the exported attention pattern (it fused only BiasGelu and
  SkipLayerNorm), hence writing the fused ops directly.
- ``quantize_nbits``: weight-only block-wise ``MatMulNBits`` (8 or 4 bit) with
  ``accuracy_level=4`` (int8 compute): its activations are quantized per row and block, so a
  row's result does not depend on its batch-mates. Needs ``onnx-ir`` (the bench environment has
  it; without it the variant is skipped and says why).
- ``quantize_static_mixed``: static QDQ int8 (calibrated per-tensor activation scales, so rows
  are independent too) with the FFN down-projections left in fp32: their GELU-output inputs
  are what static scales cannot follow (all MatMuls static: cosine 0.935).

None of this is served; ``retina/artifacts/text.py`` owns the recipe that is.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from retina.artifacts.bert_onnx import OPSET, OUTPUT, bert_weights

MS_DOMAIN: Final = "com.microsoft"
F32 = npt.NDArray[np.float32]


def smoothing_ranges(ranges: Mapping[str, F32], n_layers: int) -> dict[str, F32]:
    """``activation_ranges`` of a ``bert_onnx`` export, keyed by what ``export_fused`` smooths:
    ``{i}.qkv`` (the block input), ``{i}.ctx``, ``{i}.inner`` (FFN input), ``{i}.gelu``."""
    out = {}
    for i in range(n_layers):
        p = f"encoder.layer.{i}"
        block_in = (
            "embeddings.LayerNorm/ln" if i == 0 else f"encoder.layer.{i - 1}.output.LayerNorm/ln"
        )
        out[f"{i}.qkv"] = ranges[block_in]
        out[f"{i}.ctx"] = ranges[f"{p}/ctx"]
        out[f"{i}.inner"] = ranges[f"{p}.attention.output.LayerNorm/ln"]
        out[f"{i}.gelu"] = ranges[f"{p}/gelu"]
    return out


def export_fused(
    safetensors: Path,
    out: Path,
    *,
    num_heads: int,
    smooth: Mapping[str, F32] | None = None,
    alpha: float = 0.7,
    eps: float = 1e-12,
) -> None:
    """Write the fused-op fp32 graph (see the module docstring) to ``out``."""
    w = bert_weights(safetensors)
    hidden = int(w["embeddings.word_embeddings.weight"].shape[1])
    n_layers = 1 + max(int(k.split(".")[2]) for k in w if k.startswith("encoder.layer."))
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: npt.NDArray[Any]) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def scale(key: str, mat: F32) -> F32 | None:
        # SmoothQuant's per-channel s = max|x|^alpha / max|W row|^(1 - alpha).
        if smooth is None:
            return None
        w_peak = np.maximum(np.abs(mat).max(axis=1), 1e-5)
        s = np.power(np.maximum(smooth[key], 1e-5), alpha) / np.power(w_peak, 1 - alpha)
        return np.asarray(s, dtype=np.float32)

    def smoothed_input(x: str, key: str, mat: F32) -> tuple[str, F32]:
        s = scale(key, mat)
        if s is None:
            return x, mat
        inv = const(f"{key}.smooth_inv", (1.0 / s).astype(np.float32))
        return node("Mul", [x, inv], f"{key}/smoothed"), mat * s[:, None]

    def layer_norm(x: str, module: str) -> str:
        g = const(f"{module}.weight", w[f"{module}.weight"])
        b = const(f"{module}.bias", w[f"{module}.bias"])
        return node("LayerNormalization", [x, g, b], f"{module}/ln", axis=-1, epsilon=eps)

    words = node(
        "Gather", [const("word_emb", w["embeddings.word_embeddings.weight"]), "input_ids"], "words"
    )
    shape = node("Shape", ["input_ids"], "ids_shape")
    for i in range(3):
        const(f"i{i}", np.array([i], dtype=np.int64))
    seq = node("Slice", [shape, "i1", "i2"], "seq_len")
    pos = node(
        "Slice", [const("pos", w["embeddings.position_embeddings.weight"]), "i0", seq, "i0"], "p"
    )
    x = node(
        "Add",
        [
            node("Add", [words, pos], "wp"),
            const("t0", w["embeddings.token_type_embeddings.weight"][0]),
        ],
        "emb",
    )
    x = layer_norm(x, "embeddings.LayerNorm")
    mask = node("Cast", ["attention_mask"], "mask_i32", to=TensorProto.INT32)
    for i in range(n_layers):
        p = f"encoder.layer.{i}"
        names = ("query", "key", "value")
        wqkv = np.concatenate([w[f"{p}.attention.self.{n}.weight"].T for n in names], axis=1)
        bqkv = np.concatenate([w[f"{p}.attention.self.{n}.bias"] for n in names])
        xin, wqkv = smoothed_input(x, f"{i}.qkv", wqkv)
        wo = w[f"{p}.attention.output.dense.weight"].T
        s = scale(f"{i}.ctx", wo)
        if s is not None:
            # Context channel c is a mix of V channel c alone: V / s (weights and bias) gives
            # ctx / s, exactly, so this smoothing costs no node.
            wqkv[:, 2 * hidden :] /= s[None, :]
            bqkv[2 * hidden :] /= s
            wo = wo * s[:, None]
        attn = node(
            "Attention",
            [
                xin,
                const(f"{p}.qkv.w", wqkv.astype(np.float32)),
                const(f"{p}.qkv.b", bqkv.astype(np.float32)),
                mask,
            ],
            f"{p}.attention",
            domain=MS_DOMAIN,
            num_heads=num_heads,
        )
        o = f"{p}.attention.output.dense"
        mm = node("MatMul", [attn, const(f"{o}.weight", wo.astype(np.float32))], f"{o}/mm")
        res = node(
            "Add", [node("Add", [mm, const(f"{o}.bias", w[f"{o}.bias"])], o), x], f"{p}/res1"
        )
        x = layer_norm(res, f"{p}.attention.output.LayerNorm")
        inner = f"{p}.intermediate.dense"
        xin, wi = smoothed_input(x, f"{i}.inner", w[f"{inner}.weight"].T)
        mm = node("MatMul", [xin, const(f"{inner}.weight", wi.astype(np.float32))], f"{inner}/mm")
        gelu = node(
            "BiasGelu",
            [mm, const(f"{inner}.bias", w[f"{inner}.bias"])],
            f"{p}/gelu",
            domain=MS_DOMAIN,
        )
        down = f"{p}.output.dense"
        gin, wd = smoothed_input(gelu, f"{i}.gelu", w[f"{down}.weight"].T)
        mm = node("MatMul", [gin, const(f"{down}.weight", wd.astype(np.float32))], f"{down}/mm")
        res = node(
            "Add",
            [node("Add", [mm, const(f"{down}.bias", w[f"{down}.bias"])], down), x],
            f"{p}/res2",
        )
        x = layer_norm(res, f"{p}.output.LayerNorm")
    nodes.append(helper.make_node("Identity", [x], [OUTPUT], name=OUTPUT))
    graph = helper.make_graph(
        nodes,
        "bert-fused",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", "seq", hidden])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
    )
    onnx.save(model, str(out))


def nbits_available() -> tuple[bool, str]:
    if importlib.util.find_spec("onnx_ir") is None:
        return (
            False,
            "onnxruntime's MatMulNBits quantizer needs onnx-ir (make bench-encoders installs it)",
        )
    return True, ""


def quantize_nbits(src: Path, dst: Path, *, bits: int, block_size: int) -> None:
    """Weight-only symmetric block-wise quantization of every weight MatMul to MatMulNBits with
    int8 compute (accuracy_level 4)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=True, accuracy_level=4, bits=bits
    )
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(src)),
        bits=bits,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=4,
        algo_config=config,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def quantize_static_mixed(
    src: Path,
    dst: Path,
    feeds: Sequence[Mapping[str, npt.NDArray[np.int64]]],
    *,
    fp32_matmuls: Sequence[str],
) -> None:
    """Static QDQ int8 of the weight MatMuls of a ``bert_onnx`` export (per-channel signed
    weights, per-tensor unsigned activations, MinMax-calibrated on ``feeds``), leaving
    ``fp32_matmuls`` in fp32. Fixed activation scales: rows of a padded batch are independent."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, npt.NDArray[np.int64]] | None:
            feed = next(self._it, None)
            return None if feed is None else dict(feed)

    model = onnx.load(str(src))
    weights = {i.name for i in model.graph.initializer}
    matmuls = [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in weights and n.name not in fp32_matmuls
    ]
    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=matmuls,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
