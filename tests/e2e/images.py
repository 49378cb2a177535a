"""A real photograph (scikit-image's coffee) served over HTTP on loopback, for tests that embed
an image by URL; ``missing.png`` answers 404."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path


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
