"""Cache keys: canonical text and URLs, and the digest of (model, revision, kind, input)."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from embark.errors import InvalidInput
from embark.keys import KeyDeriver, canonical_input, canonical_text, canonical_url, derive_key

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


def test_a_zero_width_space_joins_nothing() -> None:
    assert canonical_text("red\u200bshoes") == "redshoes"
    assert text_key("red\u200bshoes") == text_key("redshoes")


@pytest.mark.parametrize(
    "invisible",
    [
        "\u00ad",  # soft hyphen
        "\u061c",  # Arabic letter mark
        "\u200b",  # zero width space
        "\u200e",  # left-to-right mark
        "\u200f",  # right-to-left mark
        "\u202a",  # left-to-right embedding
        "\u202e",  # right-to-left override
        "\u2060",  # word joiner
        "\u2066",  # left-to-right isolate
        "\u2069",  # pop directional isolate
        "\ufeff",  # zero width no-break space / byte order mark
    ],
)
def test_invisible_format_characters_are_dropped(invisible: str) -> None:
    assert canonical_text(f"{invisible}red{invisible}shoes {invisible}42{invisible}") == (
        "redshoes 42"
    )


def test_dropping_an_invisible_character_lets_a_mark_compose() -> None:
    # e + ZWSP + combining acute: once the ZWSP is gone the text must be NFC again.
    assert canonical_text("caf e\u200b\u0301") == "caf \u00e9"


@pytest.mark.parametrize(
    "raw",
    [
        "\u00a0red\u2003shoes\u3000",  # NBSP, em space, ideographic space
        "red\u2028shoes",  # line separator
        "red\u2029shoes",  # paragraph separator
        "red\x85shoes",  # next line
        "red \u200b shoes",  # an invisible between two spaces leaves one space
    ],
)
def test_unicode_whitespace_folds_to_one_space(raw: str) -> None:
    assert canonical_text(raw) == "red shoes"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("Auf\u200clage", "Auflage"),  # a Latin ligature hint between ASCII letters
        ("red\u200dshoes", "redshoes"),
        ("\u200dred shoes\u200c", "red shoes"),  # at the ends
        ("red \u200d\u200c shoes", "red shoes"),  # next to whitespace
        ("\u00e9\u200d!", "\u00e9!"),  # one side ASCII is enough
        ("\u212a\u200d\u00e9", "K\u00e9"),  # the Kelvin sign is K once normalised
    ],
)
def test_stray_joiners_are_dropped(raw: str, canonical: str) -> None:
    assert canonical_text(raw) == canonical


@pytest.mark.parametrize(
    "meaningful",
    [
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family: one emoji, not three
        "\u2764\ufe0f\u200d\U0001f525",  # heart on fire (variation selector, then ZWJ)
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian: ZWNJ is spelling
        "\u0915\u094d\u200d\u0937",  # Devanagari half form
    ],
)
def test_joiners_between_joining_characters_are_kept(meaningful: str) -> None:
    assert canonical_text(meaningful) == meaningful
    assert text_key(meaningful) != text_key(meaningful.replace("\u200d", "").replace("\u200c", ""))


@pytest.mark.parametrize(
    "kept",
    [
        "\u2764\ufe0f",  # variation selector: emoji presentation
        "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # flag tags
        "a\u2062b",  # invisible times: a multiplication, not a word
        "\u05d0\u034f\u05b8",  # combining grapheme joiner
        "\u1820\u180e\u1820",  # Mongolian vowel separator (shaping)
    ],
)
def test_format_characters_that_carry_meaning_are_kept(kept: str) -> None:
    assert canonical_text(kept) == kept


# --- fold_case: a property of the model, never global ---


def test_case_is_kept_unless_the_model_folds_it() -> None:
    assert canonical_text("Red Shoes") == "Red Shoes"
    assert canonical_input("text", "Red Shoes") == "Red Shoes"
    assert text_key("Red Shoes") != text_key("red shoes")
    assert canonical_text("Red Shoes", fold_case=True) == "red shoes"
    assert canonical_input("text", " RED\u200b  Shoes", fold_case=True) == "red shoes"


@pytest.mark.parametrize(
    ("raw", "folded"),
    [
        ("STRASSE Stra\u00dfe", "strasse stra\u00dfe"),  # lower, not casefold: ß stays ß
        ("\ufb01LE", "\ufb01le"),  # the fi ligature is not split
        (
            "\u039f\u0394\u039f\u03a3",
            "\u03bf\u03b4\u03bf\u03c3",
        ),  # final sigma as tokenizers fold it
        ("\u0130stanbul", "i\u0307stanbul"),  # dotted capital I: i + combining dot
        ("CAF\u00c9", "caf\u00e9"),
    ],
)
def test_fold_case_lowercases_as_a_tokenizer_does(raw: str, folded: str) -> None:
    assert canonical_text(raw, fold_case=True) == folded


def test_fold_case_never_touches_urls() -> None:
    url = "https://Example.com/Shoes/Red.PNG?Size=XL"
    expected = "https://example.com/Shoes/Red.PNG?Size=XL"
    assert canonical_input("image", url, fold_case=True) == expected


def test_key_deriver_canonicalises_with_the_models_fold_case() -> None:
    folding = KeyDeriver("m", "r1", "text", fold_case=True)
    keeping = KeyDeriver("m", "r1", "text")

    assert folding.canonical(" Red\u200bShoes ") == "redshoes"
    assert keeping.canonical(" Red\u200bShoes ") == "RedShoes"
    # Folding decides which string is canonical; the digest of a string is the same either way.
    assert folding.derive("redshoes") == keeping.derive("redshoes")
    assert folding.derive("redshoes") == derive_key("m", "r1", "text", "redshoes")


# --- derive_key ---


@given(st.text(max_size=300))
def test_a_raw_inputs_key_is_its_canonical_forms(raw: str) -> None:
    deriver = KeyDeriver("m", "r1", "text", fold_case=True)
    try:
        canonical = deriver.canonical(raw)
    except InvalidInput:
        with pytest.raises(InvalidInput):
            deriver.key(raw)
        return
    key = deriver.key(raw)
    assert key == (deriver.derive(canonical) if canonical else None)
    assert deriver.key(raw) == key  # remembered or not, the same key


def test_short_inputs_keys_are_remembered_long_ones_derived_again() -> None:
    deriver = KeyDeriver("m", "r1", "text")
    short, long = "Red Shoes, size 42", "red shoes " * 40

    assert deriver.key(short) is deriver.key(short)
    assert deriver.key(long) == deriver.key(long)
    assert deriver.key(long) is not deriver.key(long)
    # A new revision is a new deriver: nothing of the old one's is remembered.
    assert KeyDeriver("m", "r2", "text").key(short) != deriver.key(short)


def test_an_empty_or_invalid_raw_input_is_never_remembered_as_a_key() -> None:
    text, image = KeyDeriver("m", "r1", "text"), KeyDeriver("m", "r1", "image")

    assert text.key(" \u200b ") is None
    for _ in range(2):
        with pytest.raises(InvalidInput):
            image.key("ftp://example.com/a.jpg")


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


def test_the_issue_url_lands_on_the_shared_key() -> None:
    assert canonical_url("HTTP://Example.COM:80/a/../b?x=%7e") == "http://example.com/b?x=~"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("http://x.org/a/../b", "http://x.org/b"),
        ("http://x.org/a/./b", "http://x.org/a/b"),
        ("http://x.org/a/b/..", "http://x.org/a/"),  # a trailing dot segment names the directory
        ("http://x.org/a/b/.", "http://x.org/a/b/"),
        ("http://x.org/../../a", "http://x.org/a"),  # never above the root
        ("http://x.org/..", "http://x.org/"),
        ("http://x.org/a//b/../c", "http://x.org/a//c"),  # empty segments are segments
        ("http://x.org/a/%2E%2e/b", "http://x.org/b"),  # an escaped "." is a "."
        ("http://x.org/a/.../b", "http://x.org/a/.../b"),  # "..." is a name
        ("http://x.org/a/..b/c", "http://x.org/a/..b/c"),
        ("http://x.org/a/%2E%2E%2Fb", "http://x.org/a/..%2Fb"),  # not a segment: %2F is no "/"
        ("http://x.org/a/b?p=../c", "http://x.org/a/b?p=../c"),  # a query has no segments
    ],
)
def test_dot_segments_are_removed_from_the_path(raw: str, canonical: str) -> None:
    assert canonical_url(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("http://x.org/a?x=%7e&y=%41%2d", "http://x.org/a?x=~&y=A-"),  # unreserved: decoded
        ("http://x.org/a?q=%2f%3d%26%2b%3f", "http://x.org/a?q=%2F%3D%26%2B%3F"),  # reserved: kept
        ("http://x.org/a?q=caf%c3%a9", "http://x.org/a?q=caf%C3%A9"),
        ("http://x.org/a?q=caf\u00e9", "http://x.org/a?q=caf%C3%A9"),
        ("http://x.org/a?q=a b", "http://x.org/a?q=a%20b"),
        ("http://x.org/a?q=a+b", "http://x.org/a?q=a+b"),  # "+" is not a space to every server
        ("http://x.org/a?q=100%", "http://x.org/a?q=100%25"),
        ("http://x.org/a?q=[1]|^", "http://x.org/a?q=%5B1%5D%7C%5E"),
        ("http://x.org/a?b=2&a=1&b=1", "http://x.org/a?b=2&a=1&b=1"),  # never reordered
        ("http://x.org/a?a=1&&", "http://x.org/a?a=1&&"),  # nor tidied
        ("http://x.org/a?url=http://y/?z", "http://x.org/a?url=http://y/?z"),
        ("http://x.org/a?", "http://x.org/a"),  # an empty query is no query
        ("http://x.org/a?#frag", "http://x.org/a"),
    ],
)
def test_query_percent_encoding_is_normalised_and_nothing_else(raw: str, canonical: str) -> None:
    assert canonical_url(raw) == canonical


@pytest.mark.parametrize(
    "spelling",
    [
        "http://b\u00fccher.example/a.png",
        "http://B\u00dcCHER.Example/a.png",
        "http://xn--bcher-kva.example/a.png",
        "http://XN--BCHER-KVA.EXAMPLE/a.png",
        "http://b\u00fccher\u3002example/a.png",  # ideographic full stop separates labels
        "http://b\u00fccher.example./a.png",
        "http://B\u00dcCHER.example.:80/a.png",
    ],
)
def test_idn_host_spellings_share_a_key(spelling: str) -> None:
    assert canonical_url(spelling) == "http://xn--bcher-kva.example/a.png"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        # IDNA 2008 (as the fetcher resolves it): ß is a letter of its own, not "ss".
        ("https://stra\u00dfe.de/", "https://xn--strae-oqa.de/"),
        # Names IDNA 2008 refuses fall back to IDNA 2003, as the fetcher's URL library does.
        ("https://\U0001f4a9.la/", "https://xn--ls8h.la/"),
        ("https://\uff25\uff38.com/", "https://ex.com/"),  # full-width letters
    ],
)
def test_idn_hosts_take_the_ascii_form_the_fetcher_resolves(raw: str, canonical: str) -> None:
    assert canonical_url(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("https://example.com./a.png", "https://example.com/a.png"),
        ("https://Example.COM.:443/a.png", "https://example.com/a.png"),
        ("https://example.com.:8443/a.png", "https://example.com:8443/a.png"),
        ("http://192.0.2.1./a", "http://192.0.2.1/a"),
        ("http://[2001:DB8:0:0:0:0:0:1]/a", "http://[2001:db8::1]/a"),  # IPv6 compressed
        ("http://my_host.example/a", "http://my_host.example/a"),  # not IDNA, still a host
    ],
)
def test_hosts_are_canonical(raw: str, canonical: str) -> None:
    assert canonical_url(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("http://example.com../a", "empty label"),
        ("http://.example.com/a", "empty label"),
        ("http://a..b/a", "empty label"),
        ("http://./a", "no host"),
        ("http://ex ample.com/a", "no host name has"),
        ("http://ex%41mple.com/a", "no host name has"),
        ("http://ex<ample.com/a", "no host name has"),
        ("http://b\u00fccher..example/a", "not a valid domain name"),
    ],
)
def test_malformed_hosts_are_refused_clearly(raw: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        canonical_url(raw)


@pytest.mark.parametrize(
    "raw", ["http://x.org/\ud800", "http://x.org/a?q=\udfff", "http://\ud800.org/"]
)
def test_lone_surrogates_are_refused_not_crashed_on(raw: str) -> None:
    with pytest.raises(InvalidInput, match="not valid Unicode"):
        canonical_url(raw)


def test_any_userinfo_is_refused_even_empty() -> None:
    with pytest.raises(InvalidInput, match="credentials"):
        canonical_url("https://@example.com/a.png")


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
