"""The OpenAI-compatible front of `embark dev` (a real process, real models, the embedded
archive), asked with the real ``openai`` package: the contract in
tests/contracts/openai_contract.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contracts.openai_contract import Front, OpenAIContract
from tests.e2e.images import serve_images

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def front(built_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    data = tmp_path_factory.mktemp("http-dev")
    log = data / "embark-dev.log"
    with serve_images(data / "www") as images, log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "embark", "dev", "--port", "0", "--http-port", "0",
             "--data-dir", str(data), "--artifacts", str(built_artifacts),
             "--allow-private-addresses"],
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            grpc_line, http_line = proc.stdout.readline(), proc.stdout.readline()
            assert "listening on" in grpc_line, log.read_text()
            assert http_line.startswith("embark dev http on http://"), log.read_text()
            yield Front(http=http_line.split()[-1], grpc=grpc_line.split()[-1], images=images)
        finally:
            proc.terminate()
            proc.wait(30)
            proc.stdout.close()  # type: ignore[union-attr]
    assert "Traceback" not in log.read_text(errors="replace")


class TestEmbarkDev(OpenAIContract):
    pass
