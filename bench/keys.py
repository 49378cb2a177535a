"""Cost of canonicalisation on the hit path: per-call µs of ``canonical_text`` against the
previous (v1) text rules, with and without case folding, and of ``canonical_url``, each next to
the digest it feeds (``KeyDeriver.derive``) for scale. No servers; a few seconds.

    .venv/bin/python -m bench.keys

Prints a table; writes bench/results/keys.json. Figures are the minimum of several repeats
(the least disturbed run on a shared machine).
"""

from __future__ import annotations

import re
import timeit
import unicodedata
from collections.abc import Callable
from functools import partial

from bench.stack import machine, table, write_result
from embark.keys import KeyDeriver, canonical_text, canonical_url

TEXTS = {
    "ascii title": "Red running shoes, size 42",
    "ascii 200 chars": ("Lightweight breathable mesh running shoes with cushioned sole " * 4)[:200],
    "ascii, messy spaces": "  Red\t running \n shoes   size  42 ",
    "Latin-1 accents": "Café au lait et crème brûlée, très bon — 200 g",
    "CJK 21 chars": "\uff0c".join(["红色跑鞋", "透气网面", "缓震鞋底", "尺码四十二号"]),
    "emoji ZWJ + ZWSP": "family \U0001f468\u200d\U0001f469\u200d\U0001f467 photo\u200b frame",
}
URLS = {
    "plain URL": "https://cdn.example.com/images/products/12345/main.jpg",
    "URL with query": "https://cdn.example.com/images/p/12345.jpg?w=640&h=480&fmt=webp",
    "messy URL": "HTTP://CDN.Example.COM:443/images/./p/../p/%7e12345.jpg?w=%3d640#top",
    "IDN URL": "https://bücher.example./images/p/12345.jpg",
}
_WS = re.compile(r"\s+")


def v1_text(text: str) -> str:
    """The text rules before the invisible-character and case-folding work."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def per_call_us(fn: Callable[[], object], number: int, repeat: int = 7) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    deriver = KeyDeriver("minilm-l6", "r-0123456789abcdef", "text")
    rows: list[list[object]] = []
    result: dict[str, dict[str, float]] = {}
    for name, text in TEXTS.items():
        n = 50_000
        old = per_call_us(partial(v1_text, text), n)
        new = per_call_us(partial(canonical_text, text), n)
        fold = per_call_us(partial(canonical_text, text, fold_case=True), n)
        derive = per_call_us(partial(deriver.derive, canonical_text(text)), n)
        rows.append([name, old, new, new / old, fold, derive])
        result[name] = {"v1_us": old, "new_us": new, "fold_us": fold, "derive_us": derive}
    for name, url in URLS.items():
        n = 20_000
        new = per_call_us(partial(canonical_url, url), n)
        derive = per_call_us(partial(deriver.derive, canonical_url(url)), n)
        rows.append([name, "", new, "", "", derive])
        result[name] = {"new_us": new, "derive_us": derive}
    print(
        table(
            ["input", "v1 text µs", "now µs", "now / v1", "now, folding µs", "derive µs"],
            rows,
        )
    )
    path = write_result("keys", {"machine": machine(), "per_call_us": result})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
