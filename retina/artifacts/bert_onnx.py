"""A torch-free exporter: a BERT-family ``model.safetensors`` + ``config.json`` -> ONNX graph.

It owns one thing: writing the fp32 encoder graph (embeddings, post-LayerNorm blocks with erf
GELU, absolute positions, one segment) with onnx.helper from the checkpoint's tensors, so a
user's Hugging Face directory that ships only safetensors (most do) becomes an ONNX model
without installing torch. The graph's output is ``last_hidden_state`` (batch, seq, hidden):
pooling happens at serving time like every text model's. The weight MatMuls are named after
their module (``encoder.layer.0.output.dense``) so recipes can refer to them by meaning.
``retina.artifacts.minilm_reference`` is the same network in numpy; the build checks the two
agree (cosine >= MIN_RESTORED_COS) before trusting this graph as the fp32 reference.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

from retina.errors import ArtifactError

OPSET: Final = 17
OUTPUT: Final = "last_hidden_state"
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")
# Additive attention mask for padded keys: exp() of it is exactly 0 in float32.
_MASKED: Final = -1e9


def bert_weights(path: Path) -> dict[str, npt.NDArray[np.float32]]:
    """The checkpoint's tensors as float32 with the model prefix (``bert.``) stripped."""
    weights = load_file(str(path))
    return {k.removeprefix("bert."): v.astype(np.float32) for k, v in weights.items()}


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text(encoding="utf-8"))
    return doc if isinstance(doc, dict) else {}


def export_bert(
    safetensors: Path, out: Path, *, num_heads: int, eps: float = 1e-12
) -> onnx.ModelProto:
    """Write the fp32 graph of ``safetensors`` to ``out`` and return it."""
    w = bert_weights(safetensors)
    try:
        hidden = int(w["embeddings.word_embeddings.weight"].shape[1])
        n_layers = 1 + max(int(m[1]) for k in w if (m := _LAYER.match(k)))
    except (KeyError, ValueError) as exc:
        raise ArtifactError(f"{safetensors}: not a BERT-layout checkpoint ({exc})") from None
    if hidden % num_heads:
        raise ArtifactError(f"{safetensors}: hidden size {hidden} not divisible by {num_heads}")
    head_dim = hidden // num_heads
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: npt.NDArray[Any]) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def linear(x: str, module: str) -> str:
        weight = const(f"{module}.weight", w[f"{module}.weight"].T)
        nodes.append(helper.make_node("MatMul", [x, weight], [f"{module}/mm"], name=module))
        bias = const(f"{module}.bias", w[f"{module}.bias"])
        nodes.append(
            helper.make_node("Add", [f"{module}/mm", bias], [module], name=f"{module}/add")
        )
        return module

    def layer_norm(x: str, module: str) -> str:
        gamma = const(f"{module}.weight", w[f"{module}.weight"])
        beta = const(f"{module}.bias", w[f"{module}.bias"])
        return node("LayerNormalization", [x, gamma, beta], f"{module}/ln", axis=-1, epsilon=eps)

    # Embeddings: words + positions (0..seq-1) + segment 0.
    words = node(
        "Gather", [const("word_emb", w["embeddings.word_embeddings.weight"]), "input_ids"], "words"
    )
    const("one_f", np.array(1.0, dtype=np.float32))
    shape = node("Shape", ["input_ids"], "ids_shape")
    # The first seq rows of the position table, seq as a 1-D tensor (what Slice takes).
    const("i0", np.array([0], dtype=np.int64))
    const("i1", np.array([1], dtype=np.int64))
    const("i2", np.array([2], dtype=np.int64))
    seq = node("Slice", [shape, "i1", "i2"], "seq_len")
    pos_table = const("pos_emb", w["embeddings.position_embeddings.weight"])
    pos = node("Slice", [pos_table, "i0", seq, "i0"], "pos")
    x = node("Add", [words, pos], "emb_wp")
    x = node("Add", [x, const("type0", w["embeddings.token_type_embeddings.weight"][0])], "emb")
    x = layer_norm(x, "embeddings.LayerNorm")

    # (batch, 1, 1, seq) additive mask.
    mask_f = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    inv = node("Sub", ["one_f", mask_f], "mask_inv")
    bias = node("Mul", [inv, const("masked", np.array(_MASKED, dtype=np.float32))], "mask_bias")
    bias = node("Unsqueeze", [bias, const("axes12", np.array([1, 2], dtype=np.int64))], "bias4")
    split = const("split_heads", np.array([0, 0, num_heads, head_dim], dtype=np.int64))
    merge = const("merge_heads", np.array([0, 0, hidden], dtype=np.int64))
    scale = const("scale", np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))
    const("sqrt2", np.array(np.sqrt(2.0), dtype=np.float32))
    const("half", np.array(0.5, dtype=np.float32))

    for i in range(n_layers):
        p = f"encoder.layer.{i}"
        q = node("Reshape", [linear(x, f"{p}.attention.self.query"), split], f"{p}/q4")
        k = node("Reshape", [linear(x, f"{p}.attention.self.key"), split], f"{p}/k4")
        v = node("Reshape", [linear(x, f"{p}.attention.self.value"), split], f"{p}/v4")
        q = node("Transpose", [q], f"{p}/qt", perm=[0, 2, 1, 3])
        k = node("Transpose", [k], f"{p}/kt", perm=[0, 2, 3, 1])
        v = node("Transpose", [v], f"{p}/vt", perm=[0, 2, 1, 3])
        scores = node("Mul", [node("MatMul", [q, k], f"{p}/qk"), scale], f"{p}/scaled")
        probs = node("Softmax", [node("Add", [scores, bias], f"{p}/masked")], f"{p}/probs", axis=-1)
        ctx = node(
            "Transpose", [node("MatMul", [probs, v], f"{p}/ctx4")], f"{p}/ctxt", perm=[0, 2, 1, 3]
        )
        ctx = node("Reshape", [ctx, merge], f"{p}/ctx")
        attn = linear(ctx, f"{p}.attention.output.dense")
        x = layer_norm(node("Add", [attn, x], f"{p}/res1"), f"{p}.attention.output.LayerNorm")
        inner = linear(x, f"{p}.intermediate.dense")
        erf = node("Erf", [node("Div", [inner, "sqrt2"], f"{p}/gelu_div")], f"{p}/gelu_erf")
        gate = node("Add", [erf, "one_f"], f"{p}/gelu_add")
        # GELU with erf: 0.5 x (1 + erf(x / sqrt 2)), as BERT's "gelu".
        gelu = node("Mul", [node("Mul", [inner, gate], f"{p}/gelu_mul"), "half"], f"{p}/gelu")
        down = linear(gelu, f"{p}.output.dense")
        x = layer_norm(node("Add", [down, x], f"{p}/res2"), f"{p}.output.LayerNorm")

    nodes.append(helper.make_node("Identity", [x], [OUTPUT], name=OUTPUT))
    graph = helper.make_graph(
        nodes,
        "bert",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", "seq", hidden])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="retina.artifacts.bert_onnx",
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return model
