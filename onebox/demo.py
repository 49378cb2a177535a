"""`embark demo` (what `make run` shows): start `embark dev` as a real process on a fresh archive,
ask for a text and an image (served from a local file), show PENDING with the model's OOV vector,
wait for the HIT with the real vector, show a read-through call, stop the process, exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from embark.catalog import Catalog
from embark.client import EmbarkClient, EmbeddingResult

_TEXT = "EmbArk demo: red leather running shoes, size 42"
_READ_THROUGH_TEXT = "EmbArk demo: stainless steel espresso machine"
_HIT_TIMEOUT_S = 60.0
_TEXT_MODEL = "minilm-l6"


def demo(args: argparse.Namespace) -> int:
    artifacts = Path(args.artifacts)
    catalog = Catalog.load(artifacts / "catalog.json")
    # The flagship text model when it is built, else whichever text model the catalog has.
    texts = [m for m in catalog.values() if m.kind == "text"]
    text_model = catalog.get(_TEXT_MODEL) or (texts[0] if texts else None)
    image_model = next((m for m in catalog.values() if m.kind == "image"), None)
    with (
        tempfile.TemporaryDirectory(prefix="embark-demo-") as scratch,
        _image_server(Path(scratch)) as image_url,
        _embark_dev(artifacts, Path(scratch) / "archive") as target,
        EmbarkClient(target) as client,
    ):
        print(f"embark dev is serving on {target} (a fresh archive in {scratch})\n")
        ok = True
        if text_model is not None:
            ok &= _miss_then_hit(client, text_model.name, text=_TEXT, image_url=None)
            print(f"\n[{text_model.name}] read-through with wait_ms=5000 on a new text:")
            started = time.perf_counter()
            result = client.get(text_model.name, text=_READ_THROUGH_TEXT, wait_ms=5000)
            _show(result, f"after {1000 * (time.perf_counter() - started):.0f} ms")
            ok &= result.hit
        if image_model is not None:
            print()
            ok &= _miss_then_hit(client, image_model.name, text=None, image_url=image_url)
    print("\ndemo ok" if ok else "\ndemo FAILED", flush=True)
    return 0 if ok else 1


def _miss_then_hit(
    client: EmbarkClient, model: str, *, text: str | None, image_url: str | None
) -> bool:
    print(f"[{model}] {text or image_url!r}")
    first = client.get(model, text=text, image_url=image_url)
    _show(first, "first ask")
    started = time.perf_counter()
    while time.perf_counter() - started < _HIT_TIMEOUT_S:
        result = client.get(model, text=text, image_url=image_url)
        if result.status != "PENDING":
            waited = 1000 * (time.perf_counter() - started)
            _show(result, f"{waited:.0f} ms later")
            if result.hit:
                cos = float(np.dot(first.array(), result.array()))
                print(
                    f"  cosine(OOV, real vector) = {cos:.3f}; norm = "
                    f"{np.linalg.norm(result.array()):.3f}"
                )
            return result.hit and first.status == "PENDING"
        time.sleep(0.05)
    print(f"  no HIT within {_HIT_TIMEOUT_S:.0f} s")
    return False


def _show(result: EmbeddingResult, when: str) -> None:
    head = ", ".join(f"{v:+.4f}" for v in result.array()[:5])
    print(f"  {when:<18} {result.status:<8} dim={result.dim} [{head}, ...] key={result.key[:12]}")
    if result.reason:
        print(f"  reason: {result.reason}")


@contextlib.contextmanager
def _image_server(scratch: Path) -> Iterator[str]:
    """Serve a real photograph (scikit-image's cat) over HTTP on loopback."""
    from PIL import Image
    from skimage import data

    root = scratch / "www"
    root.mkdir()
    Image.fromarray(data.chelsea()).save(root / "cat.png")  # type: ignore[no-untyped-call]
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cat.png"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


@contextlib.contextmanager
def _embark_dev(artifacts: Path, data_dir: Path) -> Iterator[str]:
    """Run `embark dev` as its own process (as a user would) and yield its address."""
    command = [
        sys.executable,
        "-m",
        "embark",
        "dev",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--artifacts",
        str(artifacts),
        # The demo image is served from loopback, which Retina refuses by default.
        "--allow-private-addresses",
    ]
    proc = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
        command, stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise SystemExit(f"embark dev did not start (exit code {proc.wait(30)})")
        yield line.rsplit(" ", 1)[-1].strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
