"""The slim client distribution as a user installs it: ``clients/python`` into a fresh Python
3.12 virtualenv (pyenv's, under ~/.pyenv/versions), which must then hold no onnxruntime, no
Cassandra or Kafka driver and no pydantic, and which asks a running `embark dev` over gRPC and
HTTP: batch splitting, wait-until-HIT with a deadline, typed errors."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.dev import Dev, embark_dev

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NOT_INSTALLED = ("onnxruntime", "cassandra", "confluent_kafka", "pydantic", "embark", "retina")

SCRIPT = """
import sys, uuid
import numpy as np
from embark_client import (EmbarkClient, HttpEmbarkClient, InvalidInput, NotReady,
    UnknownModel, make_input)

grpc_target, http_base = sys.argv[1], sys.argv[2]
texts = [f"slim client item {i} {uuid.uuid4().hex[:8]}" for i in range(5)]
inputs = [make_input(text=t) for t in texts]
# max_batch=2: five inputs go as three calls; the answers come back in input order.
with EmbarkClient(grpc_target, timeout_s=30, max_batch=2) as client:
    first = client.get_many("minilm-l6", inputs)
    assert [r.status for r in first] == ["PENDING"] * 5, first
    try:
        client.wait_for_hits("minilm-l6", [make_input(text="never " + texts[0])],
                             deadline_s=0.0, poll_s=0.05)
        raise AssertionError("NotReady expected")
    except NotReady as exc:
        assert exc.results[0].status == "PENDING"
    hits = client.wait_for_hits("minilm-l6", inputs, deadline_s=60)
    assert [r.status for r in hits] == ["HIT"] * 5
    assert len({r.key for r in hits}) == 5
    assert [r.key for r in hits] == [r.key for r in first]
    try:
        client.get("no-such-model", text="x")
        raise AssertionError("UnknownModel expected")
    except UnknownModel as exc:
        assert exc.code.name == "NOT_FOUND" and not exc.retriable
    try:
        client.get("minilm-l6", text="   ")
        raise AssertionError("InvalidInput expected")
    except InvalidInput:
        pass
with HttpEmbarkClient(http_base, timeout_s=30) as http:
    over_http = http.get_many("minilm-l6", texts)
    assert [r.status for r in over_http] == ["HIT"] * 5
    for a, b in zip(over_http, hits):
        assert np.array_equal(a.array(), b.array())
print("slim client ok")
"""


def _python312() -> Path | None:
    for candidate in sorted((Path.home() / ".pyenv" / "versions").glob("3.12*/bin/python3.12")):
        return candidate
    found = shutil.which("python3.12")
    return Path(found) if found else None


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = _python312()
    if python is None:
        pytest.skip("no Python 3.12 (looked under ~/.pyenv/versions and on PATH)")
    where = tmp_path_factory.mktemp("slim") / "venv"
    subprocess.run([str(python), "-m", "venv", str(where)], check=True, timeout=120)
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    # A wheel built from the checkout, as `pip install ./clients/python` builds it.
    subprocess.run([*pip, str(ROOT / "clients" / "python")], check=True, timeout=600)
    return where / "bin" / "python"


@pytest.fixture(scope="module")
def dev(built_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    with embark_dev(built_artifacts, tmp_path_factory.mktemp("slim-dev")) as running:
        yield running


def test_the_fresh_venv_holds_only_the_client(venv: Path) -> None:
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    out = subprocess.run(
        [str(venv), "-c", probe, *NOT_INSTALLED],
        capture_output=True,
        text=True,
        check=True,
        cwd=venv.parents[2],  # outside the checkout, whose packages `-c` would otherwise see
    )
    assert out.stdout.strip() == "[]", out.stdout
    version = subprocess.run(
        [str(venv), "-c", "import sys, embark_client; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
        cwd=venv.parents[2],
    )
    assert version.stdout.strip() == "(3, 12)"


def test_the_slim_client_works_against_embark_dev(venv: Path, dev: Dev) -> None:
    run = subprocess.run(
        [str(venv), "-c", SCRIPT, dev.grpc, dev.http],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=venv.parents[2],
    )
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr[-3000:]}"
    assert run.stdout.strip().endswith("slim client ok")
