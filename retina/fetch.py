"""Fetching client-supplied image URLs without becoming a way into the private network.

This module owns everything between "a client sent a URL" and "here are the image bytes":
which URLs may be fetched, which addresses may be connected to, how redirects, sizes, encodings
and timeouts are bounded, and which failures are permanent (``ItemFailed``) or transient
(``FetchUnavailable``). Decoding the bytes (and the decoded pixel cap) belongs to the image
encoder.

How the address check closes the DNS-rebinding window: the host name is resolved exactly once,
by ``GuardedResolver`` inside aiohttp's connector, and the connector connects only to the
addresses that resolver returned after filtering. There is no "check, then let the HTTP client
resolve again" step for an attacker's DNS server to answer differently. IP-literal hosts never
reach a resolver (aiohttp short-circuits them), so ``ImageFetcher`` checks them itself before
each request. Redirects are followed by hand so every hop goes through both checks again.

Failure policy: every failure is this item's ``ItemFailed``. ``FetchUnavailable`` (an
``ItemFailed`` with ``retriable`` set, so the caller may try the item again later): HTTP 5xx,
408 and 429 (``http_503`` ...), refused or reset connections and truncated bodies
(``connection_failed``), temporary DNS failures (``dns_failure``). Permanent, by ``reason``:

    bad_url, bad_scheme               the URL cannot or must not be fetched
    blocked_address                   every address of the host is in a refused range
    unresolvable_host                 the name does not exist (NXDOMAIN), an authoritative answer
    too_many_redirects, bad_redirect  redirect chain too long, or a 3xx we cannot follow
    http_404, http_410, http_4xx      the server says the request is wrong (408/429 excepted)
    too_large                         Content-Length, raw or decoded body above max_bytes
    unsupported_encoding, bad_encoding  Content-Encoding other than identity/gzip, corrupt gzip
    not_an_image                      the body's magic bytes are not a supported image format
    tls_error                         the certificate or handshake is refused
    bad_response                      a status outside 2xx-5xx
    timeout                           the whole fetch did not finish within timeout_s

Timeouts are PERMANENT, deliberately. The URL comes from a client and may point at a tarpit
(a server that accepts and then trickles, or a blackholed address that never answers SYN). A
retriable timeout would let KFC re-queue that item again and again, each attempt holding a
fetch slot for the full budget, so one hostile URL could keep a share of the fetch pool busy
indefinitely. Servers that are merely down tend to fail fast and distinctly (connection
refused, 502/503), and those stay transient. The cost: a genuinely slow-but-healthy server
gets a permanent ``timeout`` for this item; the client can resubmit it. The budget starts
only after a connection slot is acquired, so our own queueing never produces a timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import zlib
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import TracebackType
from typing import Final, Self

import aiohttp
import grpc
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import BaseModel, ConfigDict, Field, model_validator
from yarl import URL

from retina.errors import ItemFailed

__all__ = [
    "FetchConfig",
    "FetchUnavailable",
    "GuardedResolver",
    "ImageFetcher",
    "classify_address",
    "sniff_image_format",
]

_MiB: Final = 1024 * 1024

# 301/302/303 turn a request into GET and 307/308 keep the method; we only ever send GET, so
# all five are followed the same way. 300/304/305/306 are not redirects we can follow.
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
# 408 and 429 literally mean "try again later"; every other 4xx is a verdict on the request.
_TRANSIENT_4XX: Final = frozenset({408, 429})
_ALLOWED_SCHEMES: Final = frozenset({"http", "https"})
# Read size for the body stream; small enough that the byte cap is enforced close to the limit.
_CHUNK: Final = 64 * 1024


class FetchConfig(BaseModel):
    """How Retina fetches image URLs. Part of Retina's settings; built once in ``main()``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # 10 MiB holds any photo a 224-px image encoder could want (a 24-Mpx JPEG is ~8 MiB) while
    # bounding what one item can cost in memory and bandwidth; the decoder caps pixels separately.
    max_bytes: int = Field(default=10 * _MiB, gt=0)
    # One budget for the whole fetch (DNS, connect, every redirect hop, the body). 5 s is ample
    # for an image host and short enough that a tarpit holds a fetch slot only briefly.
    timeout_s: float = Field(default=5.0, gt=0)
    # A healthy host completes the TCP (and TLS) handshake in well under a second; giving up on
    # one address after 2 s leaves time in the budget to try another address of the same host.
    connect_timeout_s: float = Field(default=2.0, gt=0)
    # Real image URLs redirect once or twice (http->https, CDN hop); a longer chain is a loop or
    # an attempt to walk us somewhere else, and each hop costs a connection.
    max_redirects: int = Field(default=3, ge=0)
    # False in production: loopback, private, link-local (cloud metadata), CGNAT, multicast and
    # reserved addresses are refused. Only tests and local development set it to reach 127.0.0.1.
    allow_private: bool = False
    # Narrow exceptions to the refusal above (e.g. an internal image CDN's subnet), preferable to
    # allow_private because they open one range rather than all of them. Empty by default.
    allowed_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    # Concurrent fetches (and so open connections). Bounds sockets and memory: at most
    # max_connections * max_bytes of bodies in flight.
    max_connections: int = Field(default=64, gt=0)
    # Identifies us to image hosts so they can tell Retina's traffic from a browser's and block
    # or rate-limit it knowingly.
    user_agent: str = "EmbArk-Retina/1 (image fetcher)"

    @model_validator(mode="after")
    def _connect_within_budget(self) -> Self:
        if self.connect_timeout_s > self.timeout_s:
            raise ValueError("connect_timeout_s must not exceed timeout_s")
        return self


