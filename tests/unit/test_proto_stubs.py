"""The committed stubs in embark_api/ must be exactly what `make proto` generates from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)],
        check=True,
        cwd=ROOT,
        env={"PYTHON": sys.executable, "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"},
        capture_output=True,
    )
    fresh = _stubs(tmp_path)
    committed = _stubs(ROOT)
    assert fresh == committed, "run `make proto`: generated files differ from committed ones"
    for rel in fresh:
        assert (tmp_path / rel).read_bytes() == (ROOT / rel).read_bytes(), (
            f"{rel} is stale: run `make proto` and commit the result"
        )


def _stubs(root: Path) -> list[Path]:
    return sorted(
        p.relative_to(root)
        for p in (root / "embark_api").rglob("*_pb2*")
        if p.suffix in (".py", ".pyi")
    )
