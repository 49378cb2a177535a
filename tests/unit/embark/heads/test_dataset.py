"""The CN2023 loader on a small synthetic file of the same format (the real data is AGPL-3
packaged and never committed), the chapter -> section table, and plain example files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from embark.heads.dataset import (
    CN2023_MEMBER,
    CN2023_PACKAGE,
    CN2023_VERSION,
    DatasetError,
    cn_examples,
    load_cn2023,
    load_examples,
    parse_cn_csv,
    section_of,
)

SAMPLE = (
    "code;description;unit_id\n"
    '01012100;"Pure-bred breeding horses";intrastat_unit_pce\n'
    '01022110;"Pure-bred breeding heifers ""female bovines that have never calved""";'
    "intrastat_unit_pce\n"
    '03032900;"Frozen trout, weighing more than 1,2\xa0kg each";\n'
    '22083011;"Blended malt Scotch whisky, in containers holding <= 2\xa0l";\n'
    '85171300;"Smartphones for wireless networks";intrastat_unit_p_st\n'
    '99999999;"Caf\xe9 goods, special provisions";\n'
).encode("latin-1")


def test_parse_reads_latin1_quotes_and_non_breaking_spaces() -> None:
    entries = parse_cn_csv(SAMPLE)
    assert [e.code for e in entries][:2] == ["01012100", "01022110"]
    assert entries[1].description == (
        'Pure-bred breeding heifers "female bovines that have never calved"'
    )
    assert entries[2].description == "Frozen trout, weighing more than 1,2 kg each"
    assert entries[5].description == "Café goods, special provisions"
    assert [(e.chapter, e.heading, e.section) for e in entries[:3]] == [
        ("01", "0101", "I"),
        ("01", "0102", "I"),
        ("03", "0303", "I"),
    ]
    assert [e.section for e in entries[3:]] == ["IV", "XVI", "XXII"]


def test_bad_codes_and_columns_are_refused() -> None:
    with pytest.raises(DatasetError, match="bad CN code"):
        parse_cn_csv(b'code;description\n0101;"short code"\n')
    with pytest.raises(DatasetError, match="expected columns"):
        parse_cn_csv(b"a;b\n1;2\n")


def test_every_chapter_has_one_of_22_sections() -> None:
    chapters = [c for c in range(1, 98) if c != 77] + [99]
    sections = {section_of(c) for c in chapters}
    assert len(sections) == 22
    assert (section_of("15"), section_of(71), section_of(85), section_of(93)) == (
        "III",
        "XIV",
        "XVI",
        "XIX",
    )
    with pytest.raises(DatasetError):
        section_of(100)


def test_examples_by_chapter_or_section() -> None:
    entries = parse_cn_csv(SAMPLE)
    assert cn_examples(entries)[4].label == "85"
    assert cn_examples(entries, "section")[4].label == "XVI"
    assert cn_examples(entries)[4].group == "8517"


def test_load_reads_the_wheel_from_the_cache_without_downloading(tmp_path: Path) -> None:
    wheel = tmp_path / f"{CN2023_PACKAGE.replace('-', '_')}-{CN2023_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"odoo/addons/x/{CN2023_MEMBER}", SAMPLE)
    assert len(load_cn2023(tmp_path)) == 6
    assert load_examples("cn2023", label="section", cache_dir=tmp_path)[0].label == "I"


def test_plain_files(tmp_path: Path) -> None:
    csv_file = tmp_path / "data.csv"
    csv_file.write_text("text,label,group\nred  shoes,footwear,g1\nblue hat,headwear,g2\n")
    examples = load_examples(str(csv_file))
    assert [(e.text, e.label, e.group) for e in examples] == [
        ("red shoes", "footwear", "g1"),
        ("blue hat", "headwear", "g2"),
    ]
    tsv = tmp_path / "data.tsv"
    tsv.write_text("footwear\tred shoes\n\nheadwear\tblue hat\n")
    assert [e.label for e in load_examples(str(tsv))] == ["footwear", "headwear"]
    bad = tmp_path / "bad.txt"
    bad.write_text("no tab here\n")
    with pytest.raises(DatasetError, match="label<TAB>text"):
        load_examples(str(bad))


def test_training_titles_are_labelled_chapters_and_disjoint_from_the_evaluation_titles() -> None:
    from embark.heads.dataset import load_shop_titles, load_train_titles
    from embark.keys import canonical_text

    titles = load_train_titles()
    assert len(titles) >= 1000
    chapters = {e.label for e in titles}
    assert len(chapters) >= 90
    assert all(len(c) == 2 and c.isdigit() and c != "77" and 1 <= int(c) <= 97 for c in chapters)
    assert {e.group for e in titles} == {"titles"}
    keys = [canonical_text(e.text) for e in titles]
    assert len(set(keys)) == len(keys)
    # Never an evaluation title (the near-twin check needs the model: bench.heads_titles).
    assert not set(keys) & {canonical_text(e.text) for e in load_shop_titles()}


def test_training_titles_take_section_labels_and_refuse_others() -> None:
    from embark.heads.dataset import load_train_titles

    chapters = load_train_titles()
    sections = load_train_titles(label="section")
    assert [section_of(e.label) for e in chapters] == [e.label for e in sections]
    with pytest.raises(DatasetError, match="chapter or section"):
        load_train_titles(label="heading")