class FetchUnavailable(ItemFailed):
    """This image could not be fetched now, but a later attempt may succeed: HTTP 5xx, 408, 429,
    a refused or reset connection, a temporary DNS failure, a truncated body. A fault of the
    image host, so of this one item (``retriable``): Retina answers it in the item's slot and
    the caller retries that item alone; it never fails the whole call."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message, retriable=True)


# ---------------------------------------------------------------------------------------------
# Address classification
# ---------------------------------------------------------------------------------------------

# 100.64.0.0/10 is carrier-grade NAT space: not private by RFC 1918, but inside a provider's
# network it reaches the provider's own hosts. ipaddress excludes it from is_global but not from
# is_private, so it is named here to give it its own category.
_SHARED_V4: Final = IPv4Network("100.64.0.0/10")
# NAT64: the well-known prefix embeds an IPv4 address (judge that address); the local-use prefix
# translates into a network of the operator's choosing, so it is private by construction.
_NAT64_WELL_KNOWN: Final = IPv6Network("64:ff9b::/96")
_NAT64_LOCAL: Final = IPv6Network("64:ff9b:1::/48")

IPAddress = IPv4Address | IPv6Address


def classify_address(address: str | IPAddress) -> str | None:
    """Why ``address`` must not be connected to, or None when it is publicly routable.

    Never raises: an unparseable string is refused as ``unparseable`` (fail closed). Addresses
    that embed an IPv4 address (IPv4-mapped, 6to4, NAT64) are judged by the embedded address,
    so ``::ffff:127.0.0.1`` is as loopback as ``127.0.0.1``.
    """
    if isinstance(address, str):
        try:
            address = ipaddress.ip_address(address)
        except ValueError:
            return "unparseable"
    if isinstance(address, IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return classify_address(embedded)
        if address.teredo is not None:
            # Teredo relays can reach any IPv4 host, including private ones behind the relay.
            return "tunnel"
        if address in _NAT64_LOCAL:
            return "private"
    # Order matters only for the name reported; any category refuses the address.
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"  # includes 169.254.169.254, the cloud metadata endpoint
    if address.is_multicast:
        return "multicast"  # ipaddress counts global-scope multicast as is_global
    if isinstance(address, IPv4Address) and address in _SHARED_V4:
        return "shared"
    if address.is_private:
        return "private"
    if isinstance(address, IPv6Address) and address.is_site_local:
        return "site_local"  # deprecated fec0::/10, still routed inside some networks
    if address.is_reserved:
        return "reserved"  # 240/4, and every IPv6 range outside 2000::/3 that IANA reserves
    if not address.is_global:
        return "non_global"  # documentation, benchmarking, protocol-assignment ranges ...
    return None


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64_WELL_KNOWN:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _refusal(address: str, config: FetchConfig) -> str | None:
    """The reason ``address`` is refused under ``config``, or None when it may be used."""
    if config.allow_private:
        return None
    category = classify_address(address)
    if category is None:
        return None
    if category != "unparseable" and config.allowed_networks:
        parsed = ipaddress.ip_address(address)
        if any(parsed in net for net in config.allowed_networks):
            return None
    return category


class _BlockedAddressError(OSError):
    """Raised by GuardedResolver when no address survives the filter. An OSError because that
    is what aiohttp expects from a resolver; ImageFetcher turns it into ItemFailed."""

    def __init__(self, host: str, refused: list[tuple[str, str]]) -> None:
        super().__init__(f"every address of {host!r} is refused")
        self.host = host
        self.refused = refused


class GuardedResolver(AbstractResolver):
    """Resolves through ``inner`` (aiohttp's ThreadedResolver by default) and drops every
    refused address. The connector connects only to what this returns, so the addresses that
    were checked are the addresses that are used."""

    def __init__(self, config: FetchConfig, inner: AbstractResolver | None = None) -> None:
        self._config = config
        self._inner = inner if inner is not None else aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        refused: list[tuple[str, str]] = []
        for result in results:
            reason = _refusal(result["host"], self._config)
            if reason is None:
                kept.append(result)
            else:
                refused.append((result["host"], reason))
        if not kept:
            raise _BlockedAddressError(host, refused)
        return kept

    async def close(self) -> None:
        await self._inner.close()


# ---------------------------------------------------------------------------------------------
# Content sniffing
# ---------------------------------------------------------------------------------------------

_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)


def sniff_image_format(data: bytes) -> str | None:
    """The image format named by ``data``'s magic bytes, or None. Content-Type is not trusted:
    servers mislabel, and an attacker labels whatever they like."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


# ---------------------------------------------------------------------------------------------
# Fetcher
# ---------------------------------------------------------------------------------------------


class _Decoder:
    """Applies Content-Encoding incrementally and enforces the byte cap on the raw AND the
    decoded stream: the raw cap stops an endless stream of empty gzip members, the decoded cap
    stops a gzip bomb without ever inflating more than max_bytes + 1 bytes."""

    def __init__(self, gzip: bool, max_bytes: int) -> None:
        # wbits 16 + MAX_WBITS: gzip framing only, no zlib/raw deflate guessing.
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
        self._max = max_bytes
        self._raw = 0
        self._parts: list[bytes] = []
        self._size = 0
        # True while a gzip member has been started and not finished: ending there = truncated.
        self._in_member = False

    def feed(self, chunk: bytes) -> None:
        self._raw += len(chunk)
        if self._raw > self._max:
            raise ItemFailed("too_large", f"body exceeds {self._max} bytes")
        if self._zlib is None:
            self._append(chunk)
            return
        data = chunk
        try:
            while data:
                self._in_member = True
                # Never inflate more than one byte past the cap: enough to know it is exceeded.
                out = self._zlib.decompress(data, self._max - self._size + 1)
                self._append(out)
                if self._zlib.eof:
                    # Multi-member gzip (RFC 1952 allows it): start again on what follows.
                    data = self._zlib.unused_data
                    self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    self._in_member = False
                else:
                    data = self._zlib.unconsumed_tail
        except zlib.error as exc:
            raise ItemFailed("bad_encoding", "the gzip body is corrupt") from exc

    def finish(self) -> bytes:
        if self._zlib is not None:
            try:
                self._append(self._zlib.flush())
            except zlib.error as exc:
                raise ItemFailed("bad_encoding", "the gzip body is corrupt") from exc
            if self._in_member:
                raise ItemFailed("bad_encoding", "the gzip body is truncated")
        return b"".join(self._parts)

    def _append(self, data: bytes) -> None:
        if not data:
            return
        self._size += len(data)
        if self._size > self._max:
            raise ItemFailed("too_large", f"decoded body exceeds {self._max} bytes")
        self._parts.append(data)


class ImageFetcher:
    """Fetches image bytes from http(s) URLs under the rules in this module's docstring.

    One instance per process: it holds one aiohttp session (connection pool, no cookie jar).
    Create it inside the running event loop's lifetime and ``await close()`` it (or use it as
    an async context manager); the session itself is created on the first fetch.
    """

    def __init__(self, config: FetchConfig, *, resolver: AbstractResolver | None = None) -> None:
        """``resolver`` replaces the name resolution under the guard (tests map names to
        chosen addresses with it); the guard itself cannot be replaced."""
        self._config = config
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardedResolver | None = None
        # Held for the whole fetch and acquired before the timeout starts, so waiting for a
        # slot is never counted against a URL's budget (which would turn our own load into
        # permanent `timeout` failures). The connector's limit matches, so it never blocks.
        self._slots = asyncio.Semaphore(config.max_connections)
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool. Idempotent."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:
            # The connector does not own a resolver it was given, so it does not close it.
            await self._resolver.close()
            self._resolver = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("ImageFetcher is closed")
        if self._session is None:
            self._resolver = GuardedResolver(self._config, self._inner_resolver)
            connector = aiohttp.TCPConnector(
                resolver=self._resolver,
                limit=self._config.max_connections,
                # No per-host limit: waiting for it would happen inside the timed section.
                limit_per_host=0,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # No cookies: one client's URL must not see cookies another client's URL set.
                cookie_jar=aiohttp.DummyCookieJar(),
                # Ignore HTTP(S)_PROXY and .netrc from the environment: a proxy would make the
                # connection, and the address checks here would guard nothing.
                trust_env=False,
                # We decode gzip ourselves so the cap applies to decoded bytes as they inflate,
                # and no optional decoder (br, zstd) is ever fed attacker data.
                auto_decompress=False,
                # The outer budget governs; only a connect attempt gets its own, shorter bound
                # so a dead address leaves time for the host's next address.
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._config.connect_timeout_s
                ),
                headers={
                    "User-Agent": self._config.user_agent,
                    "Accept": "image/*",
                    "Accept-Encoding": "gzip",
                },
            )
        return self._session

    async def fetch(self, url: str) -> bytes:
        """The bytes of the image at ``url``.

        Raises ItemFailed (permanent; ``reason`` as in the module docstring) or
        FetchUnavailable (transient: retry later).
        """
        session = self._get_session()
        async with self._slots:
            try:
                async with asyncio.timeout(self._config.timeout_s):
                    return await self._follow(session, self._parse(url))
            except TimeoutError as exc:
                # Our budget, or aiohttp's connect timeout on the last address (a
                # ServerTimeoutError is also a TimeoutError). Permanent: see module docstring.
                raise ItemFailed(
                    "timeout", f"the fetch did not finish within {self._config.timeout_s} s"
                ) from exc

    def _parse(self, url: str) -> URL:
        try:
            parsed = URL(url)
        except (ValueError, TypeError) as exc:
            raise ItemFailed("bad_url", "the URL cannot be parsed") from exc
        return parsed

    def _check_url(self, url: URL) -> None:
        """Scheme and IP-literal checks, run before every hop."""
        if url.scheme not in _ALLOWED_SCHEMES:
            raise ItemFailed("bad_scheme", f"scheme {url.scheme!r} is not http or https")
        host = url.raw_host
        if not host:
            raise ItemFailed("bad_url", "the URL has no host")
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return  # a name (or a legacy numeric form): GuardedResolver or aiohttp judges it
        reason = _refusal(str(literal), self._config)
        if reason is not None:
            raise ItemFailed("blocked_address", f"address {literal} is refused ({reason})")

    async def _follow(self, session: aiohttp.ClientSession, url: URL) -> bytes:
        for _hop in range(self._config.max_redirects + 1):
            self._check_url(url)
            location = await self._request(session, url)
            if isinstance(location, bytes):
                return location
            url = location
        raise ItemFailed("too_many_redirects", f"more than {self._config.max_redirects} redirects")

    async def _request(self, session: aiohttp.ClientSession, url: URL) -> bytes | URL:
        """One hop: the body, or the URL a redirect points to."""
        try:
            async with session.get(url, allow_redirects=False) as response:
                status = response.status
                if status in _REDIRECT_STATUSES:
                    return self._redirect_target(url, response)
                self._check_status(status)
                return await self._read_body(response)
        except ItemFailed:
            raise
        except aiohttp.ClientConnectorDNSError as exc:
            raise self._dns_failure(url, exc) from exc
        except aiohttp.ClientSSLError as exc:
            # A refused certificate is the server's configuration, not a passing fault.
            raise ItemFailed("tls_error", "the TLS handshake failed") from exc
        except aiohttp.InvalidURL as exc:
            # e.g. legacy numeric IPv4 hosts (http://127.1/), which aiohttp refuses outright.
            raise ItemFailed("bad_url", "the URL is not valid") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            if isinstance(exc, TimeoutError):
                raise  # a connect timeout: fetch() reports it as `timeout`
            # The cause stays chained for our logs; its text (addresses, OS errors) is not
            # for the client.
            raise FetchUnavailable(
                "connection_failed", "the connection to the image host failed"
            ) from exc

    def _redirect_target(self, current: URL, response: aiohttp.ClientResponse) -> URL:
        location = response.headers.get("Location")
        if not location:
            raise ItemFailed("bad_redirect", f"HTTP {response.status} without a Location")
        try:
            # Relative Locations are resolved against the current URL; the fragment is ours.
            return current.join(URL(location)).with_fragment(None)
        except (ValueError, TypeError) as exc:
            raise ItemFailed("bad_redirect", "the redirect Location is not a valid URL") from exc

    @staticmethod
    def _check_status(status: int) -> None:
        if 200 <= status < 300:
            return
        if status in (404, 410):
            raise ItemFailed(f"http_{status}", f"the image host answered HTTP {status}")
        if status in _TRANSIENT_4XX or 500 <= status < 600:
            raise FetchUnavailable(f"http_{status}", f"the image host answered HTTP {status}")
        if 400 <= status < 500:
            raise ItemFailed("http_4xx", f"the image host answered HTTP {status}")
        if 300 <= status < 400:
            raise ItemFailed("bad_redirect", f"HTTP {status} is not a redirect we follow")
        raise ItemFailed("bad_response", f"unexpected HTTP status {status}")

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip", ""):
            raise ItemFailed("unsupported_encoding", f"Content-Encoding {encoding!r}")
        max_bytes = self._config.max_bytes
        # Content-Length counts encoded bytes; encoded bytes above the cap are refused anyway.
        if response.content_length is not None and response.content_length > max_bytes:
            raise ItemFailed(
                "too_large", f"Content-Length {response.content_length} exceeds {max_bytes}"
            )
        decoder = _Decoder(gzip=encoding in ("gzip", "x-gzip"), max_bytes=max_bytes)
        async for chunk in response.content.iter_chunked(_CHUNK):
            decoder.feed(chunk)
        body = decoder.finish()
        if sniff_image_format(body) is None:
            raise ItemFailed("not_an_image", "the body is not a JPEG, PNG, GIF, WebP, BMP or TIFF")
        return body

    @staticmethod
    def _dns_failure(url: URL, exc: aiohttp.ClientConnectorDNSError) -> ItemFailed:
        cause = exc.os_error
        if isinstance(cause, _BlockedAddressError):
            # Name the host but not its addresses: the message reaches the client, and echoing
            # what an internal name resolves to would make us a DNS oracle for the private zone.
            return ItemFailed(
                "blocked_address", f"every address of {cause.host!r} is in a refused range"
            )
        if isinstance(cause, socket.gaierror) and cause.errno in _NXDOMAIN_ERRNOS:
            # An authoritative "no such name": retrying will not make it exist. Temporary
            # resolver failures (EAI_AGAIN, SERVFAIL) stay transient.
            return ItemFailed("unresolvable_host", f"{url.raw_host!r} does not resolve")
        return FetchUnavailable("dns_failure", f"resolving {url.raw_host!r} failed")


_NXDOMAIN_ERRNOS: Final = frozenset(
    code
    for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)
