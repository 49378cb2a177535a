"""Whether the native kernel's weights could be narrower than int8. At one 64-token text its
GEMMs read every weight byte on every call (docs/performance.md, "The native kernel"), so int4
weights would halve the bytes; AMX has no int4 product, so the kernel would widen them to int8
on the way into the tiles. This measures what that would cost in fidelity before anything is
built: each scheme quantizes MiniLM-L6's linear weights only, activations stay fp32 (so each
figure is an upper bound for a pipeline that also quantizes activations), and fidelity is
measured as the build gate measures it: cosine mean and min against the fp32 reference on the
parity sample. Fidelity, not speed: the figures do not depend on the machine's load.

    .venv/bin/python -m bench.native_weights

Writes bench/results/native_weights.json.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from bench.stack import machine, table, write_result
from retina.artifacts.definition import load_definitions
from retina.artifacts.minilm_reference import MiniLMReference
from retina.artifacts.text_samples import PARITY_SENTENCES
from retina.artifacts.text_source import text_builder

F32 = npt.NDArray[np.float32]
LINEAR = ".weight"
FFN = ("intermediate.dense.weight", "output.dense.weight")


def quantized(w: F32, bits: int, group: int | None) -> F32:
    """w (out, in, as torch stores it) symmetric at ``bits``, one scale per output channel, or
    per ``group`` consecutive inputs of each output channel; returned dequantized."""
    top = 2 ** (bits - 1) - 1
    shaped = w.reshape(w.shape[0], -1, group or w.shape[1])
    scale = np.maximum(np.abs(shaped).max(axis=2, keepdims=True), 1e-12) / top
    narrowed = np.clip(np.round(shaped / scale), -top, top) * scale
    return np.asarray(narrowed.reshape(w.shape), dtype=np.float32)


def is_linear(name: str) -> bool:
    return name.startswith("encoder.layer.") and name.endswith(LINEAR) and "LayerNorm" not in name


def is_ffn(name: str) -> bool:
    # "encoder.layer.3.output.dense.weight", not "encoder.layer.3.attention.output.dense.weight"
    return is_linear(name) and name.split(".", 3)[3] in FFN


SCHEMES: tuple[tuple[str, int, int | None, Callable[[str], bool]], ...] = (
    ("int8 per output channel, every linear (the kernel's)", 8, None, is_linear),
    ("int4 per output channel, FFN only", 4, None, is_ffn),
    ("int4 per 64 inputs, FFN only", 4, 64, is_ffn),
    ("int4 per output channel, every linear", 4, None, is_linear),
)


def measure(model: str = "minilm-l6") -> list[dict[str, Any]]:
    source = text_builder(load_definitions()[model]).source
    assert source.safetensors is not None, f"{model} has no safetensors"
    tokenizer = Tokenizer.from_file(str(source.tokenizer))
    tokenizer.no_padding()
    ids = [tokenizer.encode(s).ids for s in PARITY_SENTENCES]
    weights = {k: v.astype(np.float32) for k, v in load_file(str(source.safetensors)).items()}
    reference = MiniLMReference(weights, num_heads=source.num_heads).embed(ids)
    rows = []
    for name, bits, group, chosen in SCHEMES:
        narrowed = {k: quantized(v, bits, group) if chosen(k) else v for k, v in weights.items()}
        got = MiniLMReference(narrowed, num_heads=source.num_heads).embed(ids)
        cos = (got * reference).sum(axis=1)  # both L2-normalised
        rows.append(
            {
                "scheme": name,
                "cos_mean": float(cos.mean()),
                "cos_min": float(cos.min()),
                "n": len(ids),
            }
        )
        print(f"{name}: {cos.mean():.4f} / {cos.min():.4f}", flush=True)
    return rows


def report(r: dict[str, Any]) -> str:
    return table(
        ["weights (activations fp32)", "cosine mean", "cosine min", "texts"],
        [[x["scheme"], f"{x['cos_mean']:.4f}", f"{x['cos_min']:.4f}", x["n"]] for x in r["rows"]],
    )


def main() -> None:
    result: dict[str, Any] = {"machine": machine(), "model": "minilm-l6", "rows": measure()}
    print(report(result))
    print(f"\nwrote {write_result('native_weights', result)}")


if __name__ == "__main__":
    main()
