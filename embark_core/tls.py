"""TLS for every EmbArk gRPC server and channel (EmbArk, KFC, Retina): the settings sections and
the one place that turns them into gRPC credentials.

    ServerTls   a server's certificate and key; with ``client_ca_file`` also mutual TLS (a
                client without a certificate signed by that CA is refused at the handshake)
    ClientTls   a channel's trust (``ca_file``, else the system roots), its own certificate for
                mutual TLS, and an optional name to check the server's certificate against

Both default to off (plaintext), which is right only on loopback: every address a deployment
exposes sets them (EMBARK_TLS__CERT_FILE, EMBARK_RETINA_TLS__CA_FILE, KFC_RETINA_TLS__...).
Files are read once, when the server or channel is created, so a missing or unreadable file
fails at start-up rather than on the first call. It lives in ``embark_core`` so that Retina,
which imports nothing from ``embark``, uses the same code.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any, Self

import grpc
from embark_client import _tls as _client_tls
from pydantic import BaseModel, ConfigDict, FilePath, model_validator

__all__ = [
    "ClientTls",
    "ServerTls",
    "add_port",
    "aio_channel",
    "channel",
    "server_credentials",
    "server_ssl_context",
]

ChannelOptions = Sequence[tuple[str, Any]]


class ServerTls(BaseModel):
    """A gRPC server's TLS. Off unless ``cert_file`` is set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # PEM certificate chain and private key; both or neither.
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    # PEM CA bundle that client certificates must chain to. Set: mutual TLS is required.
    client_ca_file: FilePath | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls cert_file and key_file go together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls client_ca_file (mutual TLS) needs cert_file and key_file")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class ClientTls(BaseModel):
    """A gRPC channel's TLS. On when ``enabled`` or any file is set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # TLS with the system's trusted roots and no other setting needs this switch.
    enabled: bool = False
    # PEM CA bundle to trust for the server's certificate; None: the system roots.
    ca_file: FilePath | None = None
    # This client's certificate and key, for servers that require mutual TLS.
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    # Check the server certificate against this name instead of the target's host (e.g. when
    # connecting by IP address to a certificate issued for a DNS name).
    server_name: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls cert_file and key_file go together")
        return self

    @property
    def on(self) -> bool:
        return self.enabled or self.ca_file is not None or self.cert_file is not None


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    assert tls.cert_file is not None  # callers check .enabled
    assert tls.key_file is not None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=tls.client_ca_file.read_bytes() if tls.client_ca_file else None,
        require_client_auth=tls.client_ca_file is not None,
    )


def server_ssl_context(tls: ServerTls) -> ssl.SSLContext:
    """The same settings for an HTTP port (the HTTP front shares the gRPC port's TLS)."""
    assert tls.cert_file is not None  # callers check .enabled
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(cafile=tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def add_port(server: grpc.aio.Server, address: str, tls: ServerTls | None) -> int:
    """Bind ``address`` with TLS when configured, plaintext otherwise; returns the port."""
    if tls is not None and tls.enabled:
        return server.add_secure_port(address, server_credentials(tls))
    return server.add_insecure_port(address)


# Channels: the client distribution's functions, which take this ClientTls as they take its own
# Tls (the same fields), so server and client build credentials in one place.
aio_channel = _client_tls.aio_channel
channel = _client_tls.channel
