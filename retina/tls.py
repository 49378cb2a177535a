"""TLS for the Retina gRPC server: the settings section and its credentials.

Retina imports nothing from embark (DESIGN.md's dependency direction), so this mirrors
``embark.tls.ServerTls``: off unless ``cert_file`` is set; ``client_ca_file`` makes it mutual
TLS, refusing any client (EmbArk, KFC) without a certificate signed by that CA. Files are read
when the server starts, so a bad path fails start-up, not the first call.
"""

from __future__ import annotations

from typing import Self

import grpc
from pydantic import BaseModel, ConfigDict, FilePath, model_validator


class ServerTls(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # PEM certificate chain and private key (RETINA_TLS__CERT_FILE, RETINA_TLS__KEY_FILE).
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    # PEM CA bundle client certificates must chain to; set, mutual TLS is required.
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


def add_port(server: grpc.aio.Server, address: str, tls: ServerTls) -> int:
    """Bind ``address`` with TLS when configured, plaintext otherwise; returns the port."""
    if not tls.enabled:
        return server.add_insecure_port(address)
    assert tls.cert_file is not None
    assert tls.key_file is not None
    credentials = grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=tls.client_ca_file.read_bytes() if tls.client_ca_file else None,
        require_client_auth=tls.client_ca_file is not None,
    )
    return server.add_secure_port(address, credentials)
