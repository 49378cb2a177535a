"""The text encoder: a transformer sentence embedder (BERT-family and kin) served as ONNX.

Owns how text becomes a vector at serving time: the tokenizer configuration (the shipped
``tokenizer.json`` pads and truncates at 128; sentence-transformers truncates at 256 and pads
per batch), the onnxruntime session, pooling over the attention mask (mean, CLS or last token,
as the model's ``TextSpec`` says) and the shared post-processing (truncation, L2, dtype).
``retina.artifacts.text`` builds the artifact directory this module loads: ``model.onnx`` +
``tokenizer.json`` + ``encoder.json`` (the ``TextSpec``; absent in old builds: the defaults).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import numpy as np
import numpy.typing as npt
import onnx
from tokenizers import Tokenizer

from retina.encoders.base import Encoder, EncoderKind, OutputDtype, finish_vectors, new_session
from retina.errors import ArtifactError, ItemFailed

MODEL_FILE: Final = "model.onnx"
TOKENIZER_FILE: Final = "tokenizer.json"
SPEC_FILE: Final = "encoder.json"
Pooling = Literal["mean", "cls", "last"]
# Part of the model revision (with the ONNX bytes): bump it when anything here changes what a
# given text embeds to (tokenizer settings, pooling, normalisation).
PREPROCESSING_VERSION: Final = "text-v1:mean-pool,l2"
# BERT's learned position table has 512 rows; sentence-transformers' MiniLM default is 256.
MAX_POSITIONS: Final = 512

# Length bucketing: a batch is split into runs of similar length so that padding (computed, then
# thrown away) stays below this fraction of the real tokens. Sorting first makes the split cheap
# and keeps sub-batches as large as the spread of lengths allows.
MAX_PADDING_FRACTION: Final = 0.25

# onnxruntime ops that quantize activations with one scale per *tensor*, computed at run time.
# With these in the graph a batch is not a set of independent rows: a long or odd item (or the
# padding itself) moves the scale for every other item, and one text embeds differently
# depending on its batch-mates (measured: cosine down to 0.98 between batched and unbatched).
# EmbArk caches an embedding forever under (model, revision, content), so the same text must
# always produce the same vector: such models run one item per session call.
_BATCH_COUPLED_OPS: Final = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul"})


def load_tokenizer(path: Path, *, max_tokens: int) -> Tokenizer:
    """The shipped tokenizer, reconfigured to match sentence-transformers.

    No padding here: ``preprocess`` tokenises one text and ``infer`` pads a batch to its own
    longest item, so the fixed 128 padding baked into ``tokenizer.json`` must go (it would
    also waste compute). Truncation at ``max_tokens`` counts [CLS] and [SEP], as
    sentence-transformers' ``max_seq_length`` does.
    """
    _check_max_tokens(max_tokens)
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer


def _check_max_tokens(max_tokens: int) -> None:
    if not 2 < max_tokens <= MAX_POSITIONS:
        raise ValueError(f"max_tokens must be in (2, {MAX_POSITIONS}], got {max_tokens}")


@dataclass(frozen=True, slots=True)
class TextSpec:
    """How a built text model turns token states into the served vector: written by the build
    into ``encoder.json`` and part of the revision. ``prefix`` is prepended to every input
    before tokenising (E5/BGE-style instructions); ``dimensions`` truncates (Matryoshka)."""

    pooling: Pooling = "mean"
    normalize: bool = True
    prefix: str = ""
    dimensions: int | None = None
    dtype: OutputDtype = "float32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, artifact_dir: Path) -> TextSpec:
        """The spec in ``artifact_dir``, or the defaults when the build predates specs."""
        path = artifact_dir / SPEC_FILE
        if not path.is_file():
            return cls()
        doc = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            pooling=doc.get("pooling", "mean"),
            normalize=bool(doc.get("normalize", True)),
            prefix=str(doc.get("prefix", "")),
            dimensions=doc.get("dimensions"),
            dtype=doc.get("dtype", "float32"),
        )


def pool(
    hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64], pooling: Pooling
) -> npt.NDArray[np.float32]:
    """``(batch, seq, dim)`` token states -> ``(batch, dim)``: the mean over real tokens, the
    first token ([CLS]), or the last real token (decoder-style models)."""
    if pooling == "cls":
        return np.ascontiguousarray(hidden[:, 0])
    if pooling == "last":
        last = np.maximum(mask.sum(axis=1) - 1, 0)
        return np.ascontiguousarray(hidden[np.arange(len(hidden)), last])
    weights = mask[:, :, None].astype(np.float32)
    return np.asarray(
        (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0), dtype=np.float32
    )


@dataclass(frozen=True, slots=True)
class TokenizedText:
    """One text, ready for ``infer``: token ids including the special tokens, unpadded."""

    ids: npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Port:
    """A model input or output as the text encoder reads it (onnxruntime's NodeArg fields),
    for sessions that are not onnxruntime's."""

    name: str
    shape: tuple[Any, ...]


class TokenSession(Protocol):
    """What ``TextEncoder`` calls on its session: onnxruntime's ``InferenceSession`` as is,
    ``retina.encoders.text_openvino.OpenVINOSession`` (the second backend) or
    ``retina.encoders.text_native.NativeSession`` (the third)."""

    def get_inputs(self) -> Sequence[Any]: ...

    def get_outputs(self) -> Sequence[Any]: ...

    def run(
        self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]
    ) -> Sequence[Any]: ...


