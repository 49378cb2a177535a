"""`embark dedupe` and FindSimilar end to end, as a user runs them: `embark dev` on a fresh
embedded archive with the real models, a product feed of titles with near-duplicates (unit
formats, word order, case, an exact repeat) and distinct products; dedupe through that EmbArk
(read-through fills the archive) to JSON and CSV; then FindSimilar over what was stored, its
scores checked against numpy's cosine of the vectors EmbArk serves."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from embark.cli import main
from embark.client import EmbarkClient
from embark_api.v1 import embark_pb2
from tests.e2e.test_categorize import embark_dev

pytestmark = pytest.mark.e2e

BOTTLE = [
    "Stainless steel water bottle 750 ml",
    "stainless steel water bottle 750ml",
    "Water bottle, stainless steel, 750 ml",
]
MOUSE = ["Wireless optical mouse, black", "black wireless optical mouse"]
DISTINCT = [
    "Ceramic coffee mug 300 ml",
    "Yoga mat 6 mm non-slip",
    "LED desk lamp with USB charging port",
    "Children's winter boots size 30",
]
FEED = [
    BOTTLE[0],
    DISTINCT[0],
    MOUSE[0],
    BOTTLE[1],
    DISTINCT[1],
    DISTINCT[2],
    MOUSE[1],
    BOTTLE[2],
    DISTINCT[3],
    DISTINCT[0],
]  # fmt: skip  (the last line repeats the second)


def test_dedupe_then_find_similar(
    built_artifacts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = tmp_path / "feed.txt"
    feed.write_text("\n".join(FEED) + "\n\n", encoding="utf-8")
    out_json, out_csv = tmp_path / "dupes.json", tmp_path / "dupes.csv"
    with embark_dev(built_artifacts, tmp_path / "data", tmp_path / "heads") as target:
        args = ["dedupe", str(feed), "--model", "minilm-l6", "--threshold", "0.8"]
        args += ["--target", target, "--no-progress"]
        assert main([*args, "--format", "json", "--out", str(out_json)]) == 0
        assert main([*args, "--out", str(out_csv)]) == 0  # all HIT now: from the archive
        assert main([*args[:5], "1.5", *args[6:]]) == 2
        assert "threshold 1.5" in capsys.readouterr().err

        with EmbarkClient(target, timeout_s=30) as client:
            similar = client.find_similar("minilm-l6", text=BOTTLE[1], top_k=3)
            query = client.get("minilm-l6", text=BOTTLE[1]).array()
            served = {
                n.key: client.get("minilm-l6", text=n.input.text).array()
                for n in similar.neighbours
            }

    report = json.loads(out_json.read_text(encoding="utf-8"))
    clusters = [sorted(m["input"] for m in c) for c in report["clusters"]]
    assert sorted(BOTTLE) in clusters
    assert sorted(MOUSE) in clusters
    assert [DISTINCT[0], DISTINCT[0]] in clusters  # the repeated line
    assert len(clusters) == 3  # no distinct product joined any cluster
    assert report["unembedded"] == []
    assert all(-1 <= m["score"] <= 1.0001 for c in report["clusters"] for m in c)

    rows = list(csv.DictReader(io.StringIO(out_csv.read_text(encoding="utf-8"))))
    assert len(rows) == len(BOTTLE) + len(MOUSE) + 2
    assert {int(r["line"]) for r in rows if r["input"] in MOUSE} == {3, 7}

    assert similar.status == embark_pb2.HIT
    assert similar.neighbours[0].input.text in {BOTTLE[0].lower(), *BOTTLE}
    assert all(n.key != similar.key for n in similar.neighbours)
    for n in similar.neighbours:
        v = served[n.key]
        cosine = float(query @ v / np.linalg.norm(query) / np.linalg.norm(v))
        assert n.score == pytest.approx(cosine, abs=1e-5)
