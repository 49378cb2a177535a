"""Fakes live under tests/ only: no shipped package (the server's, or the slim client's) holds
a fake module or defines a Fake* class, so neither wheel carries test code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["embark", "kfc", "retina", "onebox", "clients/python/embark_client"]


def test_no_shipped_package_holds_a_fake() -> None:
    offenders: list[str] = []
    for package in SHIPPED:
        files = sorted((ROOT / package).rglob("*.py"))
        assert files, f"no sources under {package}"
        for path in files:
            if "fake" in path.stem.lower():
                offenders.append(str(path.relative_to(ROOT)))
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and node.name.startswith("Fake"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert offenders == []


def test_the_fakes_are_under_tests() -> None:
    assert (ROOT / "tests" / "fakes" / "encoding.py").is_file()
    assert (ROOT / "tests" / "fakes" / "encoder.py").is_file()