class TextEncoder:
    """``Encoder[TokenizedText]`` over an onnxruntime (or OpenVINO) session of a BERT-style
    encoder.

    The session may output the last hidden state ``(batch, seq, dim)``, which is mean-pooled
    over the attention mask, or an already pooled ``(batch, dim)`` sentence embedding.
    """

    def __init__(
        self,
        *,
        name: str,
        revision: str,
        session: TokenSession,
        tokenizer: Tokenizer,
        batch_coupled: bool,
        spec: TextSpec | None = None,
    ) -> None:
        self.name = name
        self.spec = spec or TextSpec()
        self.revision = revision
        self.kind: EncoderKind = "text"
        self._session = session
        self._tokenizer = tokenizer
        self._batch_coupled = batch_coupled
        padding = tokenizer.padding
        self._pad_id = (
            tokenizer.token_to_id("[PAD]")
            or tokenizer.token_to_id("<pad>")
            or (padding or {}).get("pad_id")
            or 0
        )
        inputs = {i.name for i in session.get_inputs()}
        if "input_ids" not in inputs:
            raise ArtifactError(f"{name}: the model has no input_ids input (has {sorted(inputs)})")
        self._feeds_mask = "attention_mask" in inputs
        self._feeds_types = "token_type_ids" in inputs
        outputs = session.get_outputs()
        by_name = {o.name: o for o in outputs}
        out = by_name.get("last_hidden_state", outputs[0])
        self._output = out.name
        self._pooled_output = len(out.shape) == 2
        # The OOV vector doubles as a smoke test of the artifact at load time, and gives us the
        # dimension without trusting a static shape in the graph.
        self._oov: npt.NDArray[np.float32] = self._embed([self._tokenize("")])[0]
        self.dim = int(self._oov.shape[0])

    @property
    def batch_coupled(self) -> bool:
        """True when the model quantizes activations per tensor, so ``infer`` runs items alone."""
        return self._batch_coupled

    def preprocess(self, raw: str | bytes) -> TokenizedText:
        """Tokenise one text. Bytes are taken as UTF-8. Raises ItemFailed ``empty_input`` when
        nothing in the text survives tokenisation (empty, whitespace, control characters), and
        ``not_utf8`` for bytes that do not decode."""
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ItemFailed("not_utf8", f"text is not valid UTF-8: {exc.reason}") from exc
        encoding = self._tokenizer.encode(self.spec.prefix + raw)
        # Judged after tokenisation rather than by str.strip(): the BERT normaliser also drops
        # control and zero-width characters, and an input of only those embeds exactly like "".
        if self.spec.prefix and not raw.strip():
            raise ItemFailed("empty_input", "the text is empty")
        if 0 not in encoding.special_tokens_mask:
            raise ItemFailed("empty_input", "the text has no tokens besides the special ones")
        return TokenizedText(np.asarray(encoding.ids, dtype=np.int64))

    def infer(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        """Embed prepared texts: an ``(n, dim)`` float32 array of L2-normalised rows."""
        if not batch:
            return np.empty((0, self.dim), dtype=np.float32)
        if self._batch_coupled:
            return np.concatenate([self._embed([item]) for item in batch])
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        for rows in length_buckets([len(item.ids) for item in batch]):
            out[rows] = self._embed([batch[i] for i in rows])
        return out

    def oov(self) -> npt.NDArray[np.float32]:
        """The embedding of the empty text ([CLS][SEP] only)."""
        return self._oov.copy()

    def _tokenize(self, text: str) -> TokenizedText:
        ids = self._tokenizer.encode(self.spec.prefix + text).ids
        return TokenizedText(np.asarray(ids, dtype=np.int64))

    def _embed(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        # Dynamic padding: to this batch's longest item, not to a fixed length. Padded keys are
        # masked out of attention and out of the mean, so they leave real rows unchanged.
        longest = max(len(item.ids) for item in batch)
        ids = np.full((len(batch), longest), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        for row, item in enumerate(batch):
            ids[row, : len(item.ids)] = item.ids
            mask[row, : len(item.ids)] = 1
        feeds = {"input_ids": ids}
        if self._feeds_mask:
            feeds["attention_mask"] = mask
        if self._feeds_types:
            # One segment per input: all type 0, as sentence-transformers encodes single texts.
            feeds["token_type_ids"] = np.zeros_like(ids)
        (out,) = self._session.run([self._output], feeds)
        hidden = np.asarray(out, dtype=np.float32)
        pooled = hidden if self._pooled_output else pool(hidden, mask, self.spec.pooling)
        spec = self.spec
        return finish_vectors(
            pooled, normalize=spec.normalize, dimensions=spec.dimensions, dtype=spec.dtype
        )


def length_buckets(
    lengths: Sequence[int], max_padding_fraction: float = MAX_PADDING_FRACTION
) -> list[list[int]]:
    """Indices of ``lengths`` grouped into sub-batches of similar length: sorted by length, a
    group grows while its padded size (members x longest) stays within ``1 +
    max_padding_fraction`` of its real tokens. Every index appears exactly once."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    real = 0
    for i in order:
        group = groups[-1] if groups else None
        # Ascending order: the newcomer is the group's longest.
        if group is not None and (len(group) + 1) * lengths[i] <= (1 + max_padding_fraction) * (
            real + lengths[i]
        ):
            group.append(i)
            real += lengths[i]
        else:
            groups.append([i])
            real = lengths[i]
    return groups


def is_batch_coupled(model_path: Path) -> bool:
    """Whether the ONNX graph quantizes activations per tensor at run time (see above)."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return any(node.op_type in _BATCH_COUPLED_OPS for node in graph.node)


# The backends beside onnxruntime: the file only their builds have, and the module that loads
# them (imported when needed: each imports this module, and OpenVINO is an optional extra).
OTHER_BACKENDS: Final = (
    ("native.npz", "retina.encoders.text_native"),
    ("model.xml", "retina.encoders.text_openvino"),
)


def load_text_files(
    artifact_dir: Path, *, name: str, max_tokens: int
) -> tuple[Tokenizer, TextSpec]:
    """The tokenizer and serving spec every text artifact has, whatever its backend. Raises
    ArtifactError when the tokenizer is missing or either is unreadable."""
    tokenizer_path = artifact_dir / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise ArtifactError(f"{name}: missing {tokenizer_path}")
    try:
        return load_tokenizer(tokenizer_path, max_tokens=max_tokens), TextSpec.read(artifact_dir)
    # tokenizers raises bare Exception subclasses on unreadable files.
    except Exception as exc:
        raise ArtifactError(f"{name}: cannot load {artifact_dir}: {exc}") from exc


def load(
    artifact_dir: Path,
    *,
    name: str,
    revision: str,
    intra_op_threads: int,
    max_tokens: int = 256,
) -> TextEncoder:
    """Load a built text artifact (``model.onnx`` + ``tokenizer.json`` [+ ``encoder.json``]),
    an OpenVINO build (``model.xml``: ``retina.encoders.text_openvino``) or a native one
    (``native.npz``: ``retina.encoders.text_native``).

    Raises ArtifactError when a file is missing or unreadable."""
    _check_max_tokens(max_tokens)
    for marker, module in OTHER_BACKENDS:
        if (artifact_dir / marker).is_file():
            backend = importlib.import_module(module)
            encoder: TextEncoder = backend.load(
                artifact_dir,
                name=name,
                revision=revision,
                intra_op_threads=intra_op_threads,
                max_tokens=max_tokens,
            )
            return encoder
    model_path = artifact_dir / MODEL_FILE
    if not model_path.is_file():
        raise ArtifactError(f"{name}: missing {model_path}")
    tokenizer, spec = load_text_files(artifact_dir, name=name, max_tokens=max_tokens)
    try:
        batch_coupled = is_batch_coupled(model_path)
        session = new_session(model_path, intra_op_threads=intra_op_threads)
    # onnx and onnxruntime raise bare Exception subclasses on unreadable files.
    except Exception as exc:
        raise ArtifactError(f"{name}: cannot load {artifact_dir}: {exc}") from exc
    return TextEncoder(
        name=name,
        revision=revision,
        session=session,
        tokenizer=tokenizer,
        batch_coupled=batch_coupled,
        spec=spec,
    )


if TYPE_CHECKING:
    # mypy proves the class satisfies the protocol the server programs against.
    _conforms: type[Encoder[TokenizedText]] = TextEncoder
