"""`retina models pack` / `unpack`: a bundle round-trips the artifacts directory byte for byte,
its version depends on the contents only, and unpacking refuses (leaving the target untouched)
anything the manifest does not vouch for."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from retina.artifacts import bundle
from retina.cli import main
from retina.errors import ArtifactError


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """An artifacts directory as `retina models build` leaves it: a catalog and model files."""
    root = tmp_path / "artifacts"
    (root / "minilm-l6" / "r1").mkdir(parents=True)
    (root / "minilm-l6" / "r1" / "model.onnx").write_bytes(bytes(range(256)) * 40)
    (root / "minilm-l6" / "r1" / "tokenizer.json").write_text('{"v": 1}')
    (root / "minilm-l6" / "r1" / "model.onnx.tmp").write_text("left by a killed build")
    catalog = {"format": 1, "models": [{"name": "minilm-l6", "revision": "r-abc"}]}
    (root / "catalog.json").write_text(json.dumps(catalog))
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_round_trip_is_byte_exact_and_versioned_by_content(artifacts: Path, tmp_path: Path) -> None:
    path, packed = bundle.pack(artifacts, tmp_path)
    assert path.name == f"embark-models-{packed.version}.tar"
    assert packed.models == {"minilm-l6": "r-abc"}
    assert "minilm-l6/r1/model.onnx.tmp" not in packed.files
    target = tmp_path / "served"
    assert bundle.unpack(path, target) == packed
    expected = _tree(artifacts)
    del expected["minilm-l6/r1/model.onnx.tmp"]
    assert _tree(target) == expected
    # Same contents, another place and time: the same version and the same bytes.
    again, repacked = bundle.pack(target, tmp_path / "again.tar")
    assert repacked.version == packed.version
    assert again.read_bytes() == path.read_bytes()
    (target / "minilm-l6" / "r1" / "tokenizer.json").write_text('{"v": 2}')
    assert bundle.describe(target).version != packed.version


def test_replace_keeps_the_previous_directory(artifacts: Path, tmp_path: Path) -> None:
    path, _ = bundle.pack(artifacts, tmp_path)
    target = tmp_path / "served"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(ArtifactError, match="not empty"):
        bundle.unpack(path, target)
    bundle.unpack(path, target, replace=True)
    assert (target / "catalog.json").is_file()
    assert (tmp_path / "served.previous" / "old.txt").read_text() == "old"


def _rewrite(path: Path, out: Path, change: str) -> None:
    """Copy the bundle at ``path`` to ``out`` with one member tampered with."""
    with tarfile.open(path) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member)
            payload = data.read() if data else b""
            if change == "flip" and member.name.endswith("model.onnx"):
                payload = b"\xff" + payload[1:]
            if change == "drop" and member.name.endswith("tokenizer.json"):
                continue
            member.size = len(payload)
            dst.addfile(member, io.BytesIO(payload))
        if change in ("extra", "escape"):
            name = "extra.bin" if change == "extra" else "../escape.bin"
            info = tarfile.TarInfo(name)
            info.size = 1
            dst.addfile(info, io.BytesIO(b"x"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("flip", "does not match its manifest hash"),
        ("drop", "missing"),
        ("extra", "not in the manifest"),
        ("escape", "refused member"),
    ],
)
def test_tampered_bundles_are_refused_and_nothing_is_touched(
    artifacts: Path, tmp_path: Path, change: str, message: str
) -> None:
    path, _ = bundle.pack(artifacts, tmp_path)
    bad = tmp_path / f"bad-{change}.tar"
    _rewrite(path, bad, change)
    target = tmp_path / "served"
    with pytest.raises(ArtifactError, match=message):
        bundle.unpack(bad, target)
    assert not target.exists()
    assert not (tmp_path / "escape.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".served")) == []


def test_cli_packs_and_unpacks_with_one_line_errors(
    artifacts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b.tar"
    assert main(["models", "pack", "--artifacts", str(artifacts), "--out", str(out)]) == 0
    assert "minilm-l6" in capsys.readouterr().out
    target = tmp_path / "served"
    assert main(["models", "unpack", str(out), "--artifacts", str(target)]) == 0
    assert main(["models", "unpack", str(tmp_path / "nope.tar"), "--artifacts", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("retina: ")
    assert "Traceback" not in err
    assert main(["models", "pack", "--artifacts", str(tmp_path / "empty")]) == 1
    assert "build the models first" in capsys.readouterr().err
