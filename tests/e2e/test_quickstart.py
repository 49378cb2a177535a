"""The quickstart as a user runs it: `embark demo` starts `embark dev` as its own process on a
fresh embedded archive, sees PENDING with the OOV vector, then HIT with the real vector, for a
text and for an image served over HTTP, and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_embark_demo_turns_misses_into_hits(built_artifacts: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "embark", "demo", "--artifacts", str(built_artifacts)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.splitlines()
    for model, what in (("minilm-l6", "'EmbArk demo"), ("efficientnet-lite0", "'http://127.0.0")):
        start = next(i for i, line in enumerate(lines) if line.startswith(f"[{model}] {what}"))
        first, then = lines[start + 1].split(), lines[start + 2].split()
        assert first[:3] == ["first", "ask", "PENDING"], lines[start + 1]
        assert "HIT" in then, lines[start + 2]
        assert lines[start + 3].strip().startswith("cosine(OOV, real vector)")
    read_through = next(i for i, line in enumerate(lines) if "read-through" in line)
    assert "HIT" in lines[read_through + 1].split()
    assert lines[-1] == "demo ok"
