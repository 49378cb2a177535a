"""Cache keys: canonical text and URLs, and the digest of (model, revision, kind, input)."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from embark.errors import InvalidInput
from embark.keys import canonical_input, canonical_text, canonical_url, derive_key

# Whitespace as str.isspace() sees it, ASCII and Unicode (NBSP, ideographic space, ...).
WHITESPACE = st.sampled_from([" ", "\t", "\n", "\r", "\f", "\v", "\u00a0", "\u2003", "\u3000"])
# Words without whitespace; letters with diacritics make NFC/NFD differ.
WORDS = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"),
    ),
    min_size=1,
    max_size=12,
).filter(lambda w: not any(c.isspace() for c in w))
NAMES = st.text(min_size=1, max_size=20)
KINDS = st.sampled_from(["text", "image"])
HEX32 = re.compile(r"[0-9a-f]{32}")


def text_key(text: str, model: str = "m", revision: str = "r1") -> str:
    return derive_key(model, revision, "text", canonical_text(text)).digest


# --- canonical_text ---


@given(st.text())
def test_canonical_text_is_idempotent(text: str) -> None:
    once = canonical_text(text)
    assert canonical_text(once) == once


@given(st.text())
def test_canonical_text_has_no_edge_or_repeated_whitespace(text: str) -> None:
    canonical = canonical_text(text)
    assert canonical == canonical.strip()
    assert "  " not in canonical
    assert all(c == " " or not c.isspace() for c in canonical)
    assert unicodedata.is_normalized("NFC", canonical)


@given(
    words=st.lists(WORDS, min_size=1, max_size=6),
    seps=st.lists(st.lists(WHITESPACE, min_size=1, max_size=4).map("".join), min_size=7),
    lead=st.lists(WHITESPACE, max_size=3).map("".join),
    trail=st.lists(WHITESPACE, max_size=3).map("".join),
)
def test_whitespace_variants_share_a_key(
    words: list[str], seps: list[str], lead: str, trail: str
) -> None:
    plain = " ".join(words)
    spaced = lead + "".join(w + s for w, s in zip(words, seps, strict=False)) + trail

    assert text_key(spaced) == text_key(plain)


@given(st.text())
def test_nfc_and_nfd_spellings_share_a_key(text: str) -> None:
    nfc, nfd = unicodedata.normalize("NFC", text), unicodedata.normalize("NFD", text)
    assert canonical_text(nfd) == canonical_text(nfc)
    if canonical_text(text):
        assert text_key(nfd) == text_key(nfc)


def test_composed_and_decomposed_letters_share_a_key() -> None:
    assert text_key("caf\u00e9  au lait") == text_key(" cafe\u0301 au\tlait\n")


# --- derive_key ---


@given(model=NAMES, revision=NAMES, kind=KINDS, canonical=st.text(max_size=50))
def test_key_is_32_lower_hex_and_deterministic(
    model: str, revision: str, kind: str, canonical: str
) -> None:
    key = derive_key(model, revision, kind, canonical)  # type: ignore[arg-type]

    assert HEX32.fullmatch(key.digest)
    assert key == derive_key(model, revision, kind, canonical)  # type: ignore[arg-type]
    assert (key.model, key.revision, key.kind, key.canonical) == (model, revision, kind, canonical)


@given(
    a=st.tuples(NAMES, NAMES, KINDS, st.text(max_size=30)),
    b=st.tuples(NAMES, NAMES, KINDS, st.text(max_size=30)),
)
def test_keys_differ_when_any_field_differs(
    a: tuple[str, str, str, str], b: tuple[str, str, str, str]
) -> None:
    if a != b:
        assert derive_key(*a).digest != derive_key(*b).digest  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "other",
    [
        ("m2", "r1", "text", "hello"),  # model
        ("m", "r2", "text", "hello"),  # revision
        ("m", "r1", "image", "hello"),  # kind
        ("m", "r1", "text", "hello!"),  # input
    ],
)
def test_each_field_changes_the_key(other: tuple[str, str, str, str]) -> None:
    assert derive_key("m", "r1", "text", "hello").digest != derive_key(*other).digest  # type: ignore[arg-type]


def test_fields_are_length_prefixed() -> None:
    # Concatenation alone would make these the same preimage.
    assert derive_key("ab", "c", "text", "x").digest != derive_key("a", "bc", "text", "x").digest
    assert derive_key("m", "r", "text", "ab").digest != derive_key("m", "rt", "ext", "ab").digest  # type: ignore[arg-type]


def test_key_is_stable_across_releases() -> None:
    # A change here re-keys every stored vector: bump _KEY_SCHEME deliberately, never by accident.
    assert derive_key("minilm-l6", "rev1", "text", "hello world").digest == (
        "16fd5af5180d5e7cc72b40652b145347"
    )
    assert derive_key(
        "efficientnet-lite0", "rev1", "image", "https://example.com/a.png"
    ).digest == ("780b9e4a3374baf7bcfc1c0602ad5d53")


# --- canonical_url ---


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("HTTP://Example.COM/Path/A.png", "http://example.com/Path/A.png"),
        ("HtTpS://CDN.example.com/x", "https://cdn.example.com/x"),
        ("http://example.com:80/a.png", "http://example.com/a.png"),
        ("https://example.com:443/a.png", "https://example.com/a.png"),
        ("http://example.com:443/a.png", "http://example.com:443/a.png"),
        ("https://example.com:8443/a.png", "https://example.com:8443/a.png"),
        ("https://example.com/a.png#section", "https://example.com/a.png"),
        ("https://example.com/a.png?size=2&x=y#f", "https://example.com/a.png?size=2&x=y"),
        ("https://example.com", "https://example.com/"),
        ("  https://example.com/a.png  ", "https://example.com/a.png"),
        ("https://example.com/a%7Eb.png", "https://example.com/a~b.png"),
        ("https://example.com/a b.png", "https://example.com/a%20b.png"),
        ("https://example.com/caf\u00e9.png", "https://example.com/caf%C3%A9.png"),
        ("https://example.com/caf%c3%a9.png", "https://example.com/caf%C3%A9.png"),
        ("https://example.com/100%.png", "https://example.com/100%25.png"),
        ("https://example.com/a%41%2d", "https://example.com/aA-"),
        ("http://[::1]:8080/a", "http://[::1]:8080/a"),
        ("http://[2001:DB8::1]/a", "http://[2001:db8::1]/a"),
    ],
)
def test_canonical_url(raw: str, canonical: str) -> None:
    assert canonical_url(raw) == canonical
    assert canonical_url(canonical) == canonical


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # An escaped reserved character names another resource than the character itself.
        ("https://example.com/a%2Fb.png", "https://example.com/a/b.png"),
        ("https://example.com/a%3Bb.png", "https://example.com/a;b.png"),
        # Bytes that are not UTF-8 must not collapse into one replacement character.
        ("https://example.com/%FF.png", "https://example.com/%FE.png"),
    ],
)
def test_distinct_resources_keep_distinct_urls(a: str, b: str) -> None:
    assert canonical_url(a) != canonical_url(b)


def test_percent_escapes_of_reserved_bytes_are_kept_upper_case() -> None:
    assert canonical_url("https://example.com/a%2fb%ff") == "https://example.com/a%2Fb%FF"


@pytest.mark.parametrize(
    "raw",
    [
        "ftp://example.com/a.png",
        "file:///etc/passwd",
        "data:image/png;base64,AAAA",
        "javascript:alert(1)",
        "gopher://example.com/",
        "example.com/a.png",
        "",
        "   ",
        "http:///no-host",
        "http://example.com:99999/a",
        "http://example.com:port/a",
    ],
)
def test_non_http_or_malformed_urls_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput):
        canonical_url(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "https://user:secret@example.com/a.png",
        "https://user@example.com/a.png",
        "https://:secret@example.com/a.png",
    ],
)
def test_urls_with_credentials_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput, match="credentials"):
        canonical_url(raw)


URL_PATHS = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=30).map(
    lambda s: "/" + s.replace("#", "").replace("?", "")
)
HOSTS = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,10}(\.[A-Za-z]{2,5}){1,2}", fullmatch=True)


@given(
    scheme=st.sampled_from(["http", "https", "HTTP", "Https"]),
    host=HOSTS,
    port=st.one_of(st.none(), st.integers(min_value=1, max_value=65535)),
    path=URL_PATHS,
    fragment=st.text(max_size=5),
)
def test_canonical_url_is_idempotent(
    scheme: str, host: str, port: int | None, path: str, fragment: str
) -> None:
    netloc = host if port is None else f"{host}:{port}"
    canonical = canonical_url(f"{scheme}://{netloc}{path}#{fragment}")

    assert canonical_url(canonical) == canonical
    assert canonical.startswith(f"{scheme.lower()}://{host.lower()}")
    assert "#" not in canonical


def test_canonical_input_dispatches_on_kind() -> None:
    assert canonical_input("text", "  a\t b ") == "a b"
    assert canonical_input("image", "HTTPS://X.org/a") == "https://x.org/a"
    with pytest.raises(InvalidInput):
        canonical_input("image", "not a url")
