"""Cache keys: a stable digest of (model, revision, input kind, canonical input).

Keying on the model and its revision means a new model artifact gets new keys, so a stale vector
is never served for a new model; canonicalising the input first means spellings that cannot
differ in meaning (Unicode forms, whitespace, invisible characters; URL case, ports, dot
segments, escapes, IDN forms) share one row. What is and is not canonicalised, and why, is in
docs/keys.md; this module is the one place that does it, for EmbArk and KFC alike.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

import idna

from embark.errors import InvalidInput

InputKind = Literal["text", "image"]

# Bumping this changes every key: do it only when the meaning of a key changes, i.e. when the
# same canonical string would hash differently. Canonicalisation changes that only make more
# spellings land on an existing canonical string need no bump: the vector under a key is always
# the encoding of the very string hashed into it (Retina is sent the canonical input), so a row
# stays true, and rows keyed on a spelling that is no longer canonical just age out by TTL.
_KEY_SCHEME = b"embark-key-v1"

# ``KeyDeriver.key`` remembers the keys of this many recent raw inputs of at most this many
# characters (a title, a URL): a hot input's key then costs a dict lookup instead of
# canonicalisation and a hash (0.2 against 3.8 us, bench/hit_micro.py). Both bounds hold the
# memory to ~7 MB for typical titles and ~40 MB at worst (16,384 inputs of 256 CJK characters,
# raw and canonical) per model and process; longer inputs are derived every time.
RAW_KEYS = 16_384
RAW_KEY_MAX_CHARS = 256


@dataclass(frozen=True, slots=True)
class CacheKey:
    """A derived key plus what it was derived from (kept beside the vector for export/debugging)."""

    digest: str
    model: str
    revision: str
    kind: InputKind
    canonical: str


# --- text ---

# Invisible format characters that carry no letter, no joining and no shaping: dropped wherever
# they occur. Zero width space, word joiner and zero width no-break space (also the byte order
# mark) only say where a line may or may not break; the soft hyphen only where a word may be
# hyphenated; the bidi marks, embeddings and isolates only steer the display order of text whose
# logical order (what a tokenizer reads) they leave as it is. Deliberately kept: ZWJ and ZWNJ
# (see _STRAY_JOINERS), variation selectors (text vs emoji presentation, ideographic variants),
# tag characters (subdivision flags), Mongolian vowel separator and free variation selectors
# (shaping), the combining grapheme joiner (a mark that changes ordering under normalisation),
# and the invisible mathematical operators (they say which operation is meant).
# A compiled character class, not str.translate: translate takes a generic per-character path
# for any non-Latin-1 string (11 µs for 30 CJK characters against 1 µs for this regex).
_INVISIBLE = re.compile(
    "["
    "\u00ad"  # SOFT HYPHEN
    "\u061c"  # ARABIC LETTER MARK
    "\u200b"  # ZERO WIDTH SPACE
    "\u200e\u200f"  # LEFT-TO-RIGHT / RIGHT-TO-LEFT MARK
    "\u202a-\u202e"  # bidi embeddings, overrides, pop
    "\u2060"  # WORD JOINER
    "\u2066-\u2069"  # bidi isolates, pop
    "\ufeff"  # ZERO WIDTH NO-BREAK SPACE, BYTE ORDER MARK
    "]"
)
# ZWJ and ZWNJ change what text means where they sit between two characters of a script that
# joins or forms conjuncts (Persian, Arabic, the Indic scripts: ZWNJ is spelling in Persian) and
# inside emoji sequences (a family glyph vs three people). Next to ASCII, whitespace or the ends
# of the text they join nothing that can change: a Latin ligature hint at most. So a run of them
# is dropped when either neighbour is ASCII, whitespace or an end, and kept between two other
# characters: some Latin-1 spellings keep a pointless joiner (a cache row too many), but no
# meaningful one is ever lost.
# ("Not preceded by a non-ASCII non-space character" covers the start of the text too.)
_STRAY_JOINERS = re.compile(r"(?<![^\x00-\x7f\s])[\u200c\u200d]+|[\u200c\u200d]+(?![^\x00-\x7f\s])")
_CAPITAL_SIGMA, _SMALL_SIGMA = "\u03a3", "\u03c3"


def canonical_text(text: str, *, fold_case: bool = False) -> str:
    """Invisible format characters dropped (stray ZWJ/ZWNJ too), Unicode NFC, every run of
    Unicode whitespace (NBSP and the like included) folded to one space, ends stripped.

    ``fold_case`` lower-cases first; it is a property of the model (a tokenizer that lowercases,
    see ``ModelSpec.fold_case``), never applied to everyone. ``str.lower``, not ``casefold``:
    casefold also maps ß to ss and the ﬁ ligature to fi, which a lowercasing tokenizer keeps
    apart, so it would share one vector between inputs the model encodes differently. Tokenizers
    lower-case each character on its own, so capital sigma (U+03A3) is mapped to small sigma
    before ``str.lower``, whose word-final sigma (U+03C2) is the one context rule it applies.

    Hit path: pure-ASCII text (most of it) skips everything but the whitespace fold, and the
    rest is C-level work (a regex, normalize, a second regex only when a joiner is present)."""
    if fold_case:
        if _CAPITAL_SIGMA in text:
            text = text.replace(_CAPITAL_SIGMA, _SMALL_SIGMA)
        text = text.lower()
    if not text.isascii():
        # Order matters for idempotence: NFC after dropping (a dropped character may have kept
        # a mark from composing), joiners judged after NFC (a few characters normalise to
        # ASCII, e.g. the Kelvin sign to K) and after lower-casing (İ becomes i + a mark).
        text = unicodedata.normalize("NFC", _INVISIBLE.sub("", text))
        if "\u200c" in text or "\u200d" in text:
            joined = _STRAY_JOINERS.sub("", text)
            if joined != text:
                text = unicodedata.normalize("NFC", joined)
    # str.split() splits on exactly the characters str.isspace() (and the former r"\s+") names.
    return " ".join(text.split())


# --- URLs ---

_DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# RFC 3986 unreserved characters: the only ones whose escaped and literal forms are equivalent.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# What RFC 3986 lets stand unescaped: pchar (unreserved, sub-delims, ":" and "@") and "/" in a
# path; "?" too in a query. Everything else (space, non-ASCII, "[", "|", ...) is escaped as UTF-8.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


def canonical_url(url: str) -> str:
    """The one spelling of an image URL under which it is keyed and fetched.

    Lower-case scheme and host; an internationalised host in its ASCII (``xn--``) form; one
    trailing dot of the host dropped; IP literals compressed; default port dropped; RFC 3986
    dot segments removed from the path; percent-encoding normalised in path and query; an
    empty query and the fragment (which never reaches the server) dropped. Only http and https
    are accepted, and never credentials.

    The canonical URL is the URL Retina fetches, so it must name the same resource: every step
    is an equivalence of RFC 3986 section 6 (or of the fetcher's own parser, which sends the
    same request for both spellings), and nothing that a server may read differently is touched:
    escapes of reserved characters (``%2F`` is not ``/``, ``%26`` is not ``&``) stay escaped,
    ``+`` stays ``+``, and query parameters are never sorted or deduplicated (their order is
    the server's to interpret, and a signed URL's signature covers the exact string)."""
    if not url.isascii():
        try:
            url.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (from a JSON \ud800 escape) has no bytes
            raise InvalidInput("image URL is not valid Unicode") from None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"malformed image URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidInput(f"image URL scheme must be http or https, got {scheme or 'none'!r}")
    if "@" in parts.netloc:
        raise InvalidInput("image URL must not carry credentials")
    host = _canonical_host(parts.hostname or "")
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = _remove_dot_segments(_normalise_escapes(parts.path or "/", _PATH_SAFE))
    query = _normalise_escapes(parts.query, _QUERY_SAFE)
    return urlunsplit((scheme, netloc, path, query, ""))


def _canonical_host(host: str) -> str:
    """``urlsplit`` has already lower-cased it. An internationalised name becomes its ASCII form
    exactly as the fetcher's URL library (yarl) derives it: UTS 46 (IDNA 2008, non-transitional,
    so ß stays ß), falling back to IDNA 2003 for names 2008 refuses (emoji domains). The Unicode
    and the ``xn--`` spelling then share one key, and the fetch resolves the same name."""
    if ":" in host:  # IPv6 literal, possibly with a zone
        with contextlib.suppress(ValueError):  # a zone it cannot parse: kept as written
            host = ipaddress.IPv6Address(host).compressed
        return f"[{host}]"
    if not host.isascii():
        host = _idna_host(host)
    # "example.com." is the absolute spelling of "example.com": the same DNS name.
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise InvalidInput("image URL has no host")
    if host.startswith(".") or host.endswith(".") or ".." in host:
        raise InvalidInput("image URL host has an empty label")
    if not _HOST.fullmatch(host):
        raise InvalidInput("image URL host has characters no host name has")
    return host


@functools.lru_cache(maxsize=4096)
def _idna_host(host: str) -> str:
    """The ASCII form of a Unicode host name. Cached: ``idna`` is pure Python (about 90 µs a
    name) and image URLs repeat a few CDN hosts; a pure function, so sharing it is safe."""
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except UnicodeError:
        try:
            return host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidInput("image URL host is not a valid domain name") from None


# RFC 3986 reg-name without percent-escapes (no DNS name needs them, and a fetcher decodes
# them differently): unreserved characters and sub-delims. The host is lower-case by now.
_HOST = re.compile(r"[a-z0-9\-._~!$&'()*+,;=]+")


def _normalise_escapes(component: str, safe: str) -> str:
    """RFC 3986 percent-encoding normalisation: escapes of unreserved characters decoded, other
    escapes upper-cased, everything else that needs it escaped as UTF-8. Never decodes an escape
    of a reserved character (``%2F`` is not ``/``) or of a non-UTF-8 byte."""
    if "%" not in component and not _NEEDS_ESCAPE.search(component):
        return component
    out: list[str] = []
    pos = 0
    for match in _PERCENT_ESCAPE.finditer(component):
        out.append(quote(component[pos : match.start()], safe=safe))
        char = chr(int(match.group(1), 16))
        out.append(char if char in _UNRESERVED else f"%{match.group(1).upper()}")
        pos = match.end()
    out.append(quote(component[pos:], safe=safe))
    return "".join(out)


# A character quote() would escape in a query (and so in a path, which never holds "?"): when
# there is none and no escape either, the component is already canonical.
_NEEDS_ESCAPE = re.compile(r"[^A-Za-z0-9\-._~/:@!$&'()*+,;=?]")


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 on an absolute path: ``/a/./b/../c`` is ``/a/c``. Run after the
    escapes are normalised, so ``%2E%2E`` (an escaped unreserved ".") counts as ``..`` too."""
    if "." not in path:
        return path
    segments = path.split("/")
    out: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    # A trailing "." or ".." names the directory: the path keeps its final "/".
    if segments[-1] in (".", ".."):
        out.append("")
    return "/" + "/".join(out)


