"""Duplicate-detection quality of `embark dedupe`'s rule (cosine >= threshold) on labelled sets,
with the served models, in process (no server: the vectors are the ones EmbArk would store).

    .venv/bin/python -m bench.dedupe_quality --artifacts artifacts

(a) Images (EfficientNet-Lite0): real photographs shipped with scikit-image, each with six
    near-duplicates (random crop keeping 60-85% of the area, half-size resize, JPEG quality
    12, colour shift, crop + JPEG, resize + colour shift) against the other photographs.
(b) Text (MiniLM-L6): product titles (brand, product, attribute, size) with three variants
    each (two of: reordered words, abbreviations, a typo, another unit format, case) against
    distinct titles, among them hard negatives: the same product of another brand or size.

Every pair within a split is labelled duplicate (same source) or not. The threshold is chosen
on the validation split (best F1; photographs or product types of their own) and precision /
recall are reported on the test split (the other photographs or product types). Writes
bench/results/dedupe_quality.json.
"""

from __future__ import annotations

import argparse
import io
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from bench.stack import machine, table, write_result
from embark.similar.base import unit_rows

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "hubble_deep_field",
          "immunohistochemistry", "retina", "camera", "moon", "coins", "grass", "gravel",
          "brick", "cell", "clock", "page", "text")  # fmt: skip

BRANDS = ("Acme", "Nordal", "Vireo", "Kestrel", "Orbit", "Lumen")
PRODUCTS = (  # (product, attribute, two sizes)
    ("water bottle", "stainless steel", ("500 ml", "1 l")),
    ("laptop backpack", "waterproof", ("15 inch", "17 inch")),
    ("coffee beans", "arabica", ("250 g", "1 kg")),
    ("LED bulb", "E27 warm white", ("9 W", "12 W")),
    ("USB-C cable", "braided", ("1 m", "2 m")),
    ("running shoes", "men's", ("size 42", "size 45")),
    ("olive oil", "extra virgin", ("500 ml", "1 l")),
    ("notebook", "A5 dotted", ("80 sheets", "160 sheets")),
    ("yoga mat", "non-slip", ("4 mm", "8 mm")),
    ("dog food", "grain-free", ("2 kg", "12 kg")),
    ("wall paint", "matt white", ("2.5 l", "10 l")),
    ("chef knife", "forged", ("20 cm", "25 cm")),
    ("t-shirt", "organic cotton", ("size M", "size XL")),
    ("toothpaste", "whitening", ("75 ml", "125 ml")),
)
UNITS = {
    "500 ml": ("500ml", "0.5 l", "50 cl"), "1 l": ("1l", "1000 ml", "1 litre"),
    "15 inch": ('15"', "15 in", "15-inch"), "17 inch": ('17"', "17 in", "17-inch"),
    "250 g": ("250g", "0.25 kg", "250 grams"), "1 kg": ("1kg", "1000 g", "1 kilogram"),
    "9 W": ("9W", "9 watt", "9-watt"), "12 W": ("12W", "12 watt", "12-watt"),
    "1 m": ("1m", "100 cm", "1 metre"), "2 m": ("2m", "200 cm", "2 metre"),
    "size 42": ("EU 42", "sz 42", "42"), "size 45": ("EU 45", "sz 45", "45"),
    "80 sheets": ("80 pages", "80 sh.", "80-sheet"), "160 sheets": ("160 pages", "160 sh.",
                                                                    "160-sheet"),
    "4 mm": ("4mm", "0.4 cm", "4 millimetre"), "8 mm": ("8mm", "0.8 cm", "8 millimetre"),
    "2 kg": ("2kg", "2000 g", "2 kilogram"), "12 kg": ("12kg", "12000 g", "12 kilogram"),
    "2.5 l": ("2.5l", "2500 ml", "2,5 l"), "10 l": ("10l", "10000 ml", "10 litre"),
    "20 cm": ("20cm", "200 mm", "8 inch"), "25 cm": ("25cm", "250 mm", "10 inch"),
    "size M": ("M", "medium", "sz M"), "size XL": ("XL", "extra large", "sz XL"),
    "75 ml": ("75ml", "7.5 cl", "75 millilitre"), "125 ml": ("125ml", "12.5 cl",
                                                              "125 millilitre"),
}  # fmt: skip
ABBREVIATIONS = {
    "stainless steel": "SS", "waterproof": "water-proof", "extra virgin": "EV",
    "organic cotton": "org. cotton", "warm white": "WW", "grain-free": "grain free",
    "men's": "mens", "non-slip": "anti-slip", "matt white": "matte wht", "braided": "brd.",
}  # fmt: skip


