"""The build orchestrator with a tiny fake builder: caching by inputs digest, atomic output,
the catalog file (checked with EmbArk's own reader), and loading encoders back from it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from embark.catalog import Catalog
from retina.artifacts.base import BuildReport, ModelBuilder, Parity, canonical
from retina.artifacts.build import (
    CATALOG_FILE,
    REPORT_FILE,
    CatalogModel,
    LoadOptions,
    build_all,
    load_encoders,
    revision_of,
    validate_all,
)
from retina.cli import format_validation
from retina.encoders.base import Encoder, EncoderKind
from retina.errors import ArtifactError
from retina.settings import RetinaSettings
from tests.fakes.encoder import FakeEncoder, fake_vector

PREPROCESSING = "fake-pre-v1"


@dataclass
class FakeModel:
    """What the fake builder reads (``content``) and a record of its builds."""

    name: str
    kind: EncoderKind
    dim: int
    content: bytes
    builds: list[Path] = field(default_factory=list)
    fail: bool = False
    # What validate() measures now (the build recorded 0.99).
    cos_mean_now: float = 0.99
    validated: list[Path] = field(default_factory=list)


def defines_of(content: bytes) -> str:
    """What defines the fake vectors: its source's hash and preprocessing."""
    return canonical({"source": hashlib.sha256(content).hexdigest(), "pre": PREPROCESSING})


class FakeBuilder:
    def __init__(self, model: FakeModel) -> None:
        self.model = model
        self.name = model.name
        self.kind: EncoderKind = model.kind
        self.dim = model.dim

    def inputs_digest(self) -> str:
        return hashlib.sha256(b"fake-builder-v1\0" + self.model.content).hexdigest()

    def build(self, out_dir: Path) -> BuildReport:
        self.model.builds.append(out_dir)
        assert not any(out_dir.iterdir())  # the orchestrator hands over an empty directory
        (out_dir / "model.onnx").write_bytes(self.model.content)
        (out_dir / "vocab.txt").write_text("fake")
        if self.model.fail:
            raise ArtifactError(f"{self.name}: below the parity gate")
        return BuildReport(
            name=self.name,
            kind=self.kind,
            dim=self.dim,
            model="model.onnx",
            preprocessing_version=PREPROCESSING,
            size_bytes=len(self.model.content),
            parity=Parity(cos_min=0.97, cos_mean=0.99, n=3, reference="fake fp32"),
            latency_ms_b1=1.5,
            files=("model.onnx", "vocab.txt"),
            extra={"note": "fake"},
            defines=defines_of(self.model.content),
        )

    def validate(self, artifact_dir: Path) -> Parity:
        self.model.validated.append(artifact_dir)
        assert (artifact_dir / "model.onnx").is_file()
        if self.model.cos_mean_now < 0.98:
            raise ArtifactError(f"{self.name}: parity {self.model.cos_mean_now} below the gate")
        return Parity(cos_min=0.97, cos_mean=self.model.cos_mean_now, n=3, reference="fake fp32")


def fake_loader(artifact_dir: Path, options: LoadOptions) -> Encoder[str | bytes]:
    kind: EncoderKind = "image" if "image" in options.name else "text"
    assert (artifact_dir / "model.onnx").is_file()
    return FakeEncoder(name=options.name, kind=kind, dim=4, revision=options.revision)


@pytest.fixture
def models() -> dict[str, FakeModel]:
    return {
        "fake-text": FakeModel("fake-text", "text", 4, b"text weights v1"),
        "fake-image": FakeModel("fake-image", "image", 4, b"image weights v1"),
    }


@pytest.fixture
def registry(models: dict[str, FakeModel]) -> dict[str, CatalogModel]:
    def factory(model: FakeModel) -> Callable[[], ModelBuilder]:
        return lambda: FakeBuilder(model)

    return {name: CatalogModel(name, m.kind, factory(m), fake_loader) for name, m in models.items()}


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> RetinaSettings:
    for name in list(os.environ):
        if name.startswith("RETINA_"):
            monkeypatch.delenv(name)
    return RetinaSettings()


