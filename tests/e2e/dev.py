"""`embark dev` as a real process for the e2e tests that need one running, and a real photograph
(scikit-image's coffee) served over HTTP on loopback for tests that embed an image by URL
(``missing.png`` answers 404)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Dev:
    grpc: str  # 127.0.0.1:PORT
    http: str  # http://127.0.0.1:PORT
    log: Path


@contextlib.contextmanager
def embark_dev(artifacts: Path, data: Path) -> Iterator[Dev]:
    """Start `embark dev` on free ports with a fresh archive under ``data``; stop it after.
    Loopback image URLs are allowed (the image server below)."""
    data.mkdir(parents=True, exist_ok=True)
    log = data / "embark-dev.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "embark", "dev", "--port", "0", "--http-port", "0",
             "--data-dir", str(data), "--artifacts", str(artifacts),
             "--allow-private-addresses"],
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )  # fmt: skip
    assert proc.stdout is not None
    try:
        grpc_line, http_line = proc.stdout.readline(), proc.stdout.readline()
        assert "listening on" in grpc_line, log.read_text()
        assert http_line.startswith("embark dev http on http://"), log.read_text()
        yield Dev(grpc=grpc_line.split()[-1], http=http_line.split()[-1], log=log)
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()
    assert "Traceback" not in log.read_text(errors="replace")


@contextlib.contextmanager
def serve_images(root: Path) -> Iterator[str]:
    from PIL import Image
    from skimage import data

    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.coffee()).save(root / "coffee.png")
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return
