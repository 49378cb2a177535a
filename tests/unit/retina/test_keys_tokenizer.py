"""Text canonicalisation against the served text tokenizer: what the cache key merges, the model
could not tell apart anyway.

The vector under a key is the encoding of the canonical text, so a canonical form is right for a
model when the model's tokenizer gives the canonical and the raw text the same token ids. The
MiniLM tokenizer (all-MiniLM-L6-v2's, also used by paraphrase-MiniLM-L3-v2) lowercases, so both
models may set ``ModelSpec.fold_case``; this proves that folding (and dropping invisible
characters) changes nothing they see.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from embark.catalog import Catalog
from embark.keys import canonical_text
from retina.encoders.text import load_tokenizer

# Characters canonicalisation treats specially, mixed into arbitrary text.
SPECIAL = (
    "\u00ad\u061c\u200b\u200c\u200d\u200e\u200f\u202a\u202e\u2060\u2066\u2069\ufeff"
    "\u00a0\u2003\u3000\u2028 \t\n"
    "\u0301\u0307\u00e9\u212a\u0130\u03a3\u00df\ufb01"
    "\U0001f468\ufe0f\u0645\u0915\u094d\U000e0067\u034f\u180e"
)
# C0/C1 control characters are left out: the tokenizer deletes them, while canonical_text
# keeps them, or folds to a space the few Python counts as whitespace (U+001C-U+001F, U+0085),
# as key scheme v1 did. A key there is merely finer than the model needs.
TEXT = st.text(
    alphabet=st.one_of(st.characters(exclude_categories=("Cs", "Cc")), st.sampled_from(SPECIAL)),
    max_size=60,
)


@pytest.fixture(scope="module")
def tokenizer_json(built_artifacts: Path) -> Path:
    """The tokenizer minilm-l6 is served with, from its built artifact."""
    entry = next(
        m
        for m in json.loads((built_artifacts / "catalog.json").read_text())["models"]
        if m["name"] == "minilm-l6"
    )
    return built_artifacts / entry["artifact_dir"] / "tokenizer.json"


@pytest.fixture(scope="module")
def tokenizer(tokenizer_json: Path) -> Tokenizer:
    return load_tokenizer(tokenizer_json, max_tokens=256)


def ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text).ids)


def test_the_minilm_tokenizer_lowercases_and_the_catalog_says_so(
    tokenizer_json: Path, built_artifacts: Path
) -> None:
    normalizer = json.loads(tokenizer_json.read_text())["normalizer"]
    assert normalizer["type"] == "BertNormalizer"
    assert normalizer["lowercase"] is True
    assert Catalog.load(built_artifacts / "catalog.json").require("minilm-l6").fold_case


@settings(deadline=None, max_examples=300)
@given(text=TEXT, fold_case=st.booleans())
def test_canonical_text_tokenizes_as_the_raw_text(
    tokenizer: Tokenizer, text: str, fold_case: bool
) -> None:
    assert ids(tokenizer, canonical_text(text, fold_case=fold_case)) == ids(tokenizer, text)


@pytest.mark.parametrize(
    ("raw", "lowercase"),
    [
        ("Red\u200bShoes", "redshoes"),
        ("\u039f\u0394\u039f\u03a3", "\u03bf\u03b4\u03bf\u03c3"),  # capital sigma: small sigma
        ("Stra\u00dfe", "stra\u00dfe"),
        ("\u0130stanbul", "i\u0307stanbul"),
    ],
)
def test_folding_matches_what_the_tokenizer_reads(
    tokenizer: Tokenizer, raw: str, lowercase: str
) -> None:
    assert canonical_text(raw, fold_case=True) == lowercase
    assert ids(tokenizer, lowercase) == ids(tokenizer, raw)


@pytest.mark.parametrize(
    ("raw", "wrong"),
    [
        ("Stra\u00dfe", "strasse"),  # str.casefold: ß -> ss
        ("\u039f\u0394\u039f\u03a3", "\u03bf\u03b4\u03bf\u03c2"),  # str.lower: word-final sigma
    ],
)
def test_casefold_or_plain_lower_would_merge_what_the_model_tells_apart(
    tokenizer: Tokenizer, raw: str, wrong: str
) -> None:
    assert ids(tokenizer, wrong) != ids(tokenizer, raw)
    assert canonical_text(raw, fold_case=True) != wrong
