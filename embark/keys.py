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
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from embark.errors import InvalidInput

InputKind = Literal["text", "image"]

_WS = re.compile(r"\s+")
# Bumping this changes every key: do it only when canonicalisation itself changes.
_KEY_SCHEME = b"embark-key-v1"
_DEFAULT_PORTS = {"http": 80, "https": 443}


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
    path = quote(unquote(parts.path or "/"), safe="/:@!$&'()*+,;=-._~")
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def canonical_input(kind: InputKind, raw: str) -> str:
    """The canonical form of an input of the given kind."""
    return canonical_text(raw) if kind == "text" else canonical_url(raw)


def derive_key(model: str, revision: str, kind: InputKind, canonical: str) -> CacheKey:
    """Derive the key of an already canonical input. blake2b-128: stable, fast, collision-safe
    at archive scale; fields are length-prefixed so no two tuples share a preimage."""
    h = hashlib.blake2b(digest_size=16, person=b"embark")
    h.update(_KEY_SCHEME)
    for field in (model, revision, kind, canonical):
        data = field.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return CacheKey(h.hexdigest(), model, revision, kind, canonical)
