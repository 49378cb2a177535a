"""The composition root: EmbArk, the KFC loop and Retina wired into one process.

`embark dev` and `embark demo` land here. This package is the one place that imports all three
services; `embark` reaches it by name only, so the packages keep their dependency direction
(kfc -> embark; retina -> generated stubs; embark -> neither).
"""

from __future__ import annotations

import argparse

from onebox.demo import demo
from onebox.dev import dev

__all__ = ["run"]


def run(command: str, args: argparse.Namespace) -> int:
    if command == "dev":
        return dev(args)
    if command == "demo":
        return demo(args)
    raise ValueError(f"unknown onebox command {command!r}")
