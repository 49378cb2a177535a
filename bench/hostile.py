"""A hostile image host on loopback, for the chaos test and benchmark: one HTTP server whose
path says how it misbehaves.

    /good/<id>.png     a real photo (scikit-image's coffee), the same bytes for every id
    /503/<id>.png      answers 503 forever
    /reset/<id>.png    accepts, then resets the connection (RST) without answering
    /tarpit/<id>.png   accepts and never answers (until the server stops)
    /corrupt/<id>.png  a PNG signature followed by garbage

Each id is a distinct URL, so each is a distinct cache key.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import socket
import struct
import threading
from collections.abc import Iterator

BEHAVIOURS = ("good", "503", "reset", "tarpit", "corrupt")


def coffee_png() -> bytes:
    """The photo a good URL serves (also the image benchmarks' input)."""
    from PIL import Image
    from skimage import data

    out = io.BytesIO()
    Image.fromarray(data.coffee()).resize((256, 170)).save(out, format="PNG")
    return out.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    good: bytes = b""
    stopping: threading.Event = threading.Event()

    def do_GET(self) -> None:
        kind = self.path.strip("/").split("/", 1)[0]
        if kind == "good":
            self._send(200, self.good)
        elif kind == "503":
            self._send(503, b"try later")
        elif kind == "reset":
            # SO_LINGER 0: close() sends RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif kind == "tarpit":
            self.stopping.wait()
        elif kind == "corrupt":
            self._send(200, b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
        else:
            self._send(404, b"no such behaviour")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@contextlib.contextmanager
def hostile_host() -> Iterator[str]:
    """Serve on 127.0.0.1 and a free port; yields the base URL."""
    stopping = threading.Event()
    handler = type("Handler", (_Handler,), {"good": coffee_png(), "stopping": stopping})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stopping.set()
        server.shutdown()
        server.server_close()
