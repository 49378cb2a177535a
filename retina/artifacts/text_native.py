"""Building a text model for the native backend (``backend = "native"`` in a definition).

Owns turning a BERT-layout ``model.safetensors`` into what ``retina.encoders.text_native``
serves: SmoothQuant scales calibrated on the calibration sentences with the numpy fp32 forward
pass (``MiniLMReference``, observing each linear layer's input), int8 weights per output
channel packed into AMX tiles (``native.npz``), the shapes (``native.json``), and the kernel
(``retina/native/bert_int8.c``) compiled into the artifact, so that the binary the parity gate
measures is the binary that serves. The build gates every code path of the kernel this CPU
offers (AMX and AVX-512 VNNI on an AMX CPU) and lists them in ``native.json``: a model serves
only on a path its build measured. ``retina.artifacts.text.TextBuilder`` calls it and gates
the result exactly as it gates the other backends.

The recipe (bench/encoders_native.py, parity sample, cosine against the fp32 reference,
MiniLM-L6): activations quantized per token at run time, weights per output channel,
SmoothQuant 0.7 (the definition's ``smooth_alpha``; Q, K and V share one scale, as they share
their input), attention in bf16, everything else in fp32: cosine mean 0.9985, min 0.9941.
Per-token scales alone (no smoothing): 0.9966 / 0.9788, below the gate's 0.99 minimum.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file

from retina.artifacts.minilm_reference import MiniLMReference
from retina.artifacts.text_int8 import smoothing_scales
from retina.encoders import text_native
from retina.encoders.text_native import NativeConfig, Pooling, array_name
from retina.errors import ArtifactError

KERNEL_DIR: Final = Path(__file__).resolve().parent.parent / "native"
# The file compiled; it includes the directory's headers.
KERNEL_SOURCE: Final = KERNEL_DIR / "bert_int8.c"
# The kernel's instruction sets, named rather than -march=native: the artifact runs on any CPU
# with AVX-512 VNNI (and uses AMX where there is one), whatever machine built it. Code for a set
# the CPU lacks is only reached on the path that needs it (bert_paths).
CFLAGS: Final = (
    "-O3",
    "-mavx512f",
    "-mavx512bw",
    "-mavx512dq",
    "-mavx512vl",
    "-mavx512bf16",
    "-mavx512vnni",
    "-mfma",
    "-mamx-tile",
    "-mamx-int8",
    "-mamx-bf16",
    "-shared",
    "-fPIC",
    "-pthread",
)
# safetensors key -> the kernel's linear layer (Q, K and V are one GEMM: they share an input).
_LINEARS: Final = {
    "qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
    "out": ("attention.output.dense",),
    "up": ("intermediate.dense",),
    "down": ("output.dense",),
}
_LAYER_NORMS: Final = {
    "ln1_g": "attention.output.LayerNorm.weight",
    "ln1_b": "attention.output.LayerNorm.bias",
    "ln2_g": "output.LayerNorm.weight",
    "ln2_b": "output.LayerNorm.bias",
}
_EMBEDDINGS: Final = {
    "word": "embeddings.word_embeddings.weight",
    "pos": "embeddings.position_embeddings.weight",
    "emb_g": "embeddings.LayerNorm.weight",
    "emb_b": "embeddings.LayerNorm.bias",
}


def compiler() -> str:
    """The C compiler the kernel is built with: ``$CC``, else ``cc`` or ``gcc`` on the PATH."""
    found = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not found:
        raise ArtifactError(
            'backend = "native" compiles its kernel at build time and needs a C compiler '
            "(gcc 12+ or clang 14+: apt-get install gcc); none found (set CC)"
        )
    return found


def kernel_sha256() -> str:
    """The hash of every C source of the kernel (``bert_int8.c`` and the headers it includes)."""
    digest = hashlib.sha256()
    for path in sorted(KERNEL_DIR.glob("*.[ch]")):
        digest.update(path.name.encode("utf-8") + b"\0" + path.read_bytes())
    return digest.hexdigest()


def versions() -> str:
    """The kernel source and the compiler (the built bytes depend on both)."""
    cc = compiler()
    try:
        banner = subprocess.run(  # noqa: S603 (the user's own compiler)
            [cc, "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        raise ArtifactError(f"cannot run the C compiler {cc}: {exc}") from exc
    return f"kernel={kernel_sha256()[:16]};cc={banner}"


def compile_kernel(out: Path, *, defines: Mapping[str, int] | None = None) -> None:
    """``bert_int8.c`` as a shared library at ``out``; ``defines`` override its compile-time
    settings (benchmarks only: a served kernel is built with the source's own)."""
    macros = [f"-D{name}={value}" for name, value in (defines or {}).items()]
    cmd = [compiler(), *CFLAGS, *macros, "-o", str(out), str(KERNEL_SOURCE)]
    try:
        subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)  # noqa: S603
    except subprocess.CalledProcessError as exc:
        raise ArtifactError(
            f"compiling the native kernel failed ({' '.join(cmd)}): {exc.stderr.strip()[-2000:]}"
        ) from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise ArtifactError(f"cannot run the C compiler: {exc}") from exc


