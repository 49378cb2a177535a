"""Session fixtures shared by every test tier.

``built_artifacts``: the real models, built (or reused from the content-hash cache) into the
repository's ``artifacts/`` — the same directory `make models` fills, so a built tree is never
rebuilt by the tests. Integration and e2e tests serve these real models, never fakes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Nothing in the test suite may reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def built_artifacts() -> Path:
    from retina.artifacts.build import build_all

    artifacts = Path(os.environ.get("EMBARK_TEST_ARTIFACTS", ROOT / "artifacts"))
    build_all(artifacts)
    return artifacts
