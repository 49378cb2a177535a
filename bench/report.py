"""docs/performance.md's tables, regenerated from bench/results/*.json (`make bench-report`;
`make bench` runs the benchmarks first).

Each generated table sits between two markers in the doc:

    <!-- bench:hotpath-a -->
    ...generated, overwritten on every run...
    <!-- /bench:hotpath-a -->

and is produced by one function registered with ``@section(marker, result_file)``: it gets the
parsed JSON and returns Markdown. Under every table a line says which file it came from and
the machine's cores and load average during that run. A section whose JSON is missing is left
as it is (and reported); a marker missing from the doc is reported too, never invented.

Adding a benchmark's table is a few lines here, beside the others:

    @section("encoders", "encoders.json")
    def encoders(r: dict[str, Any]) -> str:
        return table(["model", "ms"], [[m["name"], m["p50_ms"]] for m in r["models"]])

plus the two marker lines where the table belongs in docs/performance.md (or pass
``doc=ROOT / "docs" / "similarity.md"`` to ``section`` for a table on another page).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.stack import RESULTS, ROOT, table

DOC = ROOT / "docs" / "performance.md"

Render = Callable[[dict[str, Any]], str]
#: marker -> (result file, render, the doc that carries the markers)
SECTIONS: dict[str, tuple[str, Render, Path]] = {}


def section(marker: str, result_file: str, doc: Path = DOC) -> Callable[[Render], Render]:
    """Register ``render`` as the generator of the table between ``marker``'s comments in
    ``doc`` (docs/performance.md unless another page carries the table)."""

    def register(render: Render) -> Render:
        SECTIONS[marker] = (result_file, render, doc)
        return render

    return register


def provenance(result_file: str, r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    start = m.get("loadavg_at_start") or [m.get("loadavg_1m_at_start", "?")]
    end = m.get("loadavg_at_end")
    load = "/".join(str(x) for x in start) + (
        f" at start, {'/'.join(str(x) for x in end)} at end" if end else " at start"
    )
    return (
        f"*From `bench/results/{result_file}`: {m.get('cpus', '?')} cores, "
        f"load average (1/5/15 min) {load}.*"
    )


def render(doc: str, results: Path = RESULTS, path: Path = DOC) -> tuple[str, list[str]]:
    """``doc`` (the text of ``path``) with every section registered for ``path`` regenerated;
    and what was skipped, and why."""
    notes: list[str] = []
    for marker, (result_file, make, where) in SECTIONS.items():
        if where != path:
            continue
        pattern = re.compile(
            rf"(<!-- bench:{re.escape(marker)} -->\n).*?(<!-- /bench:{re.escape(marker)} -->)",
            re.S,
        )
        if not pattern.search(doc):
            notes.append(f"{marker}: no markers in the doc")
            continue
        source = results / result_file
        if not source.exists():
            notes.append(f"{marker}: {source.name} missing, section left as it was")
            continue
        r = json.loads(source.read_text())
        body = f"{make(r).rstrip()}\n\n{provenance(result_file, r)}\n"
        doc = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), doc)
    return doc, notes


def _f(v: Any, digits: int = 2) -> Any:
    """Percent-free numbers for table(): NaN shows as '-'."""
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return v


def paths(rows: dict[str, Any]) -> list[str]:
    """The hit-path rows in reading order (the JSON is written with sorted keys): the LRU
    rows (hot-1, hot-N), then cold, then compute."""
    return sorted(rows, key=lambda n: (n == "compute", n.startswith("cold"), n))


# --- the sections -----------------------------------------------------------------------------


@section("hotpath-a", "hotpath.json")
def hotpath_a(r: dict[str, Any]) -> str:
    a = r["a"]
    compute = a["compute"]["throughput"]
    rows = []
    for name in paths(a):
        lat, thr = a[name]["latency"], a[name]["throughput"]
        rows.append(
            [
                name,
                lat["p50_ms"],
                lat["p99_ms"],
                thr["rps"],
                thr["rps"] / compute["rps"],
                thr["calls_per_server_cpu_s"],
                thr["calls_per_server_cpu_s"] / compute["calls_per_server_cpu_s"],
                thr["concurrency"],
                thr["p99_ms"],
                f"{thr['server_cpu_share']:.0%}",
                f"{thr['ghz_cpu_share']:.0%}",
                thr["errors"],
            ]
        )
    return table(
        [
            "path",
            "p50 ms (1 in flight)",
            "p99 ms",
            "calls/s",
            "x compute",
            "calls per server CPU-s",
            "x compute (per CPU-s)",
            "in flight",
            "p99 ms loaded",
            "server CPU",
            "ghz CPU",
            "errors",
        ],
        rows,
    )


@section("hotpath-b", "hotpath.json")
def hotpath_b(r: dict[str, Any]) -> str:
    b = r["b"]
    compute = b["compute"]["vectors_per_s"]
    return table(
        [
            "path",
            "batch",
            "vectors/s",
            "x compute",
            "call p50 ms",
            "call p99 ms",
            "in flight",
            "server CPU",
            "ghz CPU",
        ],
        [
            [
                name,
                x["batch"],
                x["vectors_per_s"],
                x["vectors_per_s"] / compute,
                x["p50_ms"],
                x["p99_ms"],
                x["concurrency"],
                f"{x['server_cpu_share']:.0%}",
                f"{x['ghz_cpu_share']:.0%}",
            ]
            for name, x in ((n, b[n]) for n in paths(b))
        ],
    )


@section("pipeline-idle", "pipeline.json")
def pipeline_idle(r: dict[str, Any]) -> str:
    m, s = r["idle"]["miss_to_stored"], r["idle"]["retina_single_call"]
    rows = [
        ["miss -> stored", m["p50_ms"], m["p90_ms"], m["p99_ms"], _f(m.get("max_ms", math.nan))],
        [
            "one Retina Embed call",
            s["p50_ms"],
            s["p90_ms"],
            s["p99_ms"],
            _f(s.get("max_ms", math.nan)),
        ],
    ]
    for stage, v in (m.get("stages") or {}).items():
        rows.append(
            [
                f"  of which: {stage}",
                v["p50_ms"],
                v["p90_ms"],
                v["p99_ms"],
                _f(v.get("max_ms", math.nan)),
            ]
        )
    return table(["path", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows)


@section("miss-tail", "pipeline-idle.json")
def miss_tail(r: dict[str, Any]) -> str:
    stages = r["idle"].get("kfc_stages")
    if not stages:
        return pipeline_idle(r)
    kfc = table(
        ["KFC's histograms over the run", "misses", "p50 ms <=", "p90 ms <=", "p99 ms <="],
        [
            [k, v["count"], v["p50_ms_at_most"], v["p90_ms_at_most"], v["p99_ms_at_most"]]
            for k, v in stages.items()
        ],
    )
    return f"{pipeline_idle(r)}\n\n{kfc}"


@section("pipeline-sustained", "pipeline.json")
def pipeline_sustained(r: dict[str, Any]) -> str:
    raw, kfc = r["retina_raw"], r["kfc"]
    ratio = kfc["items_per_s"] / raw["items_per_s"]
    return table(
        ["path", "texts", "seconds", "texts/s", "ratio"],
        [
            ["Retina alone (Embed x 32)", raw["items"], raw["seconds"], raw["items_per_s"], 1.0],
            ["Kafka -> KFC -> Retina -> Cassandra", kfc["jobs"], kfc["seconds"],
             kfc["items_per_s"], ratio],
        ],
    )  # fmt: skip


@section("profile", "profile_hotpath.json")
def profile(r: dict[str, Any]) -> str:
    return table(
        ["layer", "own s", "share of busy time"],
        [[g["layer"], g["seconds"], f"{g['share']:.1%}"] for g in r["layers"]],
    )


@section("archive-zipf", "archive.json")
def archive_zipf(r: dict[str, Any]) -> str:
    from bench.archive import zipf_table

    cost = r["lru_cost"]
    line = f"LRU cost per hit: OrderedDict {cost['ordereddict_ns_per_hit']:.0f} ns"
    if "cachetools_ns_per_hit" in cost:
        line += (
            f", cachetools {cost.get('cachetools_version', '')} LRUCache "
            f"{cost['cachetools_ns_per_hit']:.0f} ns (same keys, same hits)"
        )
    return f"{zipf_table(r)}\n\n{line}."


@section("float16", "archive.json")
def float16(r: dict[str, Any]) -> str:
    f = r["float16"]
    b = f["bytes_per_vector"]
    return table(
        ["vectors", "cosine min (MiniLM-L6)", "cosine mean", "cosine min (random unit)",
         "bytes a vector float32", "float16", "widen per cold read"],
        [[f["vectors"], f"{f['minilm_l6']['cosine_min']:.7f}",
          f"{f['minilm_l6']['cosine_mean']:.7f}", f"{f['random_unit']['cosine_min']:.7f}",
          b["float32"], b["float16"], f"{f['widen_ns_per_vector'] / 1000:.1f} µs"]],
    )  # fmt: skip


@section("archive-size", "archive-sizes.json")
def archive_size(r: dict[str, Any]) -> str:
    from bench.archive import archive_table

    if "archive" not in r:
        return "(not measured in this run: `python -m bench.archive` without --skip-archive)"
    return archive_table(r)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the doc is not up to date")
    args = parser.parse_args()
    stale = 0
    for path in sorted({where for _, _, where in SECTIONS.values()}):
        doc = path.read_text()
        new, notes = render(doc, RESULTS, path)
        for note in notes:
            print(f"report: {path.name}: {note}")
        if new == doc:
            continue
        stale += 1
        if not args.check:
            path.write_text(new)
            print(f"report: rewrote {path.relative_to(ROOT)}")
    return int(args.check and stale > 0)


if __name__ == "__main__":
    sys.exit(main())
