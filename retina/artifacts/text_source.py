"""From a text definition to its builder: the model directory's files found (Hugging Face
layout, a .zip of one, or explicit paths), its defaults read (pooling from sentence-transformers'
``1_Pooling``, heads and LayerNorm epsilon from ``config.json``, case folding from the
tokenizer), and a ``vocab.txt``/SentencePiece tokenizer converted to ``tokenizer.json`` by
``transformers`` at build time only (the ``build`` extra; serving never imports it).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retina.artifacts.bert_onnx import read_config
from retina.artifacts.definition import ModelEntry, TextDefinition, unpacked
from retina.artifacts.text import DEFAULT_GATE, TextBuilder, TextModelSource
from retina.artifacts.text_samples import PARITY_SENTENCES
from retina.encoders import text
from retina.errors import ArtifactError


def tokenizer_folds_case(path: Path) -> bool:
    """Whether ``tokenizer.json`` lowercases its input (a BERT normaliser with lowercase, or a
    Lowercase normaliser anywhere in a sequence): then keys may fold case too."""
    try:
        normalizer = json.loads(path.read_text(encoding="utf-8")).get("normalizer")
    except (OSError, ValueError):
        return False

    def folds(node: Any) -> bool:
        if not isinstance(node, dict):
            return False
        if node.get("type") == "Lowercase":
            return True
        if node.get("type") == "BertNormalizer":
            return bool(node.get("lowercase", True))
        return any(folds(n) for n in node.get("normalizers", []) or [])

    return folds(normalizer)


def convert_tokenizer(model_dir: Path) -> Path:
    """A ``tokenizer.json`` for a directory that ships only ``vocab.txt`` or a SentencePiece
    model, converted once (at build time) by ``transformers``' fast-tokenizer converters. No
    torch: transformers imports it only for models, never for tokenizers."""
    target = Path(tempfile.gettempdir()) / "retina-tokenizers"
    digest = hashlib.sha256()
    for f in sorted(model_dir.iterdir()):
        if f.is_file() and f.suffix in (".txt", ".model", ".json") and f.stat().st_size < 64 << 20:
            digest.update(f.name.encode() + b"\0" + f.read_bytes())
    out = target / digest.hexdigest()[:16] / text.TOKENIZER_FILE
    if out.is_file():
        return out
    try:
        from transformers import AutoTokenizer  # build-time only: the `build` extra
    except ImportError:
        raise ArtifactError(
            f"{model_dir} has no tokenizer.json; converting its vocab.txt/SentencePiece model "
            "needs transformers at build time: install the `build` extra "
            "(`uv sync --extra build`) or add a tokenizer.json"
        ) from None
    tok = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True, local_files_only=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.backend_tokenizer.save(str(out))
    return out


def text_builder(entry: ModelEntry, *, intra_op_threads: int = 2) -> TextBuilder:
    """The builder for a text definition: its files found (directory layout or explicit
    paths), its defaults read from the directory (pooling, heads, case folding)."""
    d = entry.definition
    assert isinstance(d, TextDefinition)
    model_dir = unpacked(entry.path(d.source)) if d.source is not None else None
    config = read_config(model_dir) if model_dir is not None else {}

    def in_dir(*names: str) -> Path | None:
        if model_dir is None:
            return None
        return next((model_dir / n for n in names if (model_dir / n).is_file()), None)

    onnx_path = entry.path(d.onnx) if d.onnx else None
    weights = entry.path(d.weights) if d.weights else in_dir("model.safetensors")
    if onnx_path is None and weights is None:
        onnx_path = in_dir("model.onnx", "onnx/model.onnx")
    if onnx_path is None and weights is None:
        raise ArtifactError(
            f"model {entry.name!r}: no weights found; give `source` a directory with "
            "model.safetensors or model.onnx, or set `onnx`/`weights`"
        )
    if d.tokenizer:
        tokenizer = entry.path(d.tokenizer)
    elif (found := in_dir("tokenizer.json")) is not None:
        tokenizer = found
    elif model_dir is not None:
        tokenizer = convert_tokenizer(model_dir)
    else:
        raise ArtifactError(f"model {entry.name!r}: set `tokenizer` (a tokenizer.json)")
    pooling = d.pooling or _st_pooling(model_dir) or "mean"
    source = TextModelSource(
        onnx=onnx_path,
        tokenizer=tokenizer,
        safetensors=weights,
        num_heads=d.num_heads or int(config.get("num_attention_heads", 12)),
        output=d.output,
        vocab_reference=entry.path(d.vocab_reference) if d.vocab_reference else None,
        eps=float(config.get("layer_norm_eps", 1e-12)),
    )
    sentences: Sequence[str] = PARITY_SENTENCES
    if d.sample is not None:
        lines = entry.path(d.sample).read_text(encoding="utf-8").splitlines()
        sentences = [line for line in lines if line.strip()]
        if len(sentences) < 2:
            raise ArtifactError(f"model {entry.name!r}: the sample needs at least 2 texts")
    return TextBuilder(
        name=entry.name,
        source=source,
        max_tokens=d.max_tokens,
        min_cos_mean=d.gate or DEFAULT_GATE,
        sentences=sentences,
        intra_op_threads=intra_op_threads,
        smooth_alpha=d.smooth_alpha,
        spec=text.TextSpec(
            pooling=pooling,
            normalize=d.normalize,
            prefix=d.prefix,
            dimensions=d.dimensions,
            dtype=d.dtype,
        ),
        precision=d.precision,
        fold_case=d.fold_case if d.fold_case is not None else tokenizer_folds_case(tokenizer),
        reference_vectors=entry.path(d.reference) if d.reference else None,
        backend=d.backend,
        openvino_precision=d.openvino_precision,
    )


def _st_pooling(model_dir: Path | None) -> text.Pooling | None:
    """The pooling a sentence-transformers directory declares (1_Pooling/config.json)."""
    if model_dir is None:
        return None
    path = model_dir / "1_Pooling" / "config.json"
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("pooling_mode_cls_token"):
        return "cls"
    if doc.get("pooling_mode_lasttoken"):
        return "last"
    return "mean"