def test_build_writes_artifacts_and_a_catalog_embark_reads(
    tmp_path: Path, registry: dict[str, CatalogModel], models: dict[str, FakeModel]
) -> None:
    built = build_all(tmp_path, registry=registry)

    assert [b.report.name for b in built] == ["fake-text", "fake-image"]
    assert not any(b.cached for b in built)
    text = built[0]
    assert text.artifact_dir == tmp_path / "fake-text" / text.inputs_digest[:16]
    assert (text.artifact_dir / REPORT_FILE).is_file()
    assert text.revision == revision_of(defines_of(models["fake-text"].content))
    assert text.revision.startswith("r-")
    assert len(text.revision) == 2 + 16
    # Nothing but the finished builds next to them: temporary directories are gone.
    assert sorted(p.name for p in (tmp_path / "fake-text").iterdir()) == [text.inputs_digest[:16]]

    catalog = Catalog.load(tmp_path / CATALOG_FILE)
    assert sorted(catalog) == ["fake-image", "fake-text"]
    spec = catalog.require("fake-text")
    assert (spec.kind, spec.dim, spec.revision) == ("text", 4, text.revision)
    np.testing.assert_array_equal(np.frombuffer(spec.oov, "<f4"), fake_vector(b"", 4))

    doc = json.loads((tmp_path / CATALOG_FILE).read_text())
    assert doc["format"] == 1
    entry = next(e for e in doc["models"] if e["name"] == "fake-text")
    assert entry["artifact_dir"] == f"fake-text/{text.inputs_digest[:16]}"
    assert entry["backend"] == "onnxruntime"  # a model.onnx; model.xml would say openvino
    assert entry["parity"] == {"cos_min": 0.97, "cos_mean": 0.99, "n": 3, "reference": "fake fp32"}
    assert entry["size_bytes"] == len(models["fake-text"].content)
    assert entry["latency_ms_b1"] == 1.5
    assert base64.b64decode(entry["oov"]) == spec.oov


def test_second_build_reuses_everything(
    tmp_path: Path, registry: dict[str, CatalogModel], models: dict[str, FakeModel]
) -> None:
    first = build_all(tmp_path, registry=registry)
    catalog_before = (tmp_path / CATALOG_FILE).read_text()

    second = build_all(tmp_path, registry=registry)

    assert all(b.cached for b in second)
    assert [len(m.builds) for m in models.values()] == [1, 1]  # nothing rebuilt
    assert [b.revision for b in second] == [b.revision for b in first]
    assert [b.report for b in second] == [b.report for b in first]
    assert (tmp_path / CATALOG_FILE).read_text() == catalog_before


def test_force_rebuilds(
    tmp_path: Path, registry: dict[str, CatalogModel], models: dict[str, FakeModel]
) -> None:
    build_all(tmp_path, registry=registry)
    again = build_all(tmp_path, ["fake-text"], force=True, registry=registry)
    assert not again[0].cached
    assert len(models["fake-text"].builds) == 2
    assert len(models["fake-image"].builds) == 1


def test_changed_inputs_build_a_new_revision(
    tmp_path: Path, registry: dict[str, CatalogModel], models: dict[str, FakeModel]
) -> None:
    (old,) = build_all(tmp_path, ["fake-text"], registry=registry)
    models["fake-text"].content = b"text weights v2"
    (new,) = build_all(tmp_path, ["fake-text"], registry=registry)
    assert not new.cached
    assert new.artifact_dir != old.artifact_dir
    assert new.revision != old.revision
    assert Catalog.load(tmp_path / CATALOG_FILE)["fake-text"].revision == new.revision


def test_only_keeps_other_catalog_entries(
    tmp_path: Path, registry: dict[str, CatalogModel]
) -> None:
    build_all(tmp_path, registry=registry)
    build_all(tmp_path, ["fake-image"], force=True, registry=registry)
    assert sorted(Catalog.load(tmp_path / CATALOG_FILE)) == ["fake-image", "fake-text"]


def test_tampered_artifact_is_rebuilt(
    tmp_path: Path, registry: dict[str, CatalogModel], models: dict[str, FakeModel]
) -> None:
    (built,) = build_all(tmp_path, ["fake-text"], registry=registry)
    (built.artifact_dir / "model.onnx").write_bytes(b"corrupted")
    (again,) = build_all(tmp_path, ["fake-text"], registry=registry)
    assert not again.cached
    assert again.revision == built.revision  # same inputs, same bytes, same revision
    assert len(models["fake-text"].builds) == 2


def test_incomplete_build_is_rebuilt(
    tmp_path: Path, registry: dict[str, CatalogModel], models: dict[str, FakeModel]
) -> None:
    (built,) = build_all(tmp_path, ["fake-text"], registry=registry)
    (built.artifact_dir / REPORT_FILE).unlink()
    (again,) = build_all(tmp_path, ["fake-text"], registry=registry)
    assert not again.cached
    assert (again.artifact_dir / REPORT_FILE).is_file()


