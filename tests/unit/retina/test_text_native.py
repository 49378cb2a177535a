"""The native text backend (retina/native/bert_int8.c, retina.encoders.text_native,
retina.artifacts.text_native): MiniLM-L6 built with ``backend = "native"`` from the installed
registry weights (about 5 s), gated, batched and served over real gRPC on loopback; and random
BERTs of other shapes checked against a numpy transcription of the same int8 arithmetic.

The kernel needs AVX-512 VNNI (its AMX path, AMX) and a C compiler: on a machine without them
the tests that run it are skipped, saying so; the build's refusals, the choice of a code path
and their errors are tested everywhere.
"""

from __future__ import annotations

import ctypes
import json
import math
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from retina.artifacts import text_native as native_build
from retina.artifacts.base import BuildReport
from retina.artifacts.minilm_reference import MiniLMReference, _gelu, _layer_norm
from retina.artifacts.text import PARITY_SENTENCES, cosines
from retina.artifacts.text_native import compile_kernel, quantize
from retina.encoders import text, text_native
from retina.encoders.text_native import NativeConfig, array_name
from retina.errors import ArtifactError
from tests.unit.retina import backends
from tests.unit.retina.tiny_models import VOCAB_SIZE, write_tiny_bert

F32 = npt.NDArray[np.float32]
NAME = "minilm-l6-native"


def _cpu_has(*flags: str) -> bool:
    try:
        listed = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return all(f in listed for f in flags)


_HAS_CC = bool(shutil.which("cc") or shutil.which("gcc"))
needs_cc = pytest.mark.skipif(not _HAS_CC, reason="needs a C compiler")
needs_kernel = pytest.mark.skipif(
    not _cpu_has("avx512_vnni", "avx512bw", "avx512dq", "avx512vl") or not _HAS_CC,
    reason="the native kernel needs an AVX-512 VNNI CPU and a C compiler",
)
needs_amx = pytest.mark.skipif(
    not _cpu_has("amx_int8", "amx_bf16", "avx512_bf16", "avx512_vnni") or not _HAS_CC,
    reason="the kernel's AMX path needs an AMX (INT8, BF16) CPU and a C compiler",
)
# Each code path of the kernel, run where the CPU has it.
PATHS = [
    pytest.param("amx", marks=needs_amx),
    pytest.param("vnni", marks=needs_kernel),
]


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuildReport]:
    return backends.build("native", NAME, tmp_path_factory.mktemp("minilm-native") / "artifact")


@pytest.fixture(scope="session")
def encoder(built: tuple[Path, BuildReport]) -> text.TextEncoder:
    return text.load(built[0], name=NAME, revision="r-test", intra_op_threads=2)


# --- build --------------------------------------------------------------------------------


def test_backend_and_kernel_are_part_of_the_revision_input() -> None:
    native = backends.builder("native", NAME)._defines("int8")
    assert '"backend":"native"' in native
    assert "kernel_sha256" in native
    assert native != backends.builder("onnxruntime", NAME)._defines("int8")


def test_the_kernel_hash_covers_every_source_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bert_int8.c includes headers: a change to any of them must change the models' revision.
    copy = tmp_path / "native"
    shutil.copytree(native_build.KERNEL_DIR, copy)
    monkeypatch.setattr(native_build, "KERNEL_DIR", copy)
    before = native_build.kernel_sha256()
    headers = sorted(copy.glob("*.h"))
    assert headers
    for header in headers:
        header.write_text(header.read_text() + "\n/* changed */\n")
        after = native_build.kernel_sha256()
        assert after != before
        before = after


def test_native_needs_the_models_safetensors() -> None:
    # minilm-l3 comes as an ONNX graph only: the kernel reads BERT weights by name.
    with pytest.raises(ArtifactError, match="safetensors"):
        backends.builder("native", NAME, model="minilm-l3")


