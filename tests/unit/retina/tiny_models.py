"""Tiny real models written by the tests: a 1-layer BERT in the Hugging Face directory layout
(config.json, tokenizer.json, model.safetensors) and a 2-conv image ONNX. They go through the
same definition -> build -> serve pipeline as any user's model, in seconds."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

HIDDEN, HEADS, INTERMEDIATE = 32, 2, 64
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab() -> dict[str, int]:
    chars = string.ascii_lowercase + string.digits + string.punctuation
    tokens = SPECIALS + list(chars) + [f"##{c}" for c in chars]
    return {t: i for i, t in enumerate(tokens)}


VOCAB_SIZE = len(_vocab())


def write_tiny_bert(
    directory: Path,
    *,
    seed: int = 7,
    lowercase: bool = True,
    hidden: int = HIDDEN,
    heads: int = HEADS,
    intermediate: int = INTERMEDIATE,
    layers: int = 1,
    trained_scale: bool = False,
) -> Path:
    """A random BERT (1 layer of HIDDEN unless told) whose tokenizer spells words letter by
    letter; its vocabulary has VOCAB_SIZE entries. Weights are N(0, 0.2); ``trained_scale``
    draws them at a trained model's scale instead (linear layers 1/sqrt(fan-in), the rest
    0.05), so activations stay moderate through several wider layers."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.save(str(directory / "tokenizer.json"))
    rng = np.random.default_rng(seed)

    scale = 0.05 if trained_scale else 0.2

    def rand(*shape: int, sd: float = scale) -> np.ndarray:
        return (rng.standard_normal(shape) * sd).astype(np.float32)

    w: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": rand(len(vocab), hidden),
        "embeddings.position_embeddings.weight": rand(512, hidden),
        "embeddings.token_type_embeddings.weight": rand(2, hidden),
        "embeddings.LayerNorm.weight": np.ones(hidden, np.float32),
        "embeddings.LayerNorm.bias": np.zeros(hidden, np.float32),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}"
        for name, (out_dim, in_dim) in {
            "attention.self.query": (hidden, hidden),
            "attention.self.key": (hidden, hidden),
            "attention.self.value": (hidden, hidden),
            "attention.output.dense": (hidden, hidden),
            "intermediate.dense": (intermediate, hidden),
            "output.dense": (hidden, intermediate),
        }.items():
            w[f"{p}.{name}.weight"] = rand(
                out_dim, in_dim, sd=1 / np.sqrt(in_dim) if trained_scale else scale
            )
            w[f"{p}.{name}.bias"] = rand(out_dim)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[f"{p}.{ln}.weight"] = np.ones(hidden, np.float32)
            w[f"{p}.{ln}.bias"] = np.zeros(hidden, np.float32)
    save_file(w, str(directory / "model.safetensors"))
    config = {
        "model_type": "bert",
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-12,
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def write_tiny_image_onnx(path: Path, *, seed: int = 3) -> Path:
    """(n, 3, 32, 32) "image" -> conv/relu/conv -> flattened 128-d "features" -> "logits"."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) * 0.3).astype(np.float32), "w2"),
        numpy_helper.from_array((rng.standard_normal((128, 4)) * 0.1).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[4, 4], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c2"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
