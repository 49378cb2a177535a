"""The fast text model, paraphrase-MiniLM-L3-v2 (catalog name ``minilm-l3``): found in its
registry package as data, served with all-MiniLM-L6-v2's tokenizer (the vocabulary check that
allows it), pooled like sentence-transformers, int8 within its gate, and still a sensible
sentence embedder (a retrieval-style sanity check against the L6 reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

from retina.artifacts.base import BuildReport
from retina.artifacts.build import default_registry
from retina.artifacts.definition import load_definitions
from retina.artifacts.minilm_reference import MiniLMReference
from retina.artifacts.text import (
    PARITY_SENTENCES,
    MiniLMBuilder,
    TextModelSource,
    cosines,
    prepare_source,
    vocab_row_cosines,
)
from retina.artifacts.text_source import text_builder
from retina.encoders import text
from retina.encoders.text import TextEncoder
from retina.errors import ArtifactError

# Queries and the one document each should retrieve among all the documents.
RETRIEVAL = [
    ("waterproof hiking boots", "Men's leather mountain boots with a Gore-Tex membrane"),
    ("coffee maker", "Espresso machine with 15 bar pump and milk frother"),
    ("kids toys", "Wooden building blocks for toddlers, 100 pieces"),
    ("wireless headphones", "Bluetooth over-ear headset with noise cancelling"),
    ("olive oil", "Extra virgin cold-pressed oil from Greek olives, 1 litre"),
    ("laptop bag", "Padded 15-inch notebook carrying case with shoulder strap"),
    ("fresh salmon", "Atlantic salmon fillets, chilled, skin on"),
    ("cement", "Portland cement, 25 kg bag, for concrete and mortar"),
]


def builtin_source(name: str) -> TextModelSource:
    """A built-in model's source, read from its definition (the models are data)."""
    return text_builder(load_definitions()[name]).source


@pytest.fixture(scope="session")
def l3_source() -> TextModelSource:
    return builtin_source("minilm-l3")


@pytest.fixture(scope="session")
def l3_built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuildReport]:
    out = tmp_path_factory.mktemp("minilm-l3") / "artifact"
    builder = text_builder(load_definitions()["minilm-l3"])
    builder.latency_runs = 3
    return out, builder.build(out)


@pytest.fixture(scope="session")
def l3(l3_built: tuple[Path, BuildReport]) -> TextEncoder:
    return text.load(l3_built[0], name="minilm-l3", revision="test", intra_op_threads=2)


def test_the_catalog_serves_it_as_a_text_model() -> None:
    registry = default_registry()
    assert registry["minilm-l3"].kind == "text"
    assert registry["minilm-l3"].new_builder().name == "minilm-l3"


def test_the_source_is_found_in_its_package_as_data(l3_source: TextModelSource) -> None:
    assert l3_source.onnx is not None
    assert l3_source.onnx.name == "paraphrase-MiniLM-L3-v2.onnx"
    assert l3_source.onnx.is_file()
    # No tokenizer ships with it: L6's is used, and checked against L6's embeddings.
    assert l3_source.tokenizer == builtin_source("minilm-l6").tokenizer
    assert l3_source.vocab_reference == builtin_source("minilm-l6").safetensors


@pytest.mark.slow
def test_build_passes_vocab_check_and_parity_gate(l3_built: tuple[Path, BuildReport]) -> None:
    out, report = l3_built
    assert float(report.extra["vocab_row_cos_mean"]) > 0.8  # measured 0.88; foreign ~0.02
    assert report.parity.reference.startswith("folded fp32 ONNX")
    assert report.parity.cos_mean >= 0.99
    assert report.size_bytes < 0.3 * float(report.extra["size_bytes_fp32"])
    assert sorted(p.name for p in out.iterdir()) == ["encoder.json", "model.onnx", "tokenizer.json"]


@pytest.mark.slow
def test_mean_pooling_reproduces_the_source_sentence_embedding(
    tmp_path: Path, l3_source: TextModelSource
) -> None:
    # The source graph also outputs its own pooled embedding ("461"); ours, pooled from the
    # token embeddings we keep, must be the same vector.
    prepare_source(l3_source.onnx, tmp_path / text.MODEL_FILE, output=l3_source.output)
    (tmp_path / text.TOKENIZER_FILE).write_bytes(l3_source.tokenizer.read_bytes())
    ours = text.load(tmp_path, name="l3-fp32", revision="t", intra_op_threads=1)
    raw = ort.InferenceSession(str(l3_source.onnx), providers=["CPUExecutionProvider"])
    for sentence in PARITY_SENTENCES[:8]:
        ids = ours.preprocess(sentence).ids[None]
        (pooled,) = raw.run(["461"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        got = ours.infer([text.TokenizedText(ids[0])])
        assert float(cosines(got, pooled.astype(np.float32))[0]) > 0.99999


@pytest.mark.slow
def test_retrieval_sanity_and_agreement_with_l6(l3: TextEncoder) -> None:
    queries = l3.infer([l3.preprocess(q) for q, _ in RETRIEVAL])
    docs = l3.infer([l3.preprocess(d) for _, d in RETRIEVAL])
    ranks = (queries @ docs.T).argmax(axis=1)
    assert list(ranks) == list(range(len(RETRIEVAL)))
    # Its notion of similarity tracks L6's (fp32 reference) across the parity sample.
    source = builtin_source("minilm-l6")
    assert source.safetensors is not None
    l6 = MiniLMReference.from_safetensors(source.safetensors)
    sample = PARITY_SENTENCES[:16]
    a = l3.infer([l3.preprocess(s) for s in sample])
    b = l6.embed([l3.preprocess(s).ids.tolist() for s in sample])
    upper = np.triu_indices(len(sample), k=1)
    corr = np.corrcoef((a @ a.T)[upper], (b @ b.T)[upper])[0, 1]
    assert corr > 0.6


def _tiny_graph(path: Path, table: np.ndarray) -> None:
    graph = helper.make_graph(
        [helper.make_node("Gather", ["m.embeddings.word_embeddings.weight", "ids"], ["out"])],
        "tiny",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, table.shape[1]])],
        initializer=[numpy_helper.from_array(table, "m.embeddings.word_embeddings.weight")],
    )
    onnx.save(helper.make_model(graph), str(path))


def test_vocab_check_tells_a_shared_vocabulary_from_a_shuffled_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 8)).astype(np.float32)
    _tiny_graph(tmp_path / "m.onnx", table)
    related = table + 0.3 * rng.standard_normal(table.shape).astype(np.float32)
    save_file({"embeddings.word_embeddings.weight": related}, str(tmp_path / "same.safetensors"))
    save_file(
        {"embeddings.word_embeddings.weight": related[rng.permutation(50)]},
        str(tmp_path / "shuffled.safetensors"),
    )
    assert vocab_row_cosines(tmp_path / "m.onnx", tmp_path / "same.safetensors")[1] > 0.9
    assert vocab_row_cosines(tmp_path / "m.onnx", tmp_path / "shuffled.safetensors")[1] < 0.3

    source = TextModelSource(
        onnx=tmp_path / "m.onnx",
        tokenizer=builtin_source("minilm-l6").tokenizer,
        vocab_reference=tmp_path / "shuffled.safetensors",
    )
    with pytest.raises(ArtifactError, match="vocabulary does not match"):
        MiniLMBuilder(name="foreign", source=source).build(tmp_path / "out")
    assert not (tmp_path / "out").exists()
