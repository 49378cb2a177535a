"""TLS and mutual TLS on the gRPC servers (EmbArk, Retina) and their clients (EmbarkClient,
the asyncio channel EmbArk and KFC use to reach Retina), with certificates made at test time by
the ``openssl`` command: a test CA, a server certificate for 127.0.0.1/localhost, and a client
certificate. Each case shows the handshake works, a plaintext client is refused, and under
mutual TLS a client without a certificate is refused."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from embark import errors
from embark.client import AsyncEmbarkClient, EmbarkClient
from embark.encoding import GrpcEncoding
from embark.server.app import Running, start
from embark_api.v1 import inputs_pb2, retina_pb2
from embark_core.tls import ClientTls, ServerTls, aio_channel
from embark_core.tls import ServerTls as RetinaServerTls
from retina.server import RunningServer, start_server
from retina.settings import RetinaSettings

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(name: str, cwd: Path) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1", "-subj", f"/CN={name}",
        cwd=cwd,
    )  # fmt: skip


def _leaf(name: str, san: str, cwd: Path) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=cwd,
    )  # fmt: skip
    (cwd / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext",
        cwd=cwd,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _ca("ca", d)
    _ca("other", d)
    _leaf("server", "DNS:localhost,IP:127.0.0.1", d)
    _leaf("client", "DNS:kfc.embark.internal", d)
    return Pki(
        d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key",
        d / "other.pem",
    )  # fmt: skip


def _server_tls(pki: Pki, *, mutual: bool) -> ServerTls:
    return ServerTls(
        cert_file=pki.server_cert,
        key_file=pki.server_key,
        client_ca_file=pki.ca if mutual else None,
    )


def _client_tls(pki: Pki, *, with_cert: bool) -> ClientTls:
    if with_cert:
        return ClientTls(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    return ClientTls(ca_file=pki.ca)


@pytest.fixture
async def servers() -> AsyncIterator[list[Running | RunningServer]]:
    started: list[Running | RunningServer] = []
    yield started
    for running in started:
        await running.server.stop(None)


async def _embark(pki: Pki, servers: list[Running | RunningServer], *, mutual: bool) -> int:
    running = await start(
        host="127.0.0.1", port=0, max_message_bytes=1 << 20, tls=_server_tls(pki, mutual=mutual)
    )
    servers.append(running)
    return running.port


async def _health(channel: grpc.aio.Channel) -> health_pb2.HealthCheckResponse.ServingStatus:
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        return reply.status


async def _refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _health(channel)
    return info.value.code()


# --- EmbArk ----------------------------------------------------------------------------------


async def test_embark_tls_handshake_and_plaintext_refused(
    pki: Pki, servers: list[Running | RunningServer]
) -> None:
    port = await _embark(pki, servers, mutual=False)
    target = f"127.0.0.1:{port}"

    status = await _health(aio_channel(target, _client_tls(pki, with_cert=False)))
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING  # an answer: TLS worked
    # The SDK over TLS reaches the servicer (which is still starting).
    async with AsyncEmbarkClient(target, tls=_client_tls(pki, with_cert=False)) as client:
        with pytest.raises(errors.BackendUnavailable, match="starting"):
            await client.get("minilm-l6", text="x")

    assert await _refused(grpc.aio.insecure_channel(target)) == grpc.StatusCode.UNAVAILABLE
    # A client that does not trust the server's CA is refused at the handshake too.
    wrong_ca = ClientTls(ca_file=pki.other_ca)
    assert await _refused(aio_channel(target, wrong_ca)) == grpc.StatusCode.UNAVAILABLE


async def test_embark_mutual_tls_requires_a_client_certificate(
    pki: Pki, servers: list[Running | RunningServer]
) -> None:
    port = await _embark(pki, servers, mutual=True)
    target = f"127.0.0.1:{port}"

    status = await _health(aio_channel(target, _client_tls(pki, with_cert=True)))
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    no_cert = aio_channel(target, _client_tls(pki, with_cert=False))
    assert await _refused(no_cert) == grpc.StatusCode.UNAVAILABLE
    assert await _refused(grpc.aio.insecure_channel(target)) == grpc.StatusCode.UNAVAILABLE


async def test_blocking_client_over_mutual_tls(
    pki: Pki, servers: list[Running | RunningServer]
) -> None:
    port = await _embark(pki, servers, mutual=True)
    target = f"127.0.0.1:{port}"

    def call(tls: ClientTls) -> errors.EmbarkError:
        with EmbarkClient(target, tls=tls, timeout_s=5) as client:
            with pytest.raises(errors.EmbarkError) as info:
                client.get("minilm-l6", text="x")
            return info.value

    # Blocking calls from a worker thread: the server runs on this test's event loop.
    ok = await asyncio.to_thread(call, _client_tls(pki, with_cert=True))
    assert isinstance(ok, errors.BackendUnavailable)
    assert "starting" in ok.message  # reached the servicer
    refused = await asyncio.to_thread(call, _client_tls(pki, with_cert=False))
    assert refused.code == grpc.StatusCode.UNAVAILABLE
    assert "starting" not in refused.message  # never got past the handshake


# --- Retina, and the channel EmbArk/KFC use to reach it ----------------------------------------


async def _retina(pki: Pki, servers: list[Running | RunningServer], *, mutual: bool) -> int:
    tls = RetinaServerTls(
        cert_file=pki.server_cert,
        key_file=pki.server_key,
        client_ca_file=pki.ca if mutual else None,
    )
    running = await start_server(RetinaSettings(tls=tls), address="127.0.0.1:0")
    servers.append(running)
    return running.port


async def _embed(channel: grpc.aio.Channel) -> errors.EmbarkError:
    async with channel:
        encoding = GrpcEncoding(channel, timeout_s=5)
        request = retina_pb2.EmbedRequest(model="m", inputs=[inputs_pb2.Input(text="x")])
        with pytest.raises(errors.EmbarkError) as info:
            await encoding.embed(request)
        return info.value


async def test_retina_mutual_tls_for_embark_and_kfc(
    pki: Pki, servers: list[Running | RunningServer]
) -> None:
    port = await _retina(pki, servers, mutual=True)
    target = f"127.0.0.1:{port}"

    reached = await _embed(aio_channel(target, _client_tls(pki, with_cert=True)))
    assert "loading its models" in reached.message  # the servicer answered: mTLS worked
    for channel in (
        aio_channel(target, _client_tls(pki, with_cert=False)),
        grpc.aio.insecure_channel(target),
    ):
        refused = await _embed(channel)
        assert isinstance(refused, errors.BackendUnavailable)
        assert "loading its models" not in refused.message


async def test_retina_tls_without_client_certificates(
    pki: Pki, servers: list[Running | RunningServer]
) -> None:
    port = await _retina(pki, servers, mutual=False)
    target = f"127.0.0.1:{port}"
    reached = await _embed(aio_channel(target, _client_tls(pki, with_cert=False)))
    assert "loading its models" in reached.message
    refused = await _embed(grpc.aio.insecure_channel(target))
    assert "loading its models" not in refused.message


def test_server_name_override_checks_the_certificate_against_it(pki: Pki) -> None:
    tls = ClientTls(ca_file=pki.ca, server_name="localhost")
    assert tls.on
    assert not ClientTls().on
    assert ClientTls(enabled=True).on


def test_tls_settings_validation(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="go together"):
        ServerTls(cert_file=pki.server_cert)
    with pytest.raises(ValidationError, match="needs cert_file"):
        ServerTls(client_ca_file=pki.ca)
    with pytest.raises(ValidationError, match="go together"):
        ClientTls(cert_file=pki.client_cert)
    with pytest.raises(ValidationError):
        ServerTls(cert_file=tmp_path / "missing.pem", key_file=pki.server_key)
    with pytest.raises(ValidationError, match="go together"):
        RetinaServerTls(key_file=pki.server_key)


def test_settings_read_tls_from_the_environment(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    from embark.settings import EmbarkSettings
    from kfc.settings import KfcSettings

    monkeypatch.setenv("EMBARK_TLS__CERT_FILE", str(pki.server_cert))
    monkeypatch.setenv("EMBARK_TLS__KEY_FILE", str(pki.server_key))
    monkeypatch.setenv("EMBARK_TLS__CLIENT_CA_FILE", str(pki.ca))
    monkeypatch.setenv("EMBARK_RETINA_TLS__CA_FILE", str(pki.ca))
    monkeypatch.setenv("KFC_RETINA_TLS__CA_FILE", str(pki.ca))
    monkeypatch.setenv("KFC_RETINA_TLS__CERT_FILE", str(pki.client_cert))
    monkeypatch.setenv("KFC_RETINA_TLS__KEY_FILE", str(pki.client_key))
    monkeypatch.setenv("RETINA_TLS__CERT_FILE", str(pki.server_cert))
    monkeypatch.setenv("RETINA_TLS__KEY_FILE", str(pki.server_key))

    embark = EmbarkSettings()
    assert embark.tls.enabled
    assert embark.tls.client_ca_file == pki.ca
    assert embark.retina_tls.on
    kfc = KfcSettings()
    assert kfc.retina_tls.cert_file == pki.client_cert
    assert RetinaSettings().tls.enabled
