"""The text encoder on EmbArk's own int8 kernel: the third Retina backend (``backend = "native"``).

Owns loading a built native text artifact and running it: ``native.npz`` (the weights, packed
for AMX by ``retina.artifacts.text_native``), ``native.json`` (the shapes), ``bert_int8.so``
(``retina/native/bert_int8.c``, compiled by the build that measured its parity, so the binary
that serves is the one the gate passed) and the tokenizer and serving spec. The kernel is
called through ctypes; this module only supplies the session ``retina.encoders.text.
TextEncoder`` calls, so tokenising, bucketing and post-processing are shared with the other
backends.

Activations are quantized per token, so a text embeds bit-identically alone or in any batch
(``batch_coupled=False``: Retina batches it). The kernel has two code paths: AMX tiles (Intel
Xeon Sapphire Rapids or later) and AVX-512 VNNI (Xeon Cascade Lake and Ice Lake, AMD Zen 4,
and any AMX CPU). A model serves on the fastest path that both this CPU offers and its build
gated (``NativeConfig.paths``); without one, loading raises ArtifactError saying why.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from retina.encoders import text
from retina.errors import ArtifactError, RetinaError

WEIGHTS_FILE: Final = "native.npz"
CONFIG_FILE: Final = "native.json"
KERNEL_FILE: Final = "bert_int8.so"
OUTPUT: Final = "sentence_embedding"
# The kernel's pooling codes (bert_int8.c: POOL_*); the spec's pooling is done in the kernel.
POOLING: Final = {"mean": 0, "cls": 1, "last": 2}
# bert_int8.c's return codes.
_ERRORS: Final = {
    1: "invalid input (an empty or too long text, or a token id outside the vocabulary)",
    2: "out of memory",
    3: "this CPU does not offer the model's code path",
}
NO_PATH: Final = (
    "this CPU (or its operating system) offers neither AMX (INT8 and BF16) nor AVX-512 VNNI, "
    "one of which the native backend's kernel needs (Intel Xeon Cascade Lake or later, AMD "
    'Zen 4): rebuild the model with backend = "onnxruntime"'
)

Pooling = Literal["mean", "cls", "last"]
KernelPath = Literal["amx", "vnni"]
# The kernel's code paths (bert_int8.c: PATH_*, the bits of bert_paths), fastest first.
PATHS: Final[dict[KernelPath, int]] = {"amx": 2, "vnni": 1}


@dataclass(frozen=True, slots=True)
class NativeConfig:
    """The model's shapes and settings (``native.json``, written by the build)."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    eps: float
    pooling: Pooling
    # The code paths whose parity the build gated, fastest first (both where it ran on AMX).
    paths: tuple[KernelPath, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """What the kernel's tiles and attention take: the build refuses anything else, and a
        load refuses a config that says otherwise (the kernel trusts it)."""
        problems = []
        if self.hidden % 64:
            problems.append(f"hidden size {self.hidden} is not a multiple of 64")
        if self.ffn % 64:
            problems.append(f"FFN size {self.ffn} is not a multiple of 64")
        if self.heads <= 0 or self.hidden % self.heads:
            problems.append(f"{self.heads} heads do not divide the hidden size {self.hidden}")
        elif (head := self.hidden // self.heads) % 16 or head > 64:
            problems.append(f"head size {head} is not 16, 32, 48 or 64")
        if self.layers <= 0 or self.vocab <= 0 or self.max_positions <= 0:
            problems.append("no layers, vocabulary or positions")
        if self.pooling not in POOLING:
            problems.append(f"unknown pooling {self.pooling}")
        if not self.paths or any(p not in PATHS for p in self.paths):
            problems.append(
                f"gated code paths {list(self.paths)} (none: built before the VNNI path; "
                "rebuild it with `retina models build`)"
            )
        if problems:
            raise ArtifactError(
                f'backend = "native" cannot run this model: {"; ".join(problems)}. '
                'Use backend = "onnxruntime"'
            )

    @classmethod
    def read(cls, artifact_dir: Path) -> NativeConfig:
        try:
            doc = json.loads((artifact_dir / CONFIG_FILE).read_text(encoding="utf-8"))
            config = cls(**{**doc, "paths": tuple(doc.get("paths", ()))})
        except (OSError, ValueError, TypeError) as exc:
            raise ArtifactError(f"{artifact_dir / CONFIG_FILE}: {exc}") from exc
        config.validate()
        return config


class _Linear(ctypes.Structure):
    _fields_ = [
        ("w", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("inv_smooth", ctypes.c_void_p),
        ("k", ctypes.c_int32),
        ("n", ctypes.c_int32),
    ]


class _Layer(ctypes.Structure):
    _fields_ = [
        ("qkv", _Linear),
        ("out", _Linear),
        ("up", _Linear),
        ("down", _Linear),
        ("ln1_g", ctypes.c_void_p),
        ("ln1_b", ctypes.c_void_p),
        ("ln2_g", ctypes.c_void_p),
        ("ln2_b", ctypes.c_void_p),
    ]


class _Model(ctypes.Structure):
    _fields_ = [
        ("layers", ctypes.c_int32),
        ("hidden", ctypes.c_int32),
        ("heads", ctypes.c_int32),
        ("ffn", ctypes.c_int32),
        ("vocab", ctypes.c_int32),
        ("max_pos", ctypes.c_int32),
        ("pooling", ctypes.c_int32),
        ("eps", ctypes.c_float),
        ("word", ctypes.c_void_p),
        ("pos", ctypes.c_void_p),
        ("type0", ctypes.c_void_p),
        ("emb_g", ctypes.c_void_p),
        ("emb_b", ctypes.c_void_p),
        ("layer", ctypes.c_void_p),
        ("path", ctypes.c_int32),
    ]


LINEARS: Final = ("qkv", "out", "up", "down")
LAYER_NORMS: Final = ("ln1_g", "ln1_b", "ln2_g", "ln2_b")
EMBEDDINGS: Final = ("word", "pos", "type0", "emb_g", "emb_b")


def array_name(layer: int, part: str) -> str:
    """The name of a layer's array in ``native.npz``: ``"3.up.w"``, ``"3.ln1_g"``."""
    return f"{layer}.{part}"


def load_kernel(path: Path) -> ctypes.CDLL:
    """The compiled kernel. Raises ArtifactError when the file cannot be loaded or predates the
    kernel's code paths (``offered_paths`` then asks the system for AMX, once per process)."""
    try:
        lib = ctypes.CDLL(str(path))
        paths = lib.bert_paths
    except OSError as exc:
        raise ArtifactError(f"cannot load the native kernel {path}: {exc}") from exc
    except AttributeError as exc:
        raise ArtifactError(
            f"the native kernel {path} was built by an earlier EmbArk (it has no VNNI path): "
            "rebuild the model with `retina models build`"
        ) from exc
    paths.restype = ctypes.c_int
    lib.bert_forward.restype = ctypes.c_int
    lib.bert_forward.argtypes = [
        ctypes.POINTER(_Model),
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int32,
        ctypes.c_int32,
        ctypes.c_void_p,
    ]
    return lib


def offered_paths(kernel: ctypes.CDLL) -> tuple[KernelPath, ...]:
    """The code paths this CPU and system run, fastest first."""
    bits = int(kernel.bert_paths())
    return tuple(name for name, bit in PATHS.items() if bits & bit)


def choose_path(offered: Sequence[KernelPath], gated: Sequence[KernelPath]) -> KernelPath:
    """The fastest path both offered by this CPU and gated by the model's build. Raises
    ArtifactError naming what is missing."""
    for name in PATHS:
        if name in offered and name in gated:
            return name
    if not offered:
        raise ArtifactError(NO_PATH)
    raise ArtifactError(
        f"this CPU offers the native kernel's {' and '.join(offered)} path, but the model's "
        f"build gated only {' and '.join(gated)}: rebuild it on this CPU"
    )


class NativeModel:
    """The packed weights, the kernel, and the C struct that points into the weights (the
    arrays are kept here so the pointers stay valid)."""

    def __init__(
        self,
        kernel: ctypes.CDLL,
        config: NativeConfig,
        arrays: Mapping[str, npt.NDArray[Any]],
        *,
        path: KernelPath,
    ) -> None:
        if path not in offered_paths(kernel):
            raise ArtifactError(f"this CPU does not offer the native kernel's {path} path")
        self.config = config
        self.path = path
        self._kernel = kernel
        self._arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        self._layers = (_Layer * config.layers)()
        h, f = config.hidden, config.ffn
        # The kernel trusts these shapes: a file that disagrees is refused here, not read past.
        shapes = {"qkv": (h, 3 * h), "out": (h, h), "up": (h, f), "down": (f, h)}
        for i, layer in enumerate(self._layers):
            for name in LINEARS:
                k, n = shapes[name]
                w = self._array(array_name(i, f"{name}.w"), np.int8, k * n)
                stored = tuple(
                    int(d) for d in self._array(array_name(i, f"{name}.shape"), np.int32)
                )
                if stored != (k, n):
                    raise ArtifactError(
                        f"{WEIGHTS_FILE}: layer {i} {name} is {stored}, not {(k, n)}"
                    )
                setattr(
                    layer,
                    name,
                    _Linear(
                        self._ptr(w),
                        self._ptr(self._array(array_name(i, f"{name}.scale"), np.float32, n)),
                        self._ptr(self._array(array_name(i, f"{name}.bias"), np.float32, n)),
                        self._ptr(self._array(array_name(i, f"{name}.inv_smooth"), np.float32, k)),
                        k,
                        n,
                    ),
                )
            for name in LAYER_NORMS:
                norm = self._array(array_name(i, name), np.float32, config.hidden)
                setattr(layer, name, self._ptr(norm))
        sizes = {"word": config.vocab * h, "pos": config.max_positions * h}
        self._struct = _Model(
            config.layers,
            h,
            config.heads,
            config.ffn,
            config.vocab,
            config.max_positions,
            POOLING[config.pooling],
            config.eps,
            *(self._ptr(self._array(e, np.float32, sizes.get(e, h))) for e in EMBEDDINGS),
            ctypes.addressof(self._layers),
            PATHS[path],
        )

    def _array(self, name: str, dtype: type[Any], size: int | None = None) -> npt.NDArray[Any]:
        try:
            arr = self._arrays[name]
        except KeyError as exc:
            raise ArtifactError(f"{WEIGHTS_FILE}: no array {name}") from exc
        if arr.dtype != dtype or (size is not None and arr.size != size):
            raise ArtifactError(f"{WEIGHTS_FILE}: {name} is {arr.dtype}[{arr.size}]")
        return arr

    @staticmethod
    def _ptr(arr: npt.NDArray[Any]) -> int:
        return int(arr.ctypes.data)

    def embed(
        self, sequences: Sequence[npt.NDArray[np.integer[Any]]], threads: int
    ) -> npt.NDArray[np.float32]:
        """Pooled, unnormalised ``(n, hidden)`` states of token-id sequences (no padding)."""
        lengths = [len(s) for s in sequences]
        ids = np.concatenate([np.asarray(s, dtype=np.int32) for s in sequences])
        offsets = np.zeros(len(sequences) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        out = np.empty((len(sequences), self.config.hidden), dtype=np.float32)
        # ctypes releases the GIL for the call: other Retina threads tokenise meanwhile.
        rc = self._kernel.bert_forward(
            ctypes.byref(self._struct),
            ids.ctypes.data,
            offsets.ctypes.data,
            len(sequences),
            threads,
            out.ctypes.data,
        )
        if rc:
            # Never a fault of the input text (the tokenizer bounds its ids and length): a
            # failed call is Retina's (INTERNAL), and batching retries the items one by one.
            raise RetinaError(f"native kernel: {_ERRORS.get(rc, f'error {rc}')}")
        return out


class NativeSession:
    """``NativeModel`` behind the calls ``TextEncoder`` makes on an onnxruntime session. Takes
    the padded batch the encoder builds and hands the kernel each row's real tokens only.

    As many calls at once as the cores hold teams: a call's threads (the caller and
    ``threads - 1`` helpers, bert_int8.c) spin at barriers, so two teams on one core would wait
    on each other; one-thread calls run side by side, one per core."""

    def __init__(self, model: NativeModel, *, threads: int) -> None:
        self._model = model
        self._threads = threads
        self._slots = threading.BoundedSemaphore(max(1, len(os.sched_getaffinity(0)) // threads))

    def get_inputs(self) -> list[text.Port]:
        return [text.Port("input_ids", (None, None)), text.Port("attention_mask", (None, None))]

    def get_outputs(self) -> list[text.Port]:
        return [text.Port(OUTPUT, (None, self._model.config.hidden))]

    def run(
        self, output_names: Sequence[str] | None, feeds: Mapping[str, npt.NDArray[Any]]
    ) -> list[npt.NDArray[np.float32]]:
        ids = np.asarray(feeds["input_ids"])
        mask = np.asarray(feeds["attention_mask"])
        lengths = mask.sum(axis=1)
        # The encoder pads on the right; anything else would be misread as padding.
        if not np.array_equal(mask, np.arange(mask.shape[1])[None, :] < lengths[:, None]):
            raise RetinaError("native kernel: the attention mask is not right-padded")
        rows = [row[:n] for row, n in zip(ids, lengths, strict=True)]
        with self._slots:
            out = self._model.embed(rows, self._threads)
        return [out]


def open_model(artifact_dir: Path, *, path: KernelPath | None = None) -> NativeModel:
    """The artifact's weights and kernel, on ``path`` (default: the fastest this CPU offers
    among those the build gated). Raises ArtifactError when a file is missing or unreadable, or
    when the CPU cannot run the model."""
    for name in (WEIGHTS_FILE, CONFIG_FILE, KERNEL_FILE):
        if not (artifact_dir / name).is_file():
            raise ArtifactError(f"missing {artifact_dir / name}")
    kernel = load_kernel(artifact_dir / KERNEL_FILE)
    config = NativeConfig.read(artifact_dir)
    chosen = path or choose_path(offered_paths(kernel), config.paths)
    try:
        with np.load(artifact_dir / WEIGHTS_FILE, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {artifact_dir / WEIGHTS_FILE}: {exc}") from exc
    return NativeModel(kernel, config, arrays, path=chosen)


def load(
    artifact_dir: Path,
    *,
    name: str,
    revision: str,
    intra_op_threads: int,
    max_tokens: int = 256,
    path: KernelPath | None = None,
) -> text.TextEncoder:
    """Load a built native text artifact, on ``path`` (see open_model). Raises ArtifactError
    when a file is missing or unreadable, or when the CPU cannot run it."""
    tokenizer, spec = text.load_text_files(artifact_dir, name=name, max_tokens=max_tokens)
    try:
        model = open_model(artifact_dir, path=path)
    except ArtifactError as exc:
        raise ArtifactError(f"{name}: {exc.message}") from exc
    if max_tokens > model.config.max_positions:
        raise ArtifactError(
            f"{name}: max_tokens {max_tokens} exceeds the model's {model.config.max_positions} "
            "positions"
        )
    if spec.pooling != model.config.pooling:
        raise ArtifactError(
            f"{name}: the kernel pools by {model.config.pooling}, the spec by {spec.pooling}"
        )
    return text.TextEncoder(
        name=name,
        revision=revision,
        session=NativeSession(model, threads=intra_op_threads),
        tokenizer=tokenizer,
        # Activations quantized per token: rows of a batch are independent.
        batch_coupled=False,
        spec=spec,
    )
