"""The dependency direction of DESIGN.md, checked on the source: embark never imports retina,
kfc or onebox; retina imports only the generated stubs (embark_api) and the shared core
(embark_core), never embark, kfc or onebox; kfc never imports retina or onebox; embark_core
imports none of the services. tests/ and onebox/ may import anything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "embark": {"retina", "kfc", "onebox"},
    "retina": {"embark", "kfc", "onebox"},
    "kfc": {"retina", "onebox"},
    "embark_core": {"embark", "retina", "kfc", "onebox"},
}


def imported_packages(source: str, module: str) -> set[tuple[str, int]]:
    """Top-level package of every import in ``source`` (``module`` is its dotted name, used to
    resolve relative imports), with the line it is on. Imports anywhere count: inside
    functions, under TYPE_CHECKING, in try blocks."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Relative: resolved against the importing module's package.
                package = module.split(".")[: -node.level] or [""]
                found.add((package[0], node.lineno))
            elif node.module:
                found.add((node.module.split(".")[0], node.lineno))
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_the_scan_finds_every_package() -> None:
    for package in FORBIDDEN:
        assert sources(package), f"no sources under {package}/"


def test_the_parser_sees_every_form_of_import() -> None:
    source = """
import os, retina.fetch
from kfc import worker
from embark_api.v1 import jobs_pb2
from . import sibling
from ..store import base
def later():
    import onebox.dev
"""
    assert {name for name, _ in imported_packages(source, "embark.queue.local")} == {
        "os",
        "retina",
        "kfc",
        "embark_api",
        "embark",
        "onebox",
    }


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependency_direction(package: str) -> None:
    violations = []
    for path in sources(package):
        relative = path.relative_to(ROOT)
        module = ".".join(relative.with_suffix("").parts)
        for name, line in imported_packages(path.read_text(encoding="utf-8"), module):
            if name in FORBIDDEN[package]:
                violations.append(f"{relative}:{line} imports {name}")

    assert sorted(violations) == [], f"{package} must not import {sorted(FORBIDDEN[package])}"
