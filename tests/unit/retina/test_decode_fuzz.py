"""The image decoder on hostile bytes: thousands of randomly mutated, truncated and spliced
images in 12 format/mode combinations. Every one must end decoded or as a clean ``ItemFailed``
(``not_an_image`` / ``too_many_pixels`` / ``empty_input``); no other exception type may escape,
since one would fail a whole Embed call. ``decode_image`` catches only the exception types Pillow
documents, and opens only the formats the fetcher accepts: this test is what keeps that so."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from retina.encoders.image import decode_image
from retina.errors import ItemFailed

COMBOS = [
    ("JPEG", "RGB"),
    ("JPEG", "L"),
    ("JPEG", "CMYK"),
    ("PNG", "RGB"),
    ("PNG", "RGBA"),
    ("PNG", "P"),
    ("PNG", "I;16"),
    ("GIF", "P"),
    ("BMP", "RGB"),
    ("BMP", "1"),
    ("TIFF", "RGB"),
    ("TIFF", "I;16"),
]
PER_COMBO = 200  # 2,400 mutants in all; about 10 s on two cores
ALLOWED = {"not_an_image", "too_many_pixels", "empty_input"}


def seed_image(fmt: str, mode: str, rng: np.random.Generator) -> bytes:
    pixels = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    img = Image.fromarray(pixels, "RGB").convert(mode)
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def mutate(data: bytes, others: bytes, rnd: random.Random) -> bytes:
    b = bytearray(data)
    match rnd.randrange(5):
        case 0:  # flip bytes, mostly in the header where parsers branch
            for _ in range(rnd.randint(1, 16)):
                i = rnd.randrange(min(len(b), 256) if rnd.random() < 0.7 else len(b))
                b[i] = rnd.randrange(256)
        case 1:  # truncate
            del b[rnd.randrange(1, len(b)) :]
        case 2:  # splice another image's tail in
            cut, other_cut = rnd.randrange(len(b)), rnd.randrange(len(others))
            b = b[:cut] + bytearray(others[other_cut:])
        case 3:  # insert random bytes
            i = rnd.randrange(len(b))
            b[i:i] = rnd.randbytes(rnd.randint(1, 64))
        case _:  # huge dimensions in a plausible header: pixel bombs
            for i in range(0, min(len(b), 64) - 3):
                if rnd.random() < 0.05:
                    b[i : i + 4] = (0xFFFF).to_bytes(2, "big") * 2
    return bytes(b)


def outcome(data: bytes) -> str:
    """ "decoded", or the reason of the ItemFailed; any other exception fails the test."""
    try:
        img = decode_image(data, max_pixels=4_000_000)
    except ItemFailed as exc:
        return exc.reason
    return "decoded" if img.mode == "RGB" else f"mode {img.mode}"


# Pillow reports tags it skips in a malformed TIFF as a UserWarning and goes on; outside the
# test suite (where warnings are errors) that is a log line, not a failure.
@pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")
@pytest.mark.parametrize(("fmt", "mode"), COMBOS, ids=[f"{f}-{m}" for f, m in COMBOS])
def test_mutated_images_decode_or_fail_cleanly(fmt: str, mode: str) -> None:
    rng = np.random.default_rng(7)
    rnd = random.Random(f"{fmt}-{mode}")
    seed = seed_image(fmt, mode, rng)
    other = seed_image(*COMBOS[rnd.randrange(len(COMBOS))], rng)
    outcomes = [outcome(mutate(seed, other, rnd)) for _ in range(PER_COMBO)]
    assert set(outcomes) <= ALLOWED | {"decoded"}
    # The mutations reach both outcomes, so the test exercises the error paths at all.
    assert "not_an_image" in outcomes


def test_formats_we_do_not_serve_are_not_parsed() -> None:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="ICO")
    with pytest.raises(ItemFailed) as info:
        decode_image(out.getvalue(), max_pixels=1_000_000)
    assert info.value.reason == "not_an_image"
