"""Tests of retina.fetch against a real aiohttp server on 127.0.0.1, plus unit tests of the
address classifier, the content sniffer and the configuration.

Reaching the test server needs a loopback address, which production refuses. Most tests set
``allow_private=True``; the tests about refused addresses instead allow exactly 127.0.0.1/32
through ``allowed_networks``, so everything else private is still refused on the same fetcher.
Host names are mapped to addresses by a fake resolver under the guard, so no test needs DNS.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import grpc
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from retina.errors import ItemFailed, RetinaError
from retina.fetch import (
    FetchConfig,
    FetchUnavailable,
    GuardedResolver,
    ImageFetcher,
    classify_address,
    sniff_image_format,
)

pytestmark = pytest.mark.timeout(20)

KiB = 1024
MAX_BYTES = 256 * KiB
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LOOPBACK_ONLY = (IPv4Network("127.0.0.1/32"),)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


# ---------------------------------------------------------------------------------------------
# The upstream server
# ---------------------------------------------------------------------------------------------


@dataclass
class Upstream:
    server: TestServer
    # Set at teardown so handlers that stall (slow, tarpit) return and the server closes fast.
    release: asyncio.Event
    request_headers: list[dict[str, str]] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server.port}{path}"


def _build_app(release: asyncio.Event, request_headers: list[dict[str, str]]) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/img.png")
    async def img(request: web.Request) -> web.Response:
        request_headers.append(dict(request.headers))
        return web.Response(body=PNG, content_type="image/png")

    @routes.get("/mislabelled")
    async def mislabelled(_: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="text/plain")

    @routes.get("/page.html")
    async def page(_: web.Request) -> web.Response:
        return web.Response(text="<html><body>not an image</body></html>", content_type="text/html")

    @routes.get("/html-as-png")
    async def html_as_png(_: web.Request) -> web.Response:
        return web.Response(body=b"<html></html>", content_type="image/png")

    @routes.get("/empty")
    async def empty(_: web.Request) -> web.Response:
        return web.Response(body=b"", content_type="image/png")

    @routes.get("/status/{code}")
    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="no")

    @routes.get("/hop/{n}")
    async def hop(request: web.Request) -> web.Response:
        # /hop/n reaches the image after exactly n redirects.
        n = int(request.match_info["n"])
        if n == 0:
            return web.Response(body=PNG, content_type="image/png")
        raise web.HTTPFound(f"/hop/{n - 1}")

    @routes.get("/relative")
    async def relative(_: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": "img.png#frag"})

    @routes.get("/redirect-to")
    async def redirect_to(request: web.Request) -> web.Response:
        # The target may embed {port}: this server's own port, for redirects to other names.
        target = request.query["url"].replace("{port}", str(request.url.port))
        return web.Response(status=307, headers={"Location": target})

    @routes.get("/no-location")
    async def no_location(_: web.Request) -> web.Response:
        return web.Response(status=302)

    @routes.get("/big")
    async def big(_: web.Request) -> web.Response:
        return web.Response(body=PNG_SIGNATURE + bytes(2 * MAX_BYTES), content_type="image/png")

    @routes.get("/big-chunked")
    async def big_chunked(request: web.Request) -> web.StreamResponse:
        # No Content-Length: only the running count can stop it.
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            await response.write(PNG_SIGNATURE)
            for _ in range(4 * MAX_BYTES // (16 * KiB)):
                await response.write(bytes(16 * KiB))
            await response.write_eof()
        except ConnectionResetError:
            pass
        return response

    @routes.get("/gzip")
    async def gzipped(_: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(PNG),
            headers={"Content-Encoding": "gzip", "Content-Type": "image/png"},
        )

    @routes.get("/gzip-two-members")
    async def gzip_two_members(_: web.Request) -> web.Response:
        body = gzip.compress(PNG[:10]) + gzip.compress(PNG[10:])
        return web.Response(body=body, headers={"Content-Encoding": "gzip"})

    @routes.get("/gzip-bomb")
    async def gzip_bomb(_: web.Request) -> web.Response:
        # ~8 KiB on the wire, 8 MiB decoded: only a cap on the decoded bytes catches it.
        body = gzip.compress(PNG_SIGNATURE + bytes(8 * 1024 * KiB))
        return web.Response(body=body, headers={"Content-Encoding": "gzip"})

    @routes.get("/gzip-corrupt")
    async def gzip_corrupt(_: web.Request) -> web.Response:
        return web.Response(body=b"\x1f\x8bnot really gzip", headers={"Content-Encoding": "gzip"})

    @routes.get("/gzip-truncated")
    async def gzip_truncated(_: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(PNG)[:-12], headers={"Content-Encoding": "gzip"})

    @routes.get("/brotli")
    async def brotli(_: web.Request) -> web.Response:
        return web.Response(body=PNG, headers={"Content-Encoding": "br"})

    @routes.get("/set-cookie")
    async def set_cookie(_: web.Request) -> web.Response:
        response = web.Response(body=PNG, content_type="image/png")
        response.set_cookie("session", "secret")
        return response

    @routes.get("/refuse-if-cookie")
    async def refuse_if_cookie(request: web.Request) -> web.Response:
        if "Cookie" in request.headers:
            return web.Response(status=403)
        return web.Response(body=PNG, content_type="image/png")

    @routes.get("/slow")
    async def slow(_: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), timeout=10)
        return web.Response(body=PNG, content_type="image/png")

    @routes.get("/tarpit")
    async def tarpit(request: web.Request) -> web.StreamResponse:
        # Headers at once, then a byte every 50 ms: each read succeeds, only the total budget
        # (not a per-read timeout) stops it.
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        try:
            await response.write(PNG_SIGNATURE)
            for _ in range(200):
                if release.is_set():
                    break
                await asyncio.sleep(0.05)
                await response.write(b"\x00")
        except ConnectionResetError:
            pass
        return response

    app = web.Application()
    app.add_routes(routes)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    release = asyncio.Event()
    request_headers: list[dict[str, str]] = []
    server = TestServer(_build_app(release, request_headers), host="127.0.0.1")
    await server.start_server()
    try:
        yield Upstream(server, release, request_headers)
    finally:
        release.set()
        await server.close()


class MapResolver(AbstractResolver):
    """Resolves names from a table (or raises a chosen error) and counts lookups."""

    def __init__(
        self, table: dict[str, list[str]] | None = None, error: OSError | None = None
    ) -> None:
        self.table = table or {}
        self.error = error
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        if self.error is not None:
            raise self.error
        return [
            ResolveResult(
                hostname=host,
                host=addr,
                port=port,
                family=socket.AF_INET6 if ":" in addr else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for addr in self.table.get(host, [])
        ]

    async def close(self) -> None:
        pass


def _config(**overrides: object) -> FetchConfig:
    values: dict[str, object] = {
        "allow_private": True,
        "max_bytes": MAX_BYTES,
        "timeout_s": 0.5,
        "connect_timeout_s": 0.5,
    }
    values.update(overrides)
    return FetchConfig.model_validate(values)


@pytest.fixture
async def fetcher() -> AsyncIterator[ImageFetcher]:
    async with ImageFetcher(_config()) as f:
        yield f


@pytest.fixture
async def guarded() -> AsyncIterator[Callable[..., ImageFetcher]]:
    """Fetchers that refuse private addresses except 127.0.0.1, closed at teardown."""
    made: list[ImageFetcher] = []

    def make(resolver: AbstractResolver | None = None, **overrides: object) -> ImageFetcher:
        config = _config(allow_private=False, allowed_networks=LOOPBACK_ONLY, **overrides)
        f = ImageFetcher(config, resolver=resolver)
        made.append(f)
        return f

    try:
        yield make
    finally:
        for f in made:
            await f.close()


async def _reason(fetcher: ImageFetcher, url: str) -> str:
    with pytest.raises(ItemFailed) as info:
        await fetcher.fetch(url)
    return info.value.reason


# ---------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------


async def test_fetches_a_png(fetcher: ImageFetcher, upstream: Upstream) -> None:
    assert await fetcher.fetch(upstream.url("/img.png")) == PNG


async def test_sniffs_content_not_content_type(fetcher: ImageFetcher, upstream: Upstream) -> None:
    assert await fetcher.fetch(upstream.url("/mislabelled")) == PNG
    assert await _reason(fetcher, upstream.url("/html-as-png")) == "not_an_image"


@pytest.mark.parametrize("path", ["/page.html", "/empty"])
async def test_refuses_what_is_not_an_image(
    fetcher: ImageFetcher, upstream: Upstream, path: str
) -> None:
    assert await _reason(fetcher, upstream.url(path)) == "not_an_image"


@pytest.mark.parametrize(
    ("code", "reason"),
    [(404, "http_404"), (410, "http_410"), (403, "http_4xx"), (400, "http_4xx"), (451, "http_4xx")],
)
async def test_client_errors_are_permanent(
    fetcher: ImageFetcher, upstream: Upstream, code: int, reason: str
) -> None:
    assert await _reason(fetcher, upstream.url(f"/status/{code}")) == reason


@pytest.mark.parametrize("code", [500, 502, 503, 504, 408, 429])
async def test_server_errors_are_transient(
    fetcher: ImageFetcher, upstream: Upstream, code: int
) -> None:
    with pytest.raises(FetchUnavailable) as info:
        await fetcher.fetch(upstream.url(f"/status/{code}"))
    assert info.value.retriable
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


async def test_connection_refused_is_transient(fetcher: ImageFetcher) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchUnavailable):
        await fetcher.fetch(f"http://127.0.0.1:{port}/img.png")


async def test_follows_a_redirect_chain_up_to_the_bound(
    fetcher: ImageFetcher, upstream: Upstream
) -> None:
    assert await fetcher.fetch(upstream.url("/hop/3")) == PNG  # 3 redirects, the default bound
    assert await fetcher.fetch(upstream.url("/relative")) == PNG


async def test_too_many_redirects(fetcher: ImageFetcher, upstream: Upstream) -> None:
    assert await _reason(fetcher, upstream.url("/hop/4")) == "too_many_redirects"


async def test_redirects_can_be_disabled(upstream: Upstream) -> None:
    async with ImageFetcher(_config(max_redirects=0)) as f:
        assert await f.fetch(upstream.url("/img.png")) == PNG
        assert await _reason(f, upstream.url("/hop/1")) == "too_many_redirects"


async def test_redirect_without_location(fetcher: ImageFetcher, upstream: Upstream) -> None:
    assert await _reason(fetcher, upstream.url("/no-location")) == "bad_redirect"


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://10.0.0.7/img.png",
        "http://[::1]:{port}/img.png",
        "http://[::ffff:169.254.169.254]/",
        "http://127.0.0.2:{port}/img.png",  # loopback, but outside the allowed 127.0.0.1/32
    ],
)
async def test_redirect_to_a_blocked_literal_address(
    guarded: Callable[..., ImageFetcher], upstream: Upstream, target: str
) -> None:
    f = guarded()
    assert await f.fetch(upstream.url("/img.png")) == PNG  # the server itself is reachable
    url = upstream.url("/redirect-to") + "?url=" + target
    assert await _reason(f, url) == "blocked_address"


async def test_redirect_to_a_name_that_resolves_to_a_blocked_address(
    guarded: Callable[..., ImageFetcher], upstream: Upstream
) -> None:
    resolver = MapResolver({"internal.test": ["10.0.0.5", "fd00::5"]})
    f = guarded(resolver)
    url = upstream.url("/redirect-to") + "?url=http://internal.test:{port}/img.png"
    with pytest.raises(ItemFailed) as info:
        await f.fetch(url)
    assert info.value.reason == "blocked_address"
    assert resolver.lookups == ["internal.test"]
    # The message reaches the client: it must not reveal what an internal name resolves to.
    assert "10.0.0.5" not in info.value.message
    assert "fd00" not in info.value.message


@pytest.mark.parametrize(
    "target", ["file:///etc/passwd", "ftp://127.0.0.1/img.png", "gopher://127.0.0.1:70/_x"]
)
async def test_redirect_to_another_scheme(
    fetcher: ImageFetcher, upstream: Upstream, target: str
) -> None:
    url = upstream.url("/redirect-to") + "?url=" + target
    assert await _reason(fetcher, url) == "bad_scheme"


async def test_loopback_is_refused_by_default(upstream: Upstream) -> None:
    async with ImageFetcher(_config(allow_private=False)) as f:
        assert await _reason(f, upstream.url("/img.png")) == "blocked_address"
        # The name goes through the real resolver: localhost is refused after resolution.
        assert await _reason(f, upstream.url("/img.png", host="localhost")) == "blocked_address"


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]/img.png",
        "http://[::ffff:127.0.0.1]/img.png",
        "http://0.0.0.0/img.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "https://192.168.0.1/",
    ],
)
async def test_literal_private_addresses_are_refused(url: str) -> None:
    async with ImageFetcher(_config(allow_private=False)) as f:
        assert await _reason(f, url) == "blocked_address"


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f000001", "017700000001"])
async def test_legacy_numeric_ipv4_hosts_never_connect(host: str) -> None:
    # socket would read these as 127.0.0.1; aiohttp refuses the non-canonical forms outright.
    async with ImageFetcher(_config(allow_private=False)) as f:
        assert await _reason(f, f"http://{host}/img.png") in {"bad_url", "blocked_address"}


async def test_a_name_resolving_to_loopback_is_refused(
    guarded: Callable[..., ImageFetcher], upstream: Upstream
) -> None:
    resolver = MapResolver({"rebind.test": ["127.0.0.9"]})
    f = guarded(resolver)
    assert await _reason(f, upstream.url("/img.png", host="rebind.test")) == "blocked_address"


async def test_connects_to_the_checked_address_and_resolves_once(
    guarded: Callable[..., ImageFetcher], upstream: Upstream
) -> None:
    # One refused and one allowed address: the connection goes to the allowed one, which was
    # checked, and the name is looked up exactly once.
    resolver = MapResolver({"images.test": ["10.9.9.9", "127.0.0.1"]})
    f = guarded(resolver)
    assert await f.fetch(upstream.url("/img.png", host="images.test")) == PNG
    assert resolver.lookups == ["images.test"]
    assert upstream.request_headers[-1]["Host"] == f"images.test:{upstream.server.port}"


async def test_nxdomain_is_permanent_and_temporary_dns_failure_is_not(
    guarded: Callable[..., ImageFetcher],
) -> None:
    nx = guarded(MapResolver(error=socket.gaierror(socket.EAI_NONAME, "Name or service not known")))
    assert await _reason(nx, "http://missing.test/img.png") == "unresolvable_host"
    again = guarded(MapResolver(error=socket.gaierror(socket.EAI_AGAIN, "Try again")))
    with pytest.raises(FetchUnavailable):
        await again.fetch("http://flaky.test/img.png")


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/img.png",
        "gopher://example.com:70/_GET",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "/relative/img.png",
        "ws://example.com/",
    ],
)
async def test_only_http_and_https(fetcher: ImageFetcher, url: str) -> None:
    assert await _reason(fetcher, url) == "bad_scheme"


@pytest.mark.parametrize("url", ["http:///img.png", "http://[::1/img.png"])
async def test_malformed_urls(fetcher: ImageFetcher, url: str) -> None:
    assert await _reason(fetcher, url) == "bad_url"


@pytest.mark.parametrize("path", ["/big", "/big-chunked", "/gzip-bomb"])
async def test_too_large(fetcher: ImageFetcher, upstream: Upstream, path: str) -> None:
    assert await _reason(fetcher, upstream.url(path)) == "too_large"


async def test_gzip_is_decoded(fetcher: ImageFetcher, upstream: Upstream) -> None:
    assert await fetcher.fetch(upstream.url("/gzip")) == PNG
    assert await fetcher.fetch(upstream.url("/gzip-two-members")) == PNG


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/brotli", "unsupported_encoding"),
        ("/gzip-corrupt", "bad_encoding"),
        ("/gzip-truncated", "bad_encoding"),
    ],
)
async def test_encodings(fetcher: ImageFetcher, upstream: Upstream, path: str, reason: str) -> None:
    assert await _reason(fetcher, upstream.url(path)) == reason


@pytest.mark.parametrize("path", ["/slow", "/tarpit"])
async def test_timeouts_are_permanent(fetcher: ImageFetcher, upstream: Upstream, path: str) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _reason(fetcher, upstream.url(path)) == "timeout"
    assert loop.time() - started < 2.0  # the 0.5 s budget, not the server's pace


async def test_sends_our_headers_and_keeps_no_cookies(
    fetcher: ImageFetcher, upstream: Upstream
) -> None:
    await fetcher.fetch(upstream.url("/set-cookie"))
    assert await fetcher.fetch(upstream.url("/refuse-if-cookie")) == PNG
    await fetcher.fetch(upstream.url("/img.png"))
    headers = upstream.request_headers[-1]
    assert headers["User-Agent"] == FetchConfig().user_agent
    assert headers["Accept-Encoding"] == "gzip"
    assert "Cookie" not in headers


async def test_concurrent_fetches_share_the_pool(fetcher: ImageFetcher, upstream: Upstream) -> None:
    bodies = await asyncio.gather(*(fetcher.fetch(upstream.url("/img.png")) for _ in range(20)))
    assert bodies == [PNG] * 20


async def test_close_is_idempotent_and_final(upstream: Upstream) -> None:
    f = ImageFetcher(_config())
    await f.close()  # never used: nothing to close
    g = ImageFetcher(_config())
    assert await g.fetch(upstream.url("/img.png")) == PNG
    await g.close()
    await g.close()
    with pytest.raises(RuntimeError):
        await g.fetch(upstream.url("/img.png"))


# ---------------------------------------------------------------------------------------------
# Errors and configuration
# ---------------------------------------------------------------------------------------------


def test_fetch_unavailable_is_a_retriable_item_failure() -> None:
    # The image host's fault is this item's, not Retina's: answered in its slot, retriable.
    err = FetchUnavailable("http_503", "down")
    assert isinstance(err, RetinaError)
    assert isinstance(err, ItemFailed)
    assert (err.reason, err.retriable) == ("http_503", True)
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert not ItemFailed("timeout", "slow").retriable


def test_config_defaults_are_safe_and_frozen() -> None:
    config = FetchConfig()
    assert not config.allow_private
    assert config.allowed_networks == ()
    assert config.max_bytes == 10 * 1024 * KiB
    assert config.max_redirects == 3
    assert config.connect_timeout_s <= config.timeout_s
    with pytest.raises(ValidationError):
        config.allow_private = True


@pytest.mark.parametrize(
    "bad",
    [
        {"max_bytes": 0},
        {"timeout_s": 0},
        {"max_redirects": -1},
        {"timeout_s": 1, "connect_timeout_s": 2},
        {"allowed_networks": ["not a network"]},
        {"unknown_field": 1},
    ],
)
def test_config_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FetchConfig.model_validate(bad)


# ---------------------------------------------------------------------------------------------
# Address classification
# ---------------------------------------------------------------------------------------------

BLOCKED = "any reason"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link_local"),
        ("169.254.0.1", "link_local"),
        ("100.64.0.1", "shared"),
        ("100.127.255.254", "shared"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", BLOCKED),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", BLOCKED),
        ("255.255.255.255", BLOCKED),
        ("192.0.2.1", BLOCKED),  # documentation
        ("198.18.0.1", BLOCKED),  # benchmarking
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link_local"),
        ("fe80::1%eth0", "link_local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fec0::1", "site_local"),
        ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"),
        ("2001:db8::1", BLOCKED),
        ("::7f00:1", "reserved"),  # deprecated IPv4-compatible ::127.0.0.1
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link_local"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:100.64.0.1", "shared"),
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::", "link_local"),  # 6to4 of 169.254.169.254
        ("64:ff9b::a9fe:a9fe", "link_local"),  # NAT64 of 169.254.169.254
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("64:ff9b:1::1", "private"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "tunnel"),  # Teredo
        ("not an address", "unparseable"),
        ("", "unparseable"),
        ("127.1", "unparseable"),
        # Public: allowed.
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        ("2001:4860:4860::8888", None),
        ("::ffff:8.8.8.8", None),
        ("2002:808:808::1", None),
        ("64:ff9b::808:808", None),
    ],
)
def test_classifier_table(address: str, expected: str | None) -> None:
    got = classify_address(address)
    if expected is BLOCKED:
        assert got is not None
    else:
        assert got == expected
    if got != "unparseable":
        assert classify_address(ip_address(address)) == got


def _embedded(address: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address | None:
    """The IPv4 address an IPv6 address carries, independently of retina.fetch's helper."""
    if isinstance(address, IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in IPv6Network("64:ff9b::/96"):
        return IPv4Address(address.packed[-4:])
    return None


_PROPERTY = settings(derandomize=True, max_examples=200, database=None, deadline=None)


@_PROPERTY
@given(st.ip_addresses())
def test_classifier_never_allows_a_non_global_address(address: IPv4Address | IPv6Address) -> None:
    category = classify_address(address)
    assert category is None or isinstance(category, str)
    if category is None:
        effective = _embedded(address) or address
        assert effective.is_global
        assert not effective.is_multicast


@_PROPERTY
@given(st.ip_addresses(v=4))
def test_classifier_agrees_with_is_global_for_ipv4(address: IPv4Address) -> None:
    # ipaddress counts global-scope multicast as is_global; that is the one deliberate difference.
    assert (classify_address(address) is None) == (address.is_global and not address.is_multicast)
    # An IPv4-mapped IPv6 address is judged exactly like the IPv4 address it maps.
    assert classify_address(IPv6Address(f"::ffff:{address}")) == classify_address(address)


@_PROPERTY
@given(st.ip_addresses(v=6))
def test_classifier_agrees_with_is_global_for_plain_ipv6(address: IPv6Address) -> None:
    if (
        _embedded(address) is not None
        or address.teredo is not None
        or address in IPv6Network("64:ff9b:1::/48")
    ):
        return  # judged by the embedded address or refused outright; covered above
    expected = (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_site_local
    )
    assert (classify_address(address) is None) == expected


@_PROPERTY
@given(st.text(max_size=60))
def test_classifier_never_raises_on_text(text: str) -> None:
    category = classify_address(text)
    assert category is None or isinstance(category, str)


async def test_guarded_resolver_drops_refused_addresses() -> None:
    inner = MapResolver({"mixed.test": ["169.254.169.254", "93.184.216.34", "::1", "10.0.0.1"]})
    resolver = GuardedResolver(FetchConfig(), inner)
    results = await resolver.resolve("mixed.test", 80)
    assert [r["host"] for r in results] == ["93.184.216.34"]
    with pytest.raises(OSError, match="refused"):
        await resolver.resolve("nothing.test", 80)
    await resolver.close()


async def test_allow_private_lets_everything_through() -> None:
    inner = MapResolver({"lab.test": ["127.0.0.1", "10.0.0.1"]})
    resolver = GuardedResolver(FetchConfig(allow_private=True), inner)
    assert [r["host"] for r in await resolver.resolve("lab.test", 80)] == ["127.0.0.1", "10.0.0.1"]
    await resolver.close()


# ---------------------------------------------------------------------------------------------
# Content sniffing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PNG, "png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpeg"),
        (b"GIF89a\x01\x00", "gif"),
        (b"GIF87a\x01\x00", "gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "webp"),
        (b"BM\x36\x00\x00\x00", "bmp"),
        (b"II*\x00\x08\x00", "tiff"),
        (b"MM\x00*\x00\x00", "tiff"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
        (b"<!DOCTYPE html>", None),
        (b"%PDF-1.7", None),
        (b"", None),
        (b"\x89PN", None),
    ],
)
def test_sniff_image_format(data: bytes, expected: str | None) -> None:
    assert sniff_image_format(data) == expected


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_sniff_recognises_what_pillow_writes(fmt: str) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, format=fmt)
    assert sniff_image_format(buf.getvalue()) == fmt.lower()
