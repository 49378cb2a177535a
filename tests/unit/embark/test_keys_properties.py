"""Properties of canonicalisation over generated inputs: idempotence, keys that did not move,
case folding only on request, and canonical URLs that the fetcher reads as the raw ones."""

from __future__ import annotations

import re
import unicodedata

from hypothesis import example, given, settings
from hypothesis import strategies as st
from yarl import URL

from embark.errors import InvalidInput
from embark.keys import canonical_text, canonical_url

# Characters canonicalisation treats specially, mixed into arbitrary text so that generated
# inputs hit them far more often than uniform sampling would.
SPECIAL = (
    "\u00ad\u061c\u200b\u200c\u200d\u200e\u200f\u202a\u202e\u2060\u2066\u2069\ufeff"  # dropped
    "\u00a0\u2003\u3000\u2028 \t\n"  # whitespace
    "\u0301\u0307\u00e9\u212a\u0130\u03a3\u00df\ufb01"  # marks, singletons, case specials
    "\U0001f468\ufe0f\u0645\u0915\u094d\U000e0067\u034f\u180e"  # joinable neighbours, kept
)
TEXT = st.text(
    alphabet=st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(SPECIAL))
)
DROPPED_OR_JOINER = re.compile("[\u00ad\u061c\u200b-\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]")


# What these check is correctness, not speed: no per-example deadline (a loaded machine, or the
# idna tables loading on first use, would otherwise fail an example for being slow).
NO_DEADLINE = settings(deadline=None)


def v1_canonical_text(text: str) -> str:
    """Canonical text as key scheme v1 shipped it (NFC, whitespace folded)."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


@NO_DEADLINE
@given(TEXT, st.booleans())
@example("\u212a\u200d\u00e9", False)
@example("\u0130\u200d\u00e9", True)
@example("e\u200b\u0301", False)
def test_canonical_text_is_idempotent(text: str, fold_case: bool) -> None:
    once = canonical_text(text, fold_case=fold_case)
    assert canonical_text(once, fold_case=fold_case) == once
    assert unicodedata.is_normalized("NFC", once)
    assert once == " ".join(once.split())


@NO_DEADLINE
@given(TEXT)
def test_text_without_invisibles_keeps_its_v1_canonical_form(text: str) -> None:
    # Why the key scheme is not bumped: every text that has no character the new rules drop
    # canonicalises exactly as before, so its digest (and the stored row) is unchanged.
    if not DROPPED_OR_JOINER.search(text):
        assert canonical_text(text) == v1_canonical_text(text)


@NO_DEADLINE
@given(TEXT)
def test_v1_canonical_text_only_moves_if_it_held_an_invisible(text: str) -> None:
    before = v1_canonical_text(text)
    if canonical_text(before) != before:
        assert DROPPED_OR_JOINER.search(before)


@NO_DEADLINE
@given(st.text(alphabet=st.characters(max_codepoint=0x7F)))
def test_case_folds_only_when_the_model_asks(text: str) -> None:
    assert canonical_text(text) == " ".join(text.split())
    assert canonical_text(text, fold_case=True) == " ".join(text.lower().split())


@NO_DEADLINE
@given(TEXT)
def test_folded_text_is_lower_case(text: str) -> None:
    folded = canonical_text(text, fold_case=True)
    assert folded.lower() == folded


# --- URLs ---

LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
UNICODE_LABEL = st.sampled_from(
    ["b\u00fccher", "B\u00dcCHER", "xn--bcher-kva", "m\u00fcnchen", "\u4f8b\u3048"]
)
HOSTS = st.builds(
    lambda labels, tld, dot: ".".join([*labels, tld]) + dot,
    st.lists(st.one_of(LABEL, UNICODE_LABEL), min_size=1, max_size=3),
    st.sampled_from(["com", "ORG", "example", "de"]),
    st.sampled_from(["", "."]),
)
# Path and query material: escapes (reserved, unreserved, non-UTF-8, either case), dot
# segments, sub-delims, non-ASCII. No raw space: the fetcher's URL library sends a raw space
# in a query as "+", a form-encoding choice canonical_url deliberately does not copy (it
# escapes it as %20, the RFC 3986 spelling, which servers read as the same space).
NAME_CHARS = ["a", "B", "0", "-", "_", "~", "\u00e9", "\u4f8b"]
DOTS = [".", "..", "/", "./", "../", "/./", "/../", "//"]
ESCAPES = ["%7e", "%7E", "%41", "%2e", "%2E%2E", "%2f", "%2F", "%3d", "%26", "%2b", "%25", "%ff"]
DELIMS = ["!", "$", "'", "(", "*", "+", ",", ";", "=", ":", "@", "&", "[", "|", "%c3%a9"]
PIECES = st.sampled_from(NAME_CHARS + DOTS + ESCAPES + DELIMS)
PATHS = st.lists(PIECES, max_size=12).map(lambda p: "/" + "".join(p))
QUERIES = st.lists(st.one_of(PIECES, st.just("?")), max_size=10).map("".join)


@st.composite
def urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "Https"]))
    port = draw(st.sampled_from(["", ":80", ":443", ":8080"]))
    query = draw(st.one_of(st.just(""), QUERIES.map(lambda q: "?" + q)))
    fragment = draw(st.sampled_from(["", "#", "#top"]))
    return f"{scheme}://{draw(HOSTS)}{port}{draw(PATHS)}{query}{fragment}"


@NO_DEADLINE
@given(urls())
@example("HTTP://Example.COM:80/a/../b?x=%7e")
def test_canonical_url_is_idempotent(url: str) -> None:
    canonical = canonical_url(url)
    assert canonical_url(canonical) == canonical
    assert canonical.isascii()


@NO_DEADLINE
@given(urls())
@example("HTTP://Example.COM:80/a/../b?x=%7e")
@example("http://b\u00fccher.example./a/%2E%2E/b?q=%c3%a9")
def test_the_fetcher_sends_the_same_request_for_raw_and_canonical(url: str) -> None:
    # The canonical URL is the one Retina fetches, so it must name the same resource. yarl is
    # the URL library of Retina's HTTP client: what it makes of both spellings is what goes on
    # the wire. The one deliberate difference is the host's trailing dot.
    try:
        canonical = canonical_url(url)
    except InvalidInput:
        return
    raw, fetched = URL(url), URL(canonical)
    assert fetched.raw_path_qs == raw.raw_path_qs
    assert fetched.port == raw.port
    assert fetched.scheme == raw.scheme
    assert fetched.raw_host == (raw.raw_host or "").removesuffix(".")


URL_SYNTAX = ["http://", "HTTPS://", "[", "]", "::1", ":", "@", "%", "%zz", "%2e", "/", "..", "?"]
URL_ODDITIES = [
    "\ud800",
    "\u00fc",
    "xn--",
    "-",
    "a",
    "\u3002",
    "\uff0e",
    "\u200d",
    "9" * 70,
    "\x00",
]
URL_FRAGMENTS = st.sampled_from([*URL_SYNTAX, "#", *URL_ODDITIES])


@NO_DEADLINE
@given(st.one_of(st.text(), st.lists(URL_FRAGMENTS, max_size=12).map("".join)))
def test_any_string_is_a_canonical_url_or_a_clear_refusal(url: str) -> None:
    # Image URLs come from clients: nothing they send may escape as anything but InvalidInput.
    try:
        canonical = canonical_url(url)
    except InvalidInput:
        return
    assert canonical_url(canonical) == canonical