def pack_tiles(q: npt.NDArray[np.int8]) -> npt.NDArray[np.int8]:
    """An int8 ``(k, n)`` weight in the kernel's order: n/16 column blocks of k/64 tiles, tile
    row r holding k = 4r..4r+3 of its 16 columns interleaved (what TDPBSSD reads)."""
    k, n = q.shape
    tiles = q.reshape(k // 64, 16, 4, n // 16, 16).transpose(3, 0, 1, 4, 2)
    return np.ascontiguousarray(tiles).reshape(-1)


def quantize_linear(
    w: npt.NDArray[np.float32], smooth: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """``(k, n)`` weights, with SmoothQuant's ``smooth`` (per input channel) folded in, as
    symmetric int8 per output channel: ``(q, scale)`` with ``w * smooth ~= q * scale``."""
    scaled = w * smooth[:, None]
    scale = np.maximum(np.abs(scaled).max(axis=0), 1e-12) / 127.0
    q = np.clip(np.rint(scaled / scale), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def quantize(
    safetensors: Path,
    out_dir: Path,
    calibration: Sequence[Sequence[int]],
    *,
    num_heads: int,
    eps: float,
    pooling: Pooling,
    smooth_alpha: float | None,
) -> NativeConfig:
    """The native artifact's model files in ``out_dir`` (see the module docstring): weights
    from ``safetensors``, SmoothQuant at ``smooth_alpha`` (None: off) calibrated on the token
    ids of ``calibration`` (one text each, unpadded). Returns the model's config.

    The kernel is compiled first: the code paths it offers here are the ones the build gates."""
    out_dir.mkdir(parents=True, exist_ok=True)
    compile_kernel(out_dir / text_native.KERNEL_FILE)
    paths = offered_paths(out_dir)
    if not paths:
        raise ArtifactError(text_native.NO_PATH)
    try:
        weights = {k: v.astype(np.float32) for k, v in load_file(str(safetensors)).items()}
        reference = MiniLMReference(weights, num_heads=num_heads, eps=eps)
        layers = reference.num_layers
        config = NativeConfig(
            layers=layers,
            hidden=reference.dim,
            heads=num_heads,
            ffn=int(weights["encoder.layer.0.intermediate.dense.weight"].shape[0]),
            vocab=int(weights[_EMBEDDINGS["word"]].shape[0]),
            max_positions=int(weights[_EMBEDDINGS["pos"]].shape[0]),
            eps=eps,
            pooling=pooling,
            paths=paths,
        )
    except (KeyError, ValueError, OSError) as exc:
        raise ArtifactError(f"{safetensors.name} is not a BERT checkpoint: {exc}") from exc
    config.validate()
    peaks: dict[tuple[int, str], npt.NDArray[np.float32]] = {}

    def record(layer: int, linear: str, x: npt.NDArray[np.float32]) -> None:
        peak = np.abs(x).reshape(-1, x.shape[-1]).max(axis=0)
        key = (layer, linear)
        peaks[key] = peak if key not in peaks else np.maximum(peaks[key], peak)

    if smooth_alpha is not None:
        for ids in calibration:
            reference.hidden_states(np.asarray([ids], dtype=np.int64), observe=record)
    arrays: dict[str, npt.NDArray[Any]] = {name: weights[key] for name, key in _EMBEDDINGS.items()}
    arrays["type0"] = weights["embeddings.token_type_embeddings.weight"][0]
    for i in range(layers):
        prefix = f"encoder.layer.{i}."
        for linear, modules in _LINEARS.items():
            # torch keeps (out, in); the kernel multiplies x (tokens, in) by (in, out).
            w = np.concatenate([weights[f"{prefix}{m}.weight"].T for m in modules], axis=1)
            bias = np.concatenate([weights[f"{prefix}{m}.bias"] for m in modules])
            smooth = (
                np.ones(w.shape[0], dtype=np.float32)
                if smooth_alpha is None
                else smoothing_scales(peaks[(i, linear)], np.abs(w).max(axis=1), smooth_alpha)
            )
            q, scale = quantize_linear(w, smooth)
            arrays[array_name(i, f"{linear}.w")] = pack_tiles(q)
            arrays[array_name(i, f"{linear}.shape")] = np.asarray(w.shape, dtype=np.int32)
            arrays[array_name(i, f"{linear}.scale")] = scale
            arrays[array_name(i, f"{linear}.bias")] = bias.astype(np.float32)
            arrays[array_name(i, f"{linear}.inv_smooth")] = (1.0 / smooth).astype(np.float32)
        for name, key in _LAYER_NORMS.items():
            arrays[array_name(i, name)] = weights[prefix + key]
    np.savez(out_dir / text_native.WEIGHTS_FILE, allow_pickle=False, **arrays)
    (out_dir / text_native.CONFIG_FILE).write_text(
        json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8"
    )
    return config


def offered_paths(artifact_dir: Path) -> tuple[text_native.KernelPath, ...]:
    """The code paths the kernel compiled into ``artifact_dir`` offers on this CPU."""
    return text_native.offered_paths(
        text_native.load_kernel(artifact_dir / text_native.KERNEL_FILE)
    )


def defines() -> dict[str, Any]:
    """What the native build adds to a text model's revision input: the kernel's source (its
    arithmetic is part of the vectors)."""
    return {"kernel_sha256": kernel_sha256(), "activations": "int8 per token"}


def files() -> tuple[str, ...]:
    """The model files of a native build (besides the tokenizer and the spec)."""
    return (text_native.WEIGHTS_FILE, text_native.CONFIG_FILE, text_native.KERNEL_FILE)