def canonical_input(kind: InputKind, raw: str, *, fold_case: bool = False) -> str:
    """The canonical form of an input of the given kind. ``fold_case`` is the model's
    (``ModelSpec.fold_case``) and applies to text only: a URL path is case-sensitive."""
    return canonical_text(raw, fold_case=fold_case) if kind == "text" else canonical_url(raw)


def derive_key(model: str, revision: str, kind: InputKind, canonical: str) -> CacheKey:
    """Derive the key of an already canonical input. blake2b-128: stable, fast, collision-safe
    at archive scale; fields are length-prefixed so no two tuples share a preimage.

    Case folding is not hashed: it only decides which string is canonical, and the vector
    under a key is always the encoding of the string hashed into it (Retina is sent that very
    string), so a folded and an unfolded canonical string of the same text never disagree."""
    return KeyDeriver(model, revision, kind).derive(canonical)


class KeyDeriver:
    """Keys for one model: (model, revision, kind) hashed once, and the model's own
    canonicalisation (its ``fold_case``), so EmbArk and KFC canonicalise a model's inputs alike.

    The hit path derives a key per input; hashing the scheme, model, revision and kind again
    for each of them was a third of a 1,024-input batch's time. A copy of the prefix state
    gives the very same digest (the hash is of the same byte stream)."""

    __slots__ = ("_fold_case", "_keys", "_kind", "_model", "_prefix", "_revision")

    def __init__(
        self, model: str, revision: str, kind: InputKind, *, fold_case: bool = False
    ) -> None:
        self._model, self._revision, self._kind = model, revision, kind
        self._fold_case = fold_case
        self._prefix = hashlib.blake2b(digest_size=16, person=b"embark")
        self._prefix.update(_KEY_SCHEME)
        for field in (model, revision, kind):
            _feed(self._prefix, field)
        # Per deriver: a reloaded catalog (a new revision) starts with none remembered.
        self._keys = functools.lru_cache(maxsize=RAW_KEYS)(self._key)

    def key(self, raw: str) -> CacheKey | None:
        """The key of this model's raw input, None when nothing is left of it once canonical
        (raises ``InvalidInput`` as ``canonical`` does). Remembers recent short inputs'."""
        return self._keys(raw) if len(raw) <= RAW_KEY_MAX_CHARS else self._key(raw)

    def canonical(self, raw: str) -> str:
        """The canonical form of this model's raw input (raises ``InvalidInput``)."""
        return canonical_input(self._kind, raw, fold_case=self._fold_case)

    def derive(self, canonical: str) -> CacheKey:
        """The key of an input already canonical for this model."""
        h = self._prefix.copy()
        _feed(h, canonical)
        return CacheKey(h.hexdigest(), self._model, self._revision, self._kind, canonical)

    def _key(self, raw: str) -> CacheKey | None:
        canonical = self.canonical(raw)
        return self.derive(canonical) if canonical else None


def _feed(h: hashlib.blake2b, field: str) -> None:
    data = field.encode("utf-8", "surrogatepass")
    h.update(len(data).to_bytes(8, "little") + data)
