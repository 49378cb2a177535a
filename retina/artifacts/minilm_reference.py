"""A pure-numpy fp32 forward pass of a BERT encoder (MiniLM) from its safetensors weights.

Owns the torch-free fp32 *reference* the text builder measures parity against: the ONNX we can
install is already int8-rounded, so the true fp32 model exists here only as the original
``model.safetensors`` and this ~100-line transcription of Hugging Face's ``BertModel``
(post-LayerNorm blocks, GELU with erf, absolute positions) plus sentence-transformers' mean
pooling and L2 normalisation. It is slow and single-purpose: never served.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file

from retina.errors import ArtifactError

F32 = npt.NDArray[np.float32]

_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")

# Sees a linear layer's input: (layer index, "qkv" | "out" | "up" | "down", activations).
Observer = Callable[[int, str, "F32"], None]


def erf(x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """erf to within 1.5e-7 (Abramowitz & Stegun 7.1.26), vectorised.

    numpy has no erf and scipy is not a dependency; this error is below float32 resolution for
    GELU's purposes (|GELU error| <= 0.5 |x| 1.5e-7), and math.erf element by element would
    take seconds per parity run."""
    z = np.asarray(x, dtype=np.float64)
    t = 1.0 / (1.0 + 0.3275911 * np.abs(z))
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return np.sign(z) * (1.0 - poly * np.exp(-z * z))


def _gelu(x: F32) -> F32:
    return np.asarray(0.5 * x * (1.0 + erf(x / np.sqrt(2.0))), dtype=np.float32)


def _layer_norm(x: F32, gamma: F32, beta: F32, eps: float) -> F32:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased, as torch's LayerNorm
    return np.asarray((x - mean) / np.sqrt(var + np.float32(eps)) * gamma + beta, dtype=np.float32)


def _softmax(x: F32) -> F32:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float32)


class MiniLMReference:
    """fp32 BERT encoder + mean pooling + L2 norm. The layer count is read from the weights, so
    any BERT-base-layout checkpoint (MiniLM-L6, -L12, paraphrase-MiniLM-L3) works; heads and
    LayerNorm epsilon are not in the weights and must be given."""

    def __init__(self, weights: Mapping[str, F32], *, num_heads: int = 12, eps: float = 1e-12):
        try:
            self._word = weights["embeddings.word_embeddings.weight"]
            self._pos = weights["embeddings.position_embeddings.weight"]
            self._type = weights["embeddings.token_type_embeddings.weight"]
            self._emb_ln = (
                weights["embeddings.LayerNorm.weight"],
                weights["embeddings.LayerNorm.bias"],
            )
            n_layers = 1 + max(int(m[1]) for k in weights if (m := _LAYER.match(k)))
            # Linear weights are stored (out, in) as torch keeps them; transpose once here so
            # every matmul is x @ W with a contiguous W.
            self._layers: list[dict[str, F32]] = [
                {
                    name: np.ascontiguousarray(w.T) if w.ndim == 2 else w
                    for name, w in (
                        (k.removeprefix(f"encoder.layer.{i}."), v)
                        for k, v in weights.items()
                        if k.startswith(f"encoder.layer.{i}.")
                    )
                }
                for i in range(n_layers)
            ]
        except (KeyError, ValueError) as exc:
            raise ArtifactError(f"not a BERT checkpoint: {exc}") from exc
        self.dim = int(self._word.shape[1])
        if self.dim % num_heads:
            raise ArtifactError(f"hidden size {self.dim} is not divisible by {num_heads} heads")
        self.num_layers = n_layers
        self._heads = num_heads
        self._eps = eps

    @classmethod
    def from_safetensors(
        cls, path: Path, *, num_heads: int = 12, eps: float = 1e-12
    ) -> MiniLMReference:
        weights = {k: v.astype(np.float32) for k, v in load_file(str(path)).items()}
        return cls(weights, num_heads=num_heads, eps=eps)

    def hidden_states(
        self,
        input_ids: npt.NDArray[np.int64],
        attention_mask: npt.NDArray[np.int64] | None = None,
        observe: Observer | None = None,
    ) -> F32:
        """``(batch, seq)`` ids -> ``(batch, seq, dim)`` last hidden state (single segment).
        ``observe(layer, linear, x)``, when given, sees the input of each linear layer: ``qkv``
        (the query, key and value projections' shared input), ``out`` (attention output),
        ``up`` and ``down`` (the FFN's two)."""
        see: Observer = observe or (lambda layer, linear, x: None)
        batch, seq = input_ids.shape
        if attention_mask is None:
            attention_mask = np.ones_like(input_ids)
        x: F32 = np.asarray(
            self._word[input_ids] + self._pos[:seq][None] + self._type[0], dtype=np.float32
        )
        x = _layer_norm(x, *self._emb_ln, self._eps)
        # Additive mask as in transformers: the most negative float32 sends padded keys' softmax
        # weight to exactly 0, so padding cannot leak into real tokens.
        bias = np.where(attention_mask[:, None, None, :] > 0, 0.0, np.finfo(np.float32).min)
        bias = bias.astype(np.float32)
        head_dim = self.dim // self._heads
        scale = np.float32(1.0 / np.sqrt(head_dim))

        def heads(t: F32) -> F32:
            return t.reshape(batch, seq, self._heads, head_dim).transpose(0, 2, 1, 3)

        for i, w in enumerate(self._layers):
            see(i, "qkv", x)
            q = heads(x @ w["attention.self.query.weight"] + w["attention.self.query.bias"])
            k = heads(x @ w["attention.self.key.weight"] + w["attention.self.key.bias"])
            v = heads(x @ w["attention.self.value.weight"] + w["attention.self.value.bias"])
            probs = _softmax((q @ k.transpose(0, 1, 3, 2)) * scale + bias)
            ctx: F32 = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, self.dim)
            see(i, "out", ctx)
            attn = ctx @ w["attention.output.dense.weight"] + w["attention.output.dense.bias"]
            x = _layer_norm(
                attn + x,
                w["attention.output.LayerNorm.weight"],
                w["attention.output.LayerNorm.bias"],
                self._eps,
            )
            see(i, "up", x)
            inner = _gelu(x @ w["intermediate.dense.weight"] + w["intermediate.dense.bias"])
            see(i, "down", inner)
            out = inner @ w["output.dense.weight"] + w["output.dense.bias"]
            x = _layer_norm(
                out + x, w["output.LayerNorm.weight"], w["output.LayerNorm.bias"], self._eps
            )
        return x

    def embed(self, token_ids: Sequence[Sequence[int]]) -> F32:
        """Sentence embeddings ``(n, dim)``: mean over tokens, L2-normalised. One text at a
        time, unpadded: exact, and cheap enough for a parity sample."""
        rows = []
        for ids in token_ids:
            hidden = self.hidden_states(np.asarray([ids], dtype=np.int64))[0]
            rows.append(hidden.mean(axis=0))
        pooled = np.stack(rows)
        return np.asarray(pooled / np.linalg.norm(pooled, axis=1, keepdims=True), dtype=np.float32)
