"""Title-like training forms: legal phrasing goes, the noun phrase stays, attributes are added
deterministically (the same text always gives the same forms, so their embeddings cache)."""

from __future__ import annotations

from embark.heads.forms import noun_form, plain_form, title_forms


def test_plain_form_strips_legal_phrasing() -> None:
    text = (
        "Live cattle of a weight <= 80 kg (excl. pure-bred for breeding), whether or not"
        " castrated, for slaughter"
    )
    assert plain_form(text) == "Live cattle, for slaughter"
    assert plain_form("Other footwear, n.e.s.") == "Footwear"
    assert plain_form("Tubes of a kind used in boilers, of iron") == "Tubes, of iron"


def test_noun_form_keeps_the_first_phrase() -> None:
    assert noun_form("Plates, sheets, film and foil, of polythene") == "Plates sheets"
    long = "Machines for the reception, conversion and transmission or regeneration of voice"
    assert noun_form(long) == "Machines for the reception"


def test_title_forms_are_deterministic_and_distinct() -> None:
    text = "Men's or boys' trousers and breeches of cotton (excl. knitted or crocheted)"
    forms = title_forms(text)
    assert forms == title_forms(text)
    assert len(forms) == len(set(forms)) == 3
    assert text not in forms
    plain, noun, noisy = forms
    assert plain == "Men's or boys' trousers and breeches of cotton"
    assert noun == "Men's or boys' trousers and breeches"
    assert noun in noisy
    assert noisy != noun
    assert title_forms("Safrole")[0].startswith(("Safrole", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    assert all(len(f) >= 3 for f in title_forms("Ox"))
