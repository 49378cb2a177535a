"""The evaluation end to end on a small synthetic set: the methods on both splits for each
seed, the baselines' C chosen from the grid, the shop parts scored, the report files written."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from embark.heads.dataset import Example
from embark.heads.evaluate import BASELINE_C, evaluate, markdown_table, summary
from embark.heads.train import TrainConfig

WORDS = {"01": "horse pony mare", "64": "shoe boot sandal", "85": "phone charger cable"}


def embed(texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """A deterministic bag-of-words vector: the words' hashes as dimensions."""
    out = np.zeros((len(texts), 16), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, zlib.crc32(word.encode()) % 16] += 1.0
        out[i] /= max(1.0, float(np.linalg.norm(out[i])))
    return out


def descriptions() -> list[Example]:
    """30 descriptions a label, their words deciding it, in 5 groups a label."""
    return [
        Example(f"{WORDS[label].split()[i % 3]} item {i} of kind {i % 7}", label, f"{label}{i % 5}")
        for label in WORDS
        for i in range(30)
    ]


# 16 small fits, two PNGs: ~1 min on an idle core, 3.5 min measured on two busy shared ones.
@pytest.mark.timeout(600)
def test_evaluate_writes_one_table_and_the_report(tmp_path: Path) -> None:
    examples = descriptions()
    shop = [
        Example("Acme pony saddle brown", "01", "dev"),
        Example("Black leather boot UK 9", "64", "dev"),
        Example("USB charger 65W", "85", "report"),
        Example("Kids sandal pink 2 pack", "64", "report"),
    ]
    results = evaluate(
        examples,
        embed,
        model="m",
        config=TrainConfig(min_df=1),
        out_dir=tmp_path,
        shop=shop,
        methods=("tfidf", "head"),
        seeds=(0, 1),
        progress=False,
    )
    sets = {(r.split, r.method, r.seed, r.set) for r in results}
    assert len(sets) == len(results) == 2 * 2 * 2 * 5  # splits x methods x seeds x sets
    assert {r.c for r in results if r.method != "head"} <= set(BASELINE_C)
    assert {r.c for r in results if r.method == "head"} == {10.0}
    rows = summary(results)
    head_test = next(
        e for e in rows if (e["split"], e["method"], e["set"]) == ("random", "head", "test")
    )
    assert head_test["seeds"] == 2
    assert 0.0 <= head_test["top1_std"] <= 1.0
    assert head_test["top1"] > 0.9  # the words decide the label
    table = markdown_table(results)
    assert "| random | head |" in table
    assert "| heldout-group | tfidf |" in table
    assert "over 2 seeds" in table
    doc = json.loads((tmp_path / "results.json").read_text())
    assert len(doc["results"]) == len(results)
    assert [c["min_probability"] for c in doc["abstain_shop_report"]] == [0.0, 0.3, 0.5, 0.7, 0.9]
    for name in ("results.md", "per_class.txt", "confusion.png", "confusion-shop.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_extra_training_rows_join_every_train_part_and_no_scored_set(tmp_path: Path) -> None:
    examples = descriptions()
    # Words only the extra rows know: the shop titles are answerable through them alone.
    novel = {"01": "zorbo", "64": "quibble", "85": "fnord"}
    extra = [Example(f"{word} deluxe", label, "titles") for label, word in novel.items()]
    shop = [Example(f"{word} pack", label, "dev") for label, word in novel.items()]

    def run(extra_train: Sequence[Example]) -> float:
        results = evaluate(
            examples,
            embed,
            model="m",
            config=TrainConfig(min_df=1),
            out_dir=tmp_path,
            shop=shop,
            extra_train=extra_train,
            methods=("tfidf",),
            seeds=(0,),
            progress=False,
        )
        assert len(results) == 2 * 4  # splits x (val, test, test-short, shop-dev)
        dev = [r.scores.top1 for r in results if r.set == "shop-dev"]
        return min(dev)

    assert run(()) <= 1 / 3  # unknown words: one answer for all three
    assert run(extra) == 1.0
    assert json.loads((tmp_path / "results.json").read_text())["extra_train"] == 3