@pytest.mark.parametrize(
    ("hidden", "heads", "ffn", "reason"),
    [
        (100, 4, 256, "hidden size 100"),
        (384, 12, 1000, "FFN size 1000"),
        (384, 48, 1536, "head size 8"),
        (768, 6, 3072, "head size 128"),
        (384, 7, 1536, "7 heads"),
    ],
)
def test_shapes_the_kernel_cannot_take_are_refused(
    hidden: int, heads: int, ffn: int, reason: str
) -> None:
    config = NativeConfig(2, hidden, heads, ffn, 100, 64, 1e-12, "mean", ("amx",))
    with pytest.raises(ArtifactError, match=reason):
        config.validate()


def test_a_missing_compiler_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(ArtifactError, match="C compiler"):
        compile_kernel(tmp_path / "k.so")


@needs_kernel
@pytest.mark.slow
def test_build_passes_the_fidelity_gate(built: tuple[Path, BuildReport]) -> None:
    out, report = built
    assert report.model == text_native.WEIGHTS_FILE
    assert {"native.npz", "native.json", "bert_int8.so"} <= set(report.files)
    assert all((out / f).is_file() for f in report.files)
    assert report.precision == "int8"
    # The gate: mean >= 0.995 and min >= 0.99 against the numpy fp32 forward pass.
    assert report.parity.cos_mean >= 0.995
    assert report.parity.cos_min >= 0.99
    assert "numpy fp32" in report.parity.reference


@needs_amx
@pytest.mark.slow
def test_an_amx_build_gates_both_paths_and_serves_the_tiles(
    built: tuple[Path, BuildReport],
) -> None:
    # Built on AMX, the model may also serve where only VNNI runs: that path is gated too.
    out, report = built
    assert NativeConfig.read(out).paths == ("amx", "vnni")
    assert float(report.extra["parity_vnni_cos_mean"]) >= 0.995
    assert float(report.extra["parity_vnni_cos_min"]) >= 0.99
    assert text_native.open_model(out).path == "amx"


@pytest.mark.parametrize(
    ("offered", "gated", "chosen"),
    [
        (("amx", "vnni"), ("amx", "vnni"), "amx"),
        (("vnni",), ("amx", "vnni"), "vnni"),  # an AMX build served on Ice Lake
        (("amx", "vnni"), ("vnni",), "vnni"),  # a VNNI build served on Sapphire Rapids
    ],
)
def test_a_model_serves_on_the_fastest_path_its_build_gated(
    offered: tuple[text_native.KernelPath, ...],
    gated: tuple[text_native.KernelPath, ...],
    chosen: str,
) -> None:
    assert text_native.choose_path(offered, gated) == chosen


def test_a_cpu_without_a_path_the_build_gated_gets_a_clear_error() -> None:
    with pytest.raises(ArtifactError, match=r"neither AMX .* nor AVX-512 VNNI"):
        text_native.choose_path((), ("amx", "vnni"))
    with pytest.raises(ArtifactError, match="gated only amx: rebuild it on this CPU"):
        text_native.choose_path(("vnni",), ("amx",))


def test_a_config_without_gated_paths_asks_for_a_rebuild(tmp_path: Path) -> None:
    doc = NativeConfig(2, 64, 4, 128, 100, 64, 1e-12, "mean", ("amx",)).to_dict()
    del doc["paths"]  # native.json as builds before the VNNI path wrote it
    (tmp_path / text_native.CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="retina models build"):
        NativeConfig.read(tmp_path)


@needs_cc
def test_a_kernel_from_before_the_paths_asks_for_a_rebuild(tmp_path: Path) -> None:
    # The earlier kernel's entry points, without bert_paths.
    source = tmp_path / "old.c"
    source.write_text(
        "int bert_amx_ready(void) { return 1; }\nint bert_forward(void) { return 0; }\n"
    )
    old = tmp_path / text_native.KERNEL_FILE
    subprocess.run(
        [native_build.compiler(), "-shared", "-fPIC", "-o", str(old), str(source)], check=True
    )
    with pytest.raises(ArtifactError, match=r"earlier EmbArk.*retina models build"):
        text_native.load_kernel(old)