def test_failed_build_leaves_nothing_behind(
    tmp_path: Path, registry: dict[str, CatalogModel], models: dict[str, FakeModel]
) -> None:
    models["fake-image"].fail = True
    with pytest.raises(ArtifactError, match="parity gate"):
        build_all(tmp_path, registry=registry)
    assert list((tmp_path / "fake-image").iterdir()) == []
    assert not (tmp_path / CATALOG_FILE).exists()  # the catalog is written only on success


def test_unknown_model_name(tmp_path: Path, registry: dict[str, CatalogModel]) -> None:
    with pytest.raises(ArtifactError, match="unknown model"):
        build_all(tmp_path, ["nope"], registry=registry)


def test_load_encoders_from_the_catalog(
    tmp_path: Path, registry: dict[str, CatalogModel], settings: RetinaSettings
) -> None:
    built = {b.report.name: b for b in build_all(tmp_path, registry=registry)}
    encoders = load_encoders(tmp_path, settings, registry=registry)
    assert sorted(encoders) == ["fake-image", "fake-text"]
    assert encoders["fake-text"].revision == built["fake-text"].revision

    only = load_encoders(
        tmp_path, settings.model_copy(update={"models": ("fake-image",)}), registry=registry
    )
    assert list(only) == ["fake-image"]


def test_load_encoders_refuses_what_the_catalog_does_not_vouch_for(
    tmp_path: Path, registry: dict[str, CatalogModel], settings: RetinaSettings
) -> None:
    with pytest.raises(ArtifactError, match="retina models build"):
        load_encoders(tmp_path, settings, registry=registry)  # no catalog yet

    (built, _) = build_all(tmp_path, registry=registry)
    with pytest.raises(ArtifactError, match="not in"):
        load_encoders(
            tmp_path, settings.model_copy(update={"models": ("other",)}), registry=registry
        )

    (built.artifact_dir / "model.onnx").write_bytes(b"swapped weights")
    with pytest.raises(ArtifactError, match="not the build the catalog pins"):
        load_encoders(tmp_path, settings, registry=registry)


# --- validate -------------------------------------------------------------------------------


def test_validate_remeasures_every_built_model_without_building(
    tmp_path: Path, registry: dict[str, CatalogModel], models: dict[str, FakeModel]
) -> None:
    built = {b.report.name: b for b in build_all(tmp_path, registry=registry)}
    checked = validate_all(tmp_path, registry=registry)
    assert [v.name for v in checked] == ["fake-image", "fake-text"]
    assert all(v.ok for v in checked)
    assert checked[1].revision == built["fake-text"].revision
    assert checked[1].parity is not None
    assert checked[1].built_parity is not None
    assert models["fake-text"].validated == [built["fake-text"].artifact_dir]
    assert len(models["fake-text"].builds) == 1  # nothing rebuilt
    assert "ok" in format_validation(checked)


def test_validate_fails_a_model_below_its_gate_now(
    tmp_path: Path, registry: dict[str, CatalogModel], models: dict[str, FakeModel]
) -> None:
    build_all(tmp_path, registry=registry)
    models["fake-text"].cos_mean_now = 0.5  # e.g. a new onnxruntime computes differently
    by_name = {v.name: v for v in validate_all(tmp_path, registry=registry)}
    assert by_name["fake-image"].ok
    assert not by_name["fake-text"].ok
    assert "below the gate" in str(by_name["fake-text"].problem)
    assert "FAIL" in format_validation(list(by_name.values()))


def test_validate_reports_stale_tampered_and_missing_models(
    tmp_path: Path, registry: dict[str, CatalogModel], models: dict[str, FakeModel]
) -> None:
    built = {b.report.name: b for b in build_all(tmp_path, registry=registry)}
    models["fake-text"].content = b"text weights v2"  # inputs changed since the build
    (built["fake-image"].artifact_dir / "model.onnx").write_bytes(b"swapped")
    by_name = {
        v.name: v
        for v in validate_all(tmp_path, ["fake-text", "fake-image", "nope"], registry=registry)
    }
    assert "stale" in str(by_name["fake-text"].problem)
    assert "no intact build" in str(by_name["fake-image"].problem)
    assert "not in the catalog" in str(by_name["nope"].problem)


def test_a_catalog_from_before_pinned_artifacts_asks_for_a_rebuild(
    tmp_path: Path, registry: dict[str, CatalogModel], settings: RetinaSettings
) -> None:
    build_all(tmp_path, registry=registry)
    doc = json.loads((tmp_path / CATALOG_FILE).read_text())
    for entry in doc["models"]:
        del entry["artifact_sha256"]  # as the catalogs written before revisions meant anything
    (tmp_path / CATALOG_FILE).write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="rebuild with `retina models build`"):
        load_encoders(tmp_path, settings, registry=registry)
