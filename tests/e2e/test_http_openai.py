"""The OpenAI-compatible front of `embark dev` (a real process, real models, the embedded
archive), asked with the real ``openai`` package: the contract in
tests/contracts/openai_contract.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contracts.openai_contract import Front, OpenAIContract
from tests.e2e.dev import embark_dev, serve_images

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def front(built_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    root = tmp_path_factory.mktemp("http-dev")
    with serve_images(root / "www") as images, embark_dev(built_artifacts, root / "data") as dev:
        yield Front(http=dev.http, grpc=dev.grpc, images=images)


class TestEmbarkDev(OpenAIContract):
    pass
