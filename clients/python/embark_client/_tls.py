"""TLS for gRPC channels: ``Tls`` (a plain dataclass, so the client needs no pydantic) and the
one place that turns any TLS config into channel credentials. The server's ``ClientTls``
(pydantic settings, ``embark_core.tls``) has the same fields and goes through the same functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

ChannelOptions = Sequence[tuple[str, Any]]


class TlsConfig(Protocol):
    """What a channel needs to know (``Tls`` here, ``embark_core.tls.ClientTls`` on the server)."""

    @property
    def on(self) -> bool: ...
    @property
    def ca_file(self) -> Path | None: ...
    @property
    def cert_file(self) -> Path | None: ...
    @property
    def key_file(self) -> Path | None: ...
    @property
    def server_name(self) -> str | None: ...


@dataclass(frozen=True)
class Tls:
    """TLS on when ``enabled`` or any file is set. ``ca_file``: the CA to trust (else the
    system roots); ``cert_file``/``key_file``: this client's certificate for mutual TLS;
    ``server_name``: check the server's certificate against this name."""

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls cert_file and key_file go together")

    @property
    def on(self) -> bool:
        return self.enabled or self.ca_file is not None or self.cert_file is not None


def _credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=Path(tls.ca_file).read_bytes() if tls.ca_file else None,
        private_key=Path(tls.key_file).read_bytes() if tls.key_file else None,
        certificate_chain=Path(tls.cert_file).read_bytes() if tls.cert_file else None,
    )


def _options(tls: TlsConfig | None, options: ChannelOptions) -> list[tuple[str, Any]]:
    merged = list(options)
    if tls is not None and tls.server_name:
        merged.append(("grpc.ssl_target_name_override", tls.server_name))
    return merged


def aio_channel(
    target: str, tls: TlsConfig | None, options: ChannelOptions = ()
) -> grpc.aio.Channel:
    """An asyncio channel to ``target``: TLS when ``tls`` is on, plaintext otherwise."""
    if tls is not None and tls.on:
        return grpc.aio.secure_channel(target, _credentials(tls), options=_options(tls, options))
    return grpc.aio.insecure_channel(target, options=list(options))


def channel(target: str, tls: TlsConfig | None, options: ChannelOptions = ()) -> grpc.Channel:
    """A blocking channel to ``target``: TLS when ``tls`` is on, plaintext otherwise."""
    if tls is not None and tls.on:
        return grpc.secure_channel(target, _credentials(tls), options=_options(tls, options))
    return grpc.insecure_channel(target, options=list(options))
