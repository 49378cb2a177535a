"""Benchmark inputs: distinct, catalogue-like product titles (importable without any backend
driver, so the Locust file stays light)."""

from __future__ import annotations

_COLOURS = ["red", "blue", "black", "white", "green", "grey", "navy", "beige"]
_THINGS = [
    "running shoes",
    "wool scarf",
    "ceramic mug",
    "hiking boots",
    "desk lamp",
    "rain jacket",
    "leather wallet",
    "yoga mat",
    "coffee grinder",
    "backpack",
]


def titles(n: int, prefix: str = "product") -> list[str]:
    """``n`` distinct titles; the same ``prefix`` and ``n`` always give the same list."""
    return [
        f"{prefix} {_COLOURS[i % 8]} {_THINGS[(i // 8) % 10]} model {i} size {i % 13}"
        for i in range(n)
    ]
