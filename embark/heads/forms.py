"""Training forms that look like shop titles, made from customs-nomenclature descriptions.

CN2023 describes goods the way a tariff does ("Footwear with outer soles of rubber or plastics
and uppers of leather (excl. covering the ankle ...)"); shops write "Men's leather sneakers,
black, UK 9, 2 pack". A head trained only on the first meets the second as a domain shift
(68% top-1 on shop titles against 95% on the CN's own split). Each description is therefore
also trained on forms closer to a title:

    plain     the legal phrasing stripped: parenthesised exclusions, "n.e.s.", "whether or not
              ...", "of a kind used for ...", weight and strength thresholds, a leading "Other"
    noun      the head noun phrase: the first clause of ``plain``, at most six words
    noisy     ``noun`` wrapped in shop-title attributes drawn from fixed lists: a size, a colour,
              a pack count, a quantity with its unit, a model number, a marketing word

The attribute lists are generic (no chapter-specific words), so the head learns that they carry
no label, not which label they carry. Randomness is seeded by the text itself: the same
description always gives the same forms, so their embeddings stay cached.

This is a *training* transformation: evaluation never scores texts made by it (the CN "short"
metric in ``evaluate`` uses an unrelated word sample, and the shop-title set is written by hand).
"""

from __future__ import annotations

import hashlib
import random
import re

_PARENS = re.compile(r"\s*\([^()]*\)")
_LEGAL = re.compile(
    r"\b(?:n\.e\.s|n\.e\.c|not elsewhere specified|not elsewhere included)\.?"
    r"|,?\s*\b(?:whether or not|of a kind used|of a kind which|other than|excl\.|incl\.|"
    r"not containing|containing by weight|put up for)\b[^,;]*"
    r"|,?\s*\b(?:of a weight|of a length|of a width|of a thickness|with a content|of a capacity|"
    r"of an alcoholic strength|by weight|of a power|of a cylinder capacity)\b[^,;]*"
    r"|[<>]=?\s*[\d.,]+\s*\S*",
    re.IGNORECASE,
)
_LEADING_OTHER = re.compile(r"^(?:other|others)\b[\s,:]*", re.IGNORECASE)
_CLAUSE = re.compile(r"\s*[,;:]\s*")
_SPACES = re.compile(r"\s+")

_SIZES = ("S", "M", "L", "XL", "Size 8", "Size 42", "UK 9", "EU 38", "One Size", "Large", "Small")
_COLOURS = ("Black", "White", "Grey", "Navy", "Red", "Blue", "Green", "Pink", "Silver", "Natural")
_COUNTS = ("Pack of 2", "Pack of 6", "12 Pack", "Set of 4", "x10", "3 Pcs", "Box of 50", "Pair")
_AMOUNTS = ("500g", "1kg", "250ml", "1L", "75cl", "2.5kg", "100 ml", "30cm", "2m", "5L", "40W")
_MODELS = ("X200", "Pro 3", "MK2", "A54", "Series 7", "V2", "2026 Edition", "GT-500", "No. 5")
_MARKETING = ("Premium", "New", "Original", "Classic", "Eco", "Deluxe", "Best Seller", "Value")
_BRANDS = ("Acme", "Nordvik", "Brightline", "Kestrel", "Maison Rey", "Tokuda", "Helio", "Vantor")
_ATTRIBUTES = (_SIZES, _COLOURS, _COUNTS, _AMOUNTS, _MODELS, _MARKETING)


def _tidy(text: str) -> str:
    text = _SPACES.sub(" ", text).strip(" ,;:-")
    return text[:1].upper() + text[1:] if text else text


def plain_form(text: str) -> str:
    """``text`` without the legal phrasing (see the module docstring)."""
    bare = _PARENS.sub("", text)
    bare = _LEGAL.sub("", bare)
    bare = _LEADING_OTHER.sub("", bare.strip())
    return _tidy(_CLAUSE.sub(", ", bare))


def noun_form(text: str, max_words: int = 6) -> str:
    """The first clause of ``plain_form(text)`` (with the next ones while it is one word, as in
    "Plates, sheets, film ..."), at most ``max_words`` words."""
    words: list[str] = []
    for clause in _CLAUSE.split(plain_form(text)):
        words += clause.split()
        if len(words) >= 2:
            break
    return _tidy(" ".join(words[:max_words]))


def noisy_form(text: str, rng: random.Random) -> str:
    """``noun_form(text)`` with a brand-like prefix (half the time) and one or two attributes."""
    words = [noun_form(text)]
    if rng.random() < 0.5:
        words.insert(0, rng.choice(_BRANDS))
    words.extend(rng.choice(group) for group in rng.sample(_ATTRIBUTES, k=rng.choice((1, 2))))
    return " ".join(words)


def title_forms(text: str, noisy: int = 1) -> list[str]:
    """The plain, noun and ``noisy`` noisy forms of ``text``: only those that differ from the
    text and from each other, none shorter than three characters."""
    seed = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")
    rng = random.Random(seed)
    out: list[str] = []
    candidates = [plain_form(text), noun_form(text)]
    if len(candidates[1]) >= 3:
        candidates += [noisy_form(text, rng) for _ in range(noisy)]
    for form in candidates:
        if len(form) >= 3 and form != text and form not in out:
            out.append(form)
    return out