@needs_kernel
def test_a_missing_kernel_file_is_an_artifact_error(
    built: tuple[Path, BuildReport], tmp_path: Path
) -> None:
    for f in built[1].files:
        if f != text_native.KERNEL_FILE:
            shutil.copyfile(built[0] / f, tmp_path / f)
    with pytest.raises(ArtifactError, match=r"bert_int8\.so"):
        text.load(tmp_path, name=NAME, revision="r-1", intra_op_threads=1)


# --- batches --------------------------------------------------------------------------------


@needs_kernel
@pytest.mark.slow
def test_a_batch_gives_every_text_exactly_its_vector_alone(encoder: text.TextEncoder) -> None:
    # Per-token activation scales, and the kernel packs a batch without padding: a text's
    # arithmetic is the same alone or beside others, so its vector is bit-identical.
    assert not encoder.batch_coupled
    items = [encoder.preprocess(t) for t in PARITY_SENTENCES[:32]]
    lengths = [len(i.ids) for i in items]
    assert max(lengths) - min(lengths) > 50
    alone = np.concatenate([encoder.infer([item]) for item in items])
    np.testing.assert_array_equal(encoder._embed(items), alone)  # one batch, no buckets
    np.testing.assert_array_equal(encoder.infer(items[::-1]), alone[::-1])


@needs_amx
@pytest.mark.slow
def test_the_vnni_path_agrees_with_the_tiles_and_batches_the_same(
    built: tuple[Path, BuildReport], encoder: text.TextEncoder
) -> None:
    # Same int32 sums (the GEMM's offset is taken back exactly); the attention adds in another
    # order, so the last bits differ and can move an int8 rounding downstream.
    vnni = text_native.load(built[0], name=NAME, revision="r-test", intra_op_threads=2, path="vnni")
    items = [encoder.preprocess(t) for t in PARITY_SENTENCES[:32]]
    alone = np.concatenate([vnni.infer([item]) for item in items])
    assert cosines(alone, encoder.infer(items)).min() > 0.999
    np.testing.assert_array_equal(vnni._embed(items), alone)


@needs_kernel
@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_concurrent_infer_from_threads_is_safe(
    built: tuple[Path, BuildReport], threads: int
) -> None:
    # One-thread calls run side by side (a call a core); two-thread calls take turns.
    encoder = text.load(built[0], name=NAME, revision="r-test", intra_op_threads=threads)
    items = [encoder.preprocess(t) for t in PARITY_SENTENCES[:16]]
    alone = np.concatenate([encoder.infer([item]) for item in items])
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda i: encoder.infer([items[i % 16]])[0], range(64)))
    np.testing.assert_array_equal(np.stack(got), np.concatenate([alone] * 4))


# --- other shapes: the kernel against a numpy transcription of its arithmetic -----------------


def _bert(directory: Path, *, layers: int, hidden: int, heads: int, ffn: int) -> Path:
    """A random BERT of these shapes (tiny_models' writer): its safetensors."""
    write_tiny_bert(
        directory,
        hidden=hidden,
        heads=heads,
        intermediate=ffn,
        layers=layers,
        seed=hidden + ffn,
        trained_scale=True,
    )
    return directory / "model.safetensors"


