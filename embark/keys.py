"""Cache keys: a stable digest of (model, revision, input kind, canonical input).

Keying on the model and its revision means a new model artifact gets new keys, so a stale vector
is never served for a new model; canonicalising the input first means trivially different
spellings of the same text or URL share one row.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from embark.errors import InvalidInput

InputKind = Literal["text", "image"]

_WS = re.compile(r"\s+")
# Bumping this changes every key: do it only when canonicalisation itself changes.
_KEY_SCHEME = b"embark-key-v1"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# RFC 3986 unreserved characters: the only ones whose escaped and literal forms are equivalent.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


@dataclass(frozen=True, slots=True)
class CacheKey:
    """A derived key plus what it was derived from (kept beside the vector for export/debugging)."""

    digest: str
    model: str
    revision: str
    kind: InputKind
    canonical: str


def canonical_text(text: str) -> str:
    """Unicode NFC, every whitespace run folded to one space, ends stripped."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def canonical_url(url: str) -> str:
    """Lower-case scheme and host, default port dropped, path percent-encoding normalised,
    fragment removed (it never reaches the server). Only http and https are accepted."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"malformed image URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidInput(f"image URL scheme must be http or https, got {scheme or 'none'!r}")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidInput("image URL has no host")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    if parts.username or parts.password:
        raise InvalidInput("image URL must not carry credentials")
    return urlunsplit((scheme, netloc, _canonical_path(parts.path or "/"), parts.query, ""))


def _canonical_path(path: str) -> str:
    """RFC 3986 percent-encoding normalisation: escapes of unreserved characters decoded, other
    escapes upper-cased, everything else that needs it escaped as UTF-8. Never decodes an escape
    of a reserved character (``%2F`` is not ``/``) or of a non-UTF-8 byte: the canonical URL
    must name the same resource, since it is the URL Retina fetches."""
    out: list[str] = []
    pos = 0
    for match in _PERCENT_ESCAPE.finditer(path):
        out.append(quote(path[pos : match.start()], safe=_PATH_SAFE))
        char = chr(int(match.group(1), 16))
        out.append(char if char in _UNRESERVED else f"%{match.group(1).upper()}")
        pos = match.end()
    out.append(quote(path[pos:], safe=_PATH_SAFE))
    return "".join(out)


def canonical_input(kind: InputKind, raw: str) -> str:
    """The canonical form of an input of the given kind."""
    return canonical_text(raw) if kind == "text" else canonical_url(raw)


def derive_key(model: str, revision: str, kind: InputKind, canonical: str) -> CacheKey:
    """Derive the key of an already canonical input. blake2b-128: stable, fast, collision-safe
    at archive scale; fields are length-prefixed so no two tuples share a preimage."""
    return KeyDeriver(model, revision, kind).derive(canonical)


class KeyDeriver:
    """``derive_key`` for one (model, revision, kind), with the fixed fields hashed once.

    The hit path derives a key per input; hashing the scheme, model, revision and kind again
    for each of them was a third of a 1,024-input batch's time. A copy of the prefix state
    gives the very same digest (the hash is of the same byte stream)."""

    __slots__ = ("_kind", "_model", "_prefix", "_revision")

    def __init__(self, model: str, revision: str, kind: InputKind) -> None:
        self._model, self._revision, self._kind = model, revision, kind
        self._prefix = hashlib.blake2b(digest_size=16, person=b"embark")
        self._prefix.update(_KEY_SCHEME)
        for field in (model, revision, kind):
            _feed(self._prefix, field)

    def derive(self, canonical: str) -> CacheKey:
        h = self._prefix.copy()
        _feed(h, canonical)
        return CacheKey(h.hexdigest(), self._model, self._revision, self._kind, canonical)


def _feed(h: hashlib.blake2b, field: str) -> None:
    data = field.encode("utf-8", "surrogatepass")
    h.update(len(data).to_bytes(8, "little") + data)
