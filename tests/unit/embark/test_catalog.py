"""The model catalog file: loading, helpful errors, lookups."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embark import vectors
from embark.catalog import CATALOG_FORMAT, Catalog, CatalogError, ModelSpec, model_entry
from embark.errors import UnknownModel
from embark.vectors import DimensionMismatch

TEXT = ModelSpec(
    name="minilm-l6",
    kind="text",
    dim=4,
    revision="sha256:abc+pre1",
    oov=vectors.to_bytes([0.5, -0.5, 0.5, -0.5], 4),
)
IMAGE = ModelSpec(
    name="efficientnet-lite0",
    kind="image",
    dim=3,
    revision="sha256:def+pre2",
    oov=vectors.to_bytes(np.zeros(3), 3),
)


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def catalog_doc(*entries: dict[str, object]) -> dict[str, object]:
    return {"format": CATALOG_FORMAT, "models": list(entries)}


def test_loads_a_valid_catalog(tmp_path: Path) -> None:
    entry = model_entry(TEXT) | {"onnx": "minilm/model.int8.onnx", "build": {"cosine": 0.998}}
    path = write(tmp_path / "catalog.json", catalog_doc(entry, model_entry(IMAGE)))

    catalog = Catalog.load(path)

    assert dict(catalog) == {TEXT.name: TEXT, IMAGE.name: IMAGE}
    assert len(catalog) == 2
    assert sorted(catalog) == sorted([TEXT.name, IMAGE.name])
    assert catalog.require(TEXT.name) is catalog[TEXT.name]
    assert catalog[TEXT.name].oov == TEXT.oov
    assert catalog.get("nope") is None


def test_model_entry_is_json_and_round_trips() -> None:
    entry = model_entry(TEXT)

    assert json.loads(json.dumps(entry)) == entry
    assert base64.b64decode(str(entry["oov"])) == TEXT.oov
    assert Catalog.from_dict(catalog_doc(entry))[TEXT.name] == TEXT


def test_an_empty_catalog_is_valid(tmp_path: Path) -> None:
    assert len(Catalog.load(write(tmp_path / "c.json", catalog_doc()))) == 0


def test_missing_file_says_how_to_create_it(tmp_path: Path) -> None:
    path = tmp_path / "artifacts" / "catalog.json"

    with pytest.raises(CatalogError) as info:
        Catalog.load(path)

    assert str(path) in info.value.message
    assert "retina models build" in info.value.message


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2"])
def test_unparsable_file_is_a_catalog_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(CatalogError, match="cannot read catalog"):
        Catalog.load(path)


def test_a_directory_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=str(tmp_path)):
        Catalog.load(tmp_path)


def test_non_utf8_file_is_a_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_bytes(b'{"format": 1, "models": ["\xff"]}')

    with pytest.raises(CatalogError):
        Catalog.load(path)


@pytest.mark.parametrize(
    "doc",
    [
        [],
        "catalog",
        {"models": []},
        {"format": 2, "models": []},
        {"format": "1", "models": []},
    ],
)
def test_wrong_format_is_refused(tmp_path: Path, doc: object) -> None:
    with pytest.raises(CatalogError, match=f"format {CATALOG_FORMAT}"):
        Catalog.load(write(tmp_path / "catalog.json", doc))


@pytest.mark.parametrize("models", [None, 5, "minilm", {"name": "minilm"}])
def test_models_must_be_a_list(tmp_path: Path, models: object) -> None:
    path = write(tmp_path / "catalog.json", {"format": CATALOG_FORMAT, "models": models})

    with pytest.raises(CatalogError, match='"models" must be a list'):
        Catalog.load(path)


def _without(key: str) -> dict[str, object]:
    entry = model_entry(TEXT)
    del entry[key]
    return entry


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(_without("name"), id="no-name"),
        pytest.param(_without("kind"), id="no-kind"),
        pytest.param(_without("dim"), id="no-dim"),
        pytest.param(_without("revision"), id="no-revision"),
        pytest.param(_without("oov"), id="no-oov"),
        pytest.param(model_entry(TEXT) | {"kind": "audio"}, id="bad-kind"),
        pytest.param(model_entry(TEXT) | {"dim": "four"}, id="dim-not-a-number"),
        pytest.param(model_entry(TEXT) | {"dim": None}, id="dim-null"),
        pytest.param(model_entry(TEXT) | {"oov": "not base64!"}, id="oov-not-base64"),
        pytest.param(model_entry(TEXT) | {"oov": 7}, id="oov-not-a-string"),
        pytest.param(model_entry(TEXT) | {"dim": 5}, id="oov-shorter-than-dim"),
        pytest.param(model_entry(TEXT) | {"dim": 3}, id="oov-longer-than-dim"),
        pytest.param("minilm-l6", id="entry-a-string"),
        pytest.param(None, id="entry-null"),
        pytest.param([1, 2], id="entry-a-list"),
    ],
)
def test_malformed_entries_are_refused(tmp_path: Path, entry: object) -> None:
    path = write(tmp_path / "catalog.json", catalog_doc(model_entry(IMAGE), entry))  # type: ignore[arg-type]

    with pytest.raises(CatalogError, match="bad model entry") as info:
        Catalog.load(path)

    assert str(path) in info.value.message


def test_oov_length_is_checked_against_dim() -> None:
    with pytest.raises(DimensionMismatch):
        ModelSpec(name="m", kind="text", dim=4, revision="r", oov=b"\x00" * 12)
    with pytest.raises(CatalogError, match="expected 20"):
        Catalog.from_dict(catalog_doc(model_entry(TEXT) | {"dim": 5}))


def test_require_unknown_lists_known_models() -> None:
    catalog = Catalog.from_dict(catalog_doc(model_entry(TEXT), model_entry(IMAGE)))

    with pytest.raises(UnknownModel) as info:
        catalog.require("clip-vit")

    assert info.value.message == (
        "unknown model 'clip-vit'; known models: efficientnet-lite0, minilm-l6"
    )


def test_require_on_an_empty_catalog_says_none() -> None:
    with pytest.raises(UnknownModel, match="known models: none"):
        Catalog({}).require("minilm-l6")


def test_catalog_is_a_snapshot_of_its_input() -> None:
    models = {TEXT.name: TEXT}
    catalog = Catalog(models)
    models[IMAGE.name] = IMAGE

    assert list(catalog) == [TEXT.name]
