"""What EmbArk reads of a model beyond its key fields (precision, parity, dtype, truncation,
case folding, the pinned artifact), models defined but not built, and ListModels' answer."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from embark.catalog import Catalog, CatalogError
from embark.errors import UnknownModel
from embark.server.servicer import list_models


def entry(name: str = "m", **extra: Any) -> dict[str, Any]:
    oov = base64.b64encode(np.full(4, 0.5, dtype="<f4").tobytes()).decode()
    return {"name": name, "kind": "text", "dim": 4, "revision": "r-1", "oov": oov, **extra}


def test_an_older_catalog_reads_with_defaults() -> None:
    spec = Catalog.from_dict({"format": 1, "models": [entry()]}).require("m")
    assert (spec.precision, spec.dtype, spec.dimensions, spec.parity, spec.fold_case) == (
        "",
        "float32",
        None,
        None,
        False,
    )


def test_the_build_fields_are_read() -> None:
    doc = {
        "format": 1,
        "models": [
            entry(
                precision="int8",
                dtype="float16",
                dimensions=4,
                parity={"cos_min": 0.99, "cos_mean": 0.997, "n": 66, "reference": "x"},
                fold_case=True,
                artifact_sha256="ab" * 32,
            )
        ],
        "defined": ["later"],
    }
    catalog = Catalog.from_dict(doc)
    spec = catalog.require("m")
    assert (spec.precision, spec.dtype, spec.dimensions, spec.fold_case) == (
        "int8",
        "float16",
        4,
        True,
    )
    assert spec.parity == pytest.approx(0.997)
    assert spec.artifact_sha256 == "ab" * 32
    assert list(catalog) == ["m"]  # a defined-only model is not served
    with pytest.raises(UnknownModel, match=r"defined but not built.*--only later"):
        catalog.require("later")


@pytest.mark.parametrize(
    "bad",
    [entry(dtype="int4"), entry(dimensions="many"), entry(parity={"cos_min": 1.0})],
)
def test_a_bad_build_field_is_a_catalog_error(bad: dict[str, Any]) -> None:
    with pytest.raises(CatalogError, match="bad model entry"):
        Catalog.from_dict({"format": 1, "models": [bad]})


def test_list_models_answers_built_then_defined() -> None:
    doc = {
        "format": 1,
        "models": [entry("b", precision="fp32"), entry("a", precision="int8", fold_case=True)],
        "defined": ["z-later"],
    }
    reply = list_models(Catalog.from_dict(doc), read_through=True)
    assert [(m.name, m.built) for m in reply.models] == [
        ("a", True),
        ("b", True),
        ("z-later", False),
    ]
    a = reply.models[0]
    assert (a.kind, a.dim, a.revision, a.precision, a.fold_case, a.read_through) == (
        "text",
        4,
        "r-1",
        "int8",
        True,
        True,
    )
    assert not list_models(Catalog.from_dict(doc), read_through=False).models[0].read_through
