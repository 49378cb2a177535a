"""``retina models bench`` on the real built catalog: every model is timed as served, and the
table says how each runs a batch (padded, or one by one for the batch-coupled int8 text
models), with the batch's throughput over one-by-one. Timings are reported, never asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from retina.artifacts.timing import bench_catalog
from retina.cli import main
from retina.settings import RetinaSettings


@pytest.mark.slow
def test_bench_says_how_each_model_batches(built_artifacts: Path) -> None:
    settings = RetinaSettings(
        artifacts_dir=built_artifacts, models=("minilm-l6", "efficientnet-lite0")
    )
    rows = {r.name: r for r in bench_catalog(built_artifacts, settings, runs=2)}
    assert sorted(rows) == ["efficientnet-lite0", "minilm-l6"]
    # Dynamic int8 text couples the rows of a padded batch: it runs them one by one.
    assert rows["minilm-l6"].batches == "one by one"
    assert rows["efficientnet-lite0"].batches == "padded"
    for r in rows.values():
        assert r.ms_b1 > 0
        assert r.items_per_s > 0
        assert r.batch_gain == pytest.approx(r.items_per_s * r.ms_b1 / 1e3)


@pytest.mark.slow
def test_bench_command_prints_the_table(
    built_artifacts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(
        [
            "models",
            "bench",
            "--artifacts",
            str(built_artifacts),
            "--only",
            "minilm-l3",
            "--runs",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert "x one by one" in out
    assert "minilm-l3" in out
    assert "one by one" in out.splitlines()[1]
