"""The HTTP front under the gRPC port's TLS settings (``ServerTls`` through
``embark_core.tls.server_ssl_context``): HTTPS works, plaintext is refused, and under mutual TLS a
client without a certificate signed by the configured CA is refused at the handshake."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest

from embark.catalog import Catalog
from embark.http import HttpFront, HttpOptions
from embark.metrics import EmbarkMetrics
from tests.unit.embark.http.test_routes import OPTIONS, TEXT
from tests.unit.test_tls import Pki, _server_tls, pki  # noqa: F401 (pki is a fixture)


@pytest.fixture
async def https_port(pki: Pki) -> AsyncIterator[int]:  # noqa: F811
    options = HttpOptions(**{**OPTIONS.__dict__, "tls": _server_tls(pki, mutual=True)})
    front = HttpFront(options, catalog=Catalog({TEXT.name: TEXT}), metrics=EmbarkMetrics())
    port = await front.start("127.0.0.1", 0)
    yield port
    await front.stop()


def _context(pki: Pki, *, with_cert: bool) -> ssl.SSLContext:  # noqa: F811
    context = ssl.create_default_context(cafile=str(pki.ca))
    if with_cert:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


async def test_https_with_mutual_tls(pki: Pki, https_port: int) -> None:  # noqa: F811
    url = f"https://127.0.0.1:{https_port}/v1/models"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, ssl=_context(pki, with_cert=True)) as response:
            assert response.status == 200
            assert (await response.json())["data"][0]["id"] == TEXT.name
        with pytest.raises(aiohttp.ClientError):
            async with session.get(url, ssl=_context(pki, with_cert=False)) as response:
                await response.read()
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://127.0.0.1:{https_port}/v1/models") as response:
                await response.read()