# --- images -------------------------------------------------------------------------------


def photo(name: str) -> Image.Image:
    import skimage.data as skdata  # a declared dependency; its photos ship in the wheel

    arr = np.asarray(
        skdata.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skdata, name)()
    )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    return Image.fromarray(arr).convert("RGB")


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def crop(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    side = rng.uniform(0.6, 0.85) ** 0.5
    cw, ch = int(w * side), int(h * side)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch))


def resize(img: Image.Image, _: random.Random) -> Image.Image:
    return img.resize((max(1, img.width // 2), max(1, img.height // 2)))


def colour(img: Image.Image, rng: random.Random) -> Image.Image:
    arr = np.asarray(img).astype(np.float32)
    gains = np.array([rng.uniform(0.9, 1.1) for _ in range(3)], dtype=np.float32)
    return Image.fromarray(np.clip(arr * gains + rng.uniform(-12, 12), 0, 255).astype(np.uint8))


def low_jpeg(img: Image.Image, _: random.Random) -> Image.Image:
    return Image.open(io.BytesIO(jpeg(img, quality=12))).convert("RGB")


IMAGE_VARIANTS: tuple[tuple[Callable[[Image.Image, random.Random], Image.Image], ...], ...] = (
    (crop,), (resize,), (low_jpeg,), (colour,), (crop, low_jpeg), (resize, colour),
)  # fmt: skip


def image_set(seed: int) -> tuple[list[bytes], list[str]]:
    rng = random.Random(seed)
    images, groups = [], []
    for name in PHOTOS:
        original = photo(name)
        images.append(jpeg(original))
        groups.append(name)
        for steps in IMAGE_VARIANTS:
            img = original
            for step in steps:
                img = step(img, rng)
            images.append(jpeg(img))
            groups.append(name)
    return images, groups


# --- text ---------------------------------------------------------------------------------


def typo(text: str, rng: random.Random) -> str:
    words = text.split()
    candidates = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :] if rng.random() < 0.5 else w[:j] + w[j + 1 :]
    return " ".join(words)


def variant(brand: str, product: str, attribute: str, size: str, rng: random.Random) -> str:
    kinds = rng.sample(["reorder", "abbreviate", "typo", "unit", "case"], 2)
    attr = ABBREVIATIONS.get(attribute, attribute) if "abbreviate" in kinds else attribute
    unit = rng.choice(UNITS[size]) if "unit" in kinds else size
    if "reorder" in kinds:
        text = rng.choice(
            [f"{attr} {product} {unit} - {brand}", f"{product}, {attr}, {unit} ({brand})",
             f"{brand} {product} {unit} {attr}"]
        )  # fmt: skip
    else:
        text = f"{brand} {attr} {product} {unit}"
    if "typo" in kinds:
        text = typo(text, rng)
    if "case" in kinds:
        text = text.lower() if rng.random() < 0.5 else text.upper()
    return text


def text_set(seed: int) -> tuple[list[str], list[str], list[str]]:
    """Titles and their variants, each with its item (brand, product, size) and product type."""
    rng = random.Random(seed)
    texts, items, products = [], [], []
    for product, attribute, sizes in PRODUCTS:
        for brand in rng.sample(BRANDS, 3):
            for size in sizes:
                item = f"{brand}|{product}|{size}"
                texts.append(f"{brand} {attribute} {product} {size}")
                items.append(item)
                products.append(product)
                for _ in range(3):
                    texts.append(variant(brand, product, attribute, size, rng))
                    items.append(item)
                    products.append(product)
    return texts, items, products


# --- evaluation ---------------------------------------------------------------------------


def pairs(units: npt.NDArray[np.float32], groups: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Cosine and duplicate label of every unordered pair."""
    scores = units @ units.T
    g = np.asarray(groups)
    i, j = np.triu_indices(len(g), k=1)
    return scores[i, j], g[i] == g[j]


def pr(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = scores >= threshold
    tp = int(np.sum(predicted & labels))
    fp = int(np.sum(predicted & ~labels))
    fn = int(np.sum(~predicted & labels))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def evaluate(
    units: npt.NDArray[np.float32], groups: Sequence[str], split: Sequence[bool]
) -> dict[str, Any]:
    """Threshold of best F1 on the validation rows (split False), P/R on the test rows."""
    mask = np.asarray(split)
    val = pairs(units[~mask], [g for g, s in zip(groups, split, strict=True) if not s])
    test = pairs(units[mask], [g for g, s in zip(groups, split, strict=True) if s])
    grid = np.round(np.arange(0.30, 0.995, 0.005), 3)
    best = max(grid, key=lambda t: (pr(*val, t)["f1"], t))
    return {
        "threshold": float(best),
        "validation": pr(*val, best),
        "test": pr(*test, best),
        "pairs": {"validation": int(val[1].size), "test": int(test[1].size),
                  "duplicate_pairs_test": int(test[1].sum())},
    }  # fmt: skip


def false_positives(
    units: npt.NDArray[np.float32], items: Sequence[str], split: Sequence[bool], threshold: float
) -> dict[str, int]:
    """Test pairs wrongly called duplicates, by what tells the two items apart: only the size,
    only the brand, both, or the product."""
    rows = [i for i, s in enumerate(split) if s]
    scores = units[rows] @ units[rows].T
    out = {"size": 0, "brand": 0, "brand+size": 0, "product": 0}
    for a in range(len(rows)):
        for b in range(a + 1, len(rows)):
            x, y = items[rows[a]].split("|"), items[rows[b]].split("|")
            if x == y or scores[a, b] < threshold:
                continue
            if x[1] != y[1]:
                out["product"] += 1
            elif x[0] != y[0] and x[2] != y[2]:
                out["brand+size"] += 1
            else:
                out["brand" if x[0] != y[0] else "size"] += 1
    return out


def embed(artifacts: Path, model: str, raw: Sequence[Any]) -> npt.NDArray[np.float32]:
    from retina.artifacts.build import load_encoders
    from retina.settings import RetinaSettings

    encoder = load_encoders(artifacts, RetinaSettings(artifacts_dir=artifacts, models=(model,)))[
        model
    ]
    out = [
        encoder.infer([encoder.preprocess(r) for r in raw[i : i + 16]])
        for i in range(0, len(raw), 16)
    ]  # type: ignore[misc]
    return unit_rows(np.concatenate(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine()}

    images, photo_of = image_set(seed=3)
    image_units = embed(args.artifacts, "efficientnet-lite0", images)
    test_photos = set(PHOTOS[1::2])
    result["images"] = evaluate(image_units, photo_of, [p in test_photos for p in photo_of])
    result["images"]["photos"] = {"validation": list(PHOTOS[::2]), "test": list(PHOTOS[1::2])}

    texts, items, products = text_set(seed=5)
    text_units = embed(args.artifacts, "minilm-l6", texts)
    test_products = {p for p, _, _ in PRODUCTS[1::2]}
    result["text"] = evaluate(text_units, items, [p in test_products for p in products])
    result["text"]["test_false_positives_by_difference"] = false_positives(
        text_units, items, [p in test_products for p in products], result["text"]["threshold"]
    )
    result["text"]["examples"] = texts[:8]
    result["text"]["titles"] = len(texts)

    rows = []
    for name, model in (("images", "efficientnet-lite0"), ("text", "minilm-l6")):
        r = result[name]
        rows.append([name, model, r["threshold"], r["test"]["precision"], r["test"]["recall"],
                     r["test"]["f1"], r["pairs"]["test"]])  # fmt: skip
    print(
        table(["set", "model", "threshold (val)", "precision", "recall", "F1", "test pairs"], rows)
    )
    print(f"wrote {write_result('dedupe_quality', result)}")


if __name__ == "__main__":
    main()
