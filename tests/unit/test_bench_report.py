"""bench/report.py: a registered section's table is written between its markers with the line
naming its JSON and load; a missing JSON or missing markers leave the doc as it was, and say so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import report


def _doc(marker: str) -> str:
    return f"# t\n\nbefore\n<!-- bench:{marker} -->\nold table\n<!-- /bench:{marker} -->\nafter\n"


def test_a_section_is_regenerated_between_its_markers(tmp_path: Path) -> None:
    @report.section("test-only", "test_only.json")
    def render(r: dict[str, Any]) -> str:
        return f"| x |\n|---|\n| {r['x']} |"

    try:
        (tmp_path / "test_only.json").write_text(
            json.dumps({"x": 7, "machine": {"cpus": 2, "loadavg_at_start": [1.5, 2, 3]}})
        )
        new, notes = report.render(_doc("test-only"), tmp_path)
        assert "| 7 |" in new
        assert "old table" not in new
        assert "2 cores, load average (1/5/15 min) 1.5/2/3 at start" in new
        assert new.startswith("# t\n\nbefore\n<!-- bench:test-only -->\n")
        assert new.endswith("<!-- /bench:test-only -->\nafter\n")
        # Regenerating is idempotent.
        assert report.render(new, tmp_path)[0] == new
        assert not [n for n in notes if n.startswith("test-only")]
    finally:
        del report.SECTIONS["test-only"]


def test_a_missing_result_leaves_the_section_and_says_so(tmp_path: Path) -> None:
    doc = _doc("hotpath-a")
    new, notes = report.render(doc, tmp_path)
    assert new == doc
    assert "hotpath-a: hotpath.json missing, section left as it was" in notes
    assert "hotpath-b: no markers in the doc" in notes