def _unpack(tiles: npt.NDArray[np.int8], k: int, n: int) -> npt.NDArray[np.int8]:
    """The inverse of the build's tile packing, written from the layout the kernel reads."""
    blocks = tiles.reshape(n // 16, k // 64, 16, 16, 4)  # [nb, kb, row r, column, k within 4]
    return blocks.transpose(1, 2, 4, 0, 3).reshape(k, n)


def _bf16(x: npt.NDArray[np.floating[Any]]) -> F32:
    """float32 rounded to bfloat16 (nearest, ties to even), as AVX512-BF16 converts."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    bits = bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)
    return (bits & np.uint32(0xFFFF0000)).view(np.float32)


def _emulate(arrays: dict[str, Any], config: NativeConfig, ids: list[int]) -> F32:
    """The kernel's arithmetic in numpy: per-token symmetric int8 activations (after the
    SmoothQuant 1/s), exact integer products; attention with Q, K, V and the softmax's weights
    rounded to bf16 (the sum and the scores in fp32); the rest fp32. Token states (seq, h)."""
    h, heads = config.hidden, config.heads
    hd = h // heads

    def linear(x: F32, layer: int, name: str) -> F32:
        k, n = arrays[array_name(layer, f"{name}.shape")]
        q = _unpack(arrays[array_name(layer, f"{name}.w")], int(k), int(n)).astype(np.int64)
        xs = x * arrays[array_name(layer, f"{name}.inv_smooth")]
        peak = np.abs(xs).max(axis=1, keepdims=True)
        xq = np.rint(xs * (127 / peak)).astype(np.int64)
        acc = (xq @ q).astype(np.float64)
        scale = arrays[array_name(layer, f"{name}.scale")] * (peak / 127)
        return np.asarray(acc * scale + arrays[array_name(layer, f"{name}.bias")], np.float32)

    seq = len(ids)
    x = arrays["word"][ids] + arrays["pos"][:seq] + arrays["type0"]
    x = _layer_norm(x, arrays["emb_g"], arrays["emb_b"], config.eps)
    for i in range(config.layers):
        q, k, v = _bf16(linear(x, i, "qkv").reshape(seq, 3, heads, hd).transpose(1, 2, 0, 3))
        scores = (q @ k.transpose(0, 2, 1)) / np.float32(np.sqrt(hd))
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        ctx = (_bf16(weights) @ v) / weights.sum(axis=-1, keepdims=True)
        ctx = ctx.transpose(1, 0, 2).reshape(seq, h)
        norm = (arrays[array_name(i, "ln1_g")], arrays[array_name(i, "ln1_b")])
        x = _layer_norm(linear(ctx, i, "out") + x, *norm, config.eps)
        inner = _gelu(linear(x, i, "up"))
        norm = (arrays[array_name(i, "ln2_g")], arrays[array_name(i, "ln2_b")])
        x = _layer_norm(linear(inner, i, "down") + x, *norm, config.eps)
    return np.asarray(x, dtype=np.float32)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("hidden", "heads", "ffn", "pooling"),
    [(64, 4, 128, "mean"), (128, 2, 320, "cls"), (192, 4, 256, "last")],
)
def test_other_shapes_compute_what_the_arithmetic_says(
    tmp_path: Path, hidden: int, heads: int, ffn: int, pooling: Any, path: Any
) -> None:
    weights = _bert(tmp_path / "bert", layers=2, hidden=hidden, heads=heads, ffn=ffn)
    rng = np.random.default_rng(0)
    calibration = [rng.integers(0, VOCAB_SIZE, size=n).tolist() for n in (5, 20, 40)]
    config = quantize(
        weights,
        tmp_path,
        calibration,
        num_heads=heads,
        eps=1e-12,
        pooling=pooling,
        smooth_alpha=0.7,
    )
    model = text_native.open_model(tmp_path, path=path)
    with np.load(tmp_path / text_native.WEIGHTS_FILE) as npz:
        arrays = {k: npz[k] for k in npz.files}
    # Lengths around the kernel's 16-row tiles and 64-key blocks, one past its 256-token
    # groups, and one long text.
    texts = [rng.integers(0, VOCAB_SIZE, size=n) for n in (1, 2, 15, 16, 17, 63, 65, 200, 300, 511)]
    got = model.embed(texts, threads=2)
    for row, ids in zip(got, texts, strict=True):
        states = _emulate(arrays, config, ids.tolist())
        want = {"mean": states.mean(axis=0), "cls": states[0], "last": states[-1]}[pooling]
        # Not bit-equal: an activation within float rounding of a .5 step may round the other
        # way in numpy, moving one int8 level. A wrong tile layout or scale gives cosine ~0.
        assert cosines(row[None], want[None])[0] > 0.9999
        assert np.linalg.norm(row - want) < 0.01 * np.linalg.norm(want)
    # The fp32 model, for scale: int8 keeps what it computes.
    reference = MiniLMReference.from_safetensors(weights, num_heads=heads)
    fp32 = reference.hidden_states(np.asarray([texts[5]]))[0]
    fp32_pooled = {"mean": fp32.mean(axis=0), "cls": fp32[0], "last": fp32[-1]}[pooling]
    assert cosines(got[5:6], fp32_pooled[None])[0] > 0.99
    # Alone, and in batches of other sizes and threads: the same bits.
    for i, ids in enumerate(texts):
        np.testing.assert_array_equal(model.embed([ids], threads=1)[0], got[i])
    np.testing.assert_array_equal(model.embed(texts[::-1], threads=3)[::-1], got)


@needs_kernel
@needs_kernel
def test_the_kernels_gelu_table_is_erf_gelu(built: tuple[Path, BuildReport]) -> None:
    # The GELU is a table of polynomials on [-5, 5), x beyond: it must stay within 2e-6 of
    # x Phi(x) everywhere, across every cell edge, at the table's ends and far out.
    kernel = text_native.load_kernel(built[0] / text_native.KERNEL_FILE)
    kernel.bert_gelu.restype = None
    kernel.bert_gelu.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32]
    edges = np.arange(-5.0, 5.01, 0.3125)
    x = np.concatenate(
        [np.linspace(-12, 12, 240_001), edges, np.nextafter(edges, -np.inf), [0.0, 1e-30, 40.0]]
    ).astype(np.float32)
    y = np.empty_like(x)
    kernel.bert_gelu(x.ctypes.data, y.ctypes.data, len(x))
    exact = x * 0.5 * (1 + np.frompyfunc(math.erf, 1, 1)(x / math.sqrt(2)).astype(np.float64))
    assert np.abs(y - exact).max() < 2e-6
    np.testing.assert_array_equal(y[x >= 5], x[x >= 5])
    assert not y[x < -5].any()


@needs_kernel
def test_invalid_ids_are_refused_by_the_kernel(tmp_path: Path) -> None:
    weights = _bert(tmp_path / "bert", layers=1, hidden=64, heads=4, ffn=128)
    quantize(
        weights, tmp_path, [[1, 2, 3]], num_heads=4, eps=1e-12, pooling="mean", smooth_alpha=None
    )
    model = text_native.open_model(tmp_path)
    with pytest.raises(Exception, match="invalid input"):
        model.embed([np.asarray([1, VOCAB_SIZE])], threads=1)  # one past the vocabulary
    with pytest.raises(Exception, match="invalid input"):
        model.embed([np.zeros(513, dtype=np.int64)], threads=1)  # past 512 positions


@needs_kernel
def test_weights_that_disagree_with_the_config_are_refused(tmp_path: Path) -> None:
    # The kernel trusts the shapes it is given: a file that disagrees never reaches it.
    weights = _bert(tmp_path / "bert", layers=1, hidden=64, heads=4, ffn=128)
    quantize(weights, tmp_path, [[1, 2]], num_heads=4, eps=1e-12, pooling="mean", smooth_alpha=None)
    npz = tmp_path / text_native.WEIGHTS_FILE
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[array_name(0, "up.shape")] = np.asarray([64, 192], dtype=np.int32)
    np.savez(npz, **arrays)
    with pytest.raises(ArtifactError, match="layer 0 up"):
        text_native.open_model(tmp_path)


# --- serving --------------------------------------------------------------------------------


@needs_kernel
@pytest.mark.slow
async def test_served_over_grpc_in_micro_batches(encoder: text.TextEncoder) -> None:
    # Concurrent one-text Embed calls are merged into batches; each text must come back
    # exactly as it embeds alone.
    reason, pairs = await backends.served_beside_alone(encoder, NAME)
    assert reason == "empty_input"
    for got, want in pairs:
        np.testing.assert_array_equal(got, want)
