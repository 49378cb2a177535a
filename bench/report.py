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
import importlib
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.stack import RESULTS, ROOT, table

DOC = ROOT / "docs" / "performance.md"
MODELS = ROOT / "docs" / "models.md"

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


def from_bench(
    marker: str, result_file: str, module: str, doc: Path = DOC, function: str = "report"
) -> None:
    """Register ``module``'s own ``report(result)`` (or another ``function`` of it) for
    ``marker``: a bench script that prints its table and the doc's table from one function
    (imported when rendered, so this module does not import every bench)."""

    def render(r: dict[str, Any]) -> str:
        report: Render = getattr(importlib.import_module(module), function)
        return report(r)

    section(marker, result_file, doc)(render)


def provenance(result_file: str, r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    # Older benches name them loadavg_before/after (bench/encoders.py).
    start = (
        m.get("loadavg_at_start") or m.get("loadavg_before") or [m.get("loadavg_1m_at_start", "?")]
    )
    end = m.get("loadavg_at_end") or m.get("loadavg_after")

    def triple(values: list[Any]) -> str:
        return "/".join(str(round(x, 2)) if isinstance(x, float) else str(x) for x in values)

    load = triple(start) + (f" at start, {triple(end)} at end" if end else " at start")
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
    rows (hot-1, hot-N), then the edge, then cold, then compute."""
    return sorted(rows, key=lambda n: (n == "compute", n.startswith("cold"), n == "edge", n))


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
    return _batch_table(b, "ghz_cpu_share", "ghz CPU", b["compute"]["vectors_per_s"])


def _batch_table(
    rows: dict[str, Any], driver_share: str, driver: str, compute: float | None = None
) -> str:
    """(b)'s batch rows as driven by one load generator; ``x compute`` when it drove the
    compute endpoint too."""
    return table(
        [
            "path",
            "batch",
            "vectors/s",
            *(["x compute"] if compute else []),
            "call p50 ms",
            "call p99 ms",
            "in flight",
            "server CPU",
            driver,
        ],
        [
            [
                name,
                x["batch"],
                x["vectors_per_s"],
                *([x["vectors_per_s"] / compute] if compute else []),
                x["p50_ms"],
                x["p99_ms"],
                x["concurrency"],
                f"{x['server_cpu_share']:.0%}",
                f"{x[driver_share]:.0%}",
            ]
            for name, x in ((n, rows[n]) for n in paths(rows))
        ],
    )


@section("hotpath-edge-runs", "hotpath.json")
def hotpath_edge_runs(_latest: dict[str, Any]) -> str:
    """Every committed run with the edge (``hotpath-edge-run*.json``, copies of
    ``bench.hotpath`` runs), the issue's measures side by side, the edge against the best
    Python front (hot-1 or hot-N) of the same run."""
    prefix = "hotpath-edge-run"
    files = sorted(RESULTS.glob(f"{prefix}*.json"), key=lambda p: int(p.stem.removeprefix(prefix)))
    rows = []
    for path in files:
        r = json.loads(path.read_text())
        a, b, lean = r["a"], r["b"], r.get("b_loadgen", {})
        compute = a["compute"]["throughput"]["rps"]
        edge = a["edge"]
        python = max((a[n] for n in paths(a) if n.startswith("hot-")),
                     key=lambda x: x["throughput"]["rps"])  # fmt: skip
        rows.append(
            [
                f"run {path.stem.removeprefix(prefix)}",
                edge["throughput"]["rps"],
                edge["throughput"]["rps"] / compute,
                python["throughput"]["rps"] / compute,
                edge["latency"]["p50_ms"],
                edge["latency"]["p99_ms"],
                edge["throughput"]["p99_ms"],
                1e6 / edge["throughput"]["calls_per_server_cpu_s"],
                f"{edge['throughput']['ghz_cpu_share']:.0%}",
                b["edge"]["vectors_per_s"],
                lean["edge"]["vectors_per_s"] if "edge" in lean else "-",
                a["cold"]["latency"]["p99_ms"],
                max(x["cold"]["vectors_per_s"] for x in (b, lean) if "cold" in x),
            ]
        )
    return table(
        [
            "run",
            "edge calls/s",
            "x compute (goal 20)",
            "best Python front x compute",
            "p50 ms (goal 0.5)",
            "p99 ms (goal 2)",
            "p99 ms, 64 in flight (goal 20)",
            "server CPU µs a call",
            "ghz CPU",
            "batch vectors/s, ghz",
            "batch vectors/s, loadgen (goal 250k)",
            "cold p99 ms (goal 5)",
            "cold batch vectors/s (goal 60k)",
        ],
        rows,
    )


@section("hotpath-b-loadgen", "hotpath.json")
def hotpath_b_loadgen(r: dict[str, Any]) -> str:
    """The same batches from loadgen, which takes answers as bytes (no decoding)."""
    return _batch_table(r["b_loadgen"], "driver_cpu_share", "loadgen CPU")


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
    from bench.pipeline import KFC_STAGES

    # The path's order (the JSON's keys are sorted), then any stage an older run named.
    order = [k for k in KFC_STAGES if k in stages] + [k for k in stages if k not in KFC_STAGES]
    kfc = table(
        ["KFC's histograms over the run", "misses", "p50 ms <=", "p90 ms <=", "p99 ms <="],
        [
            [k, stages[k]["count"], stages[k]["p50_ms_at_most"], stages[k]["p90_ms_at_most"],
             stages[k]["p99_ms_at_most"]]
            for k in order
        ],
    )  # fmt: skip
    first = r["idle"]["miss_to_stored"].get("first_miss_after_start_ms")
    note = (
        f"\n\nThe first miss after the start, not in the table (a fresh KFC's group join and"
        f" first fetch): {first:.0f} ms."
        if first is not None
        else ""
    )
    return f"{pipeline_idle(r)}\n\n{kfc}{note}"


# Tables a bench script renders itself (its report() prints them too).
from_bench("pipeline-sustained", "kfc_retina.json", "bench.kfc_retina")
from_bench("read-batch", "read_batch.json", "bench.read_batch")
from_bench("event-loop", "event_loop.json", "bench.event_loop")
from_bench("grpc-floor", "grpc_floor.json", "bench.grpc_floor")
from_bench("guard-cost", "guard_cost.json", "bench.guard_cost")
from_bench("hit-micro", "hit_micro.json", "bench.hit_micro")
from_bench("revisions-guard", "revisions-guard-metrics.json", "bench.revisions")
from_bench("revisions-keys-batch", "revisions-keys-batch.json", "bench.revisions")
from_bench("revisions-keys", "revisions-keys.json", "bench.revisions")
from_bench("backfill", "backfill.json", "bench.backfill")
from_bench("encoders-native", "encoders_openvino.json", "bench.encoders_native")
from_bench(
    "native-profile", "encoders_openvino.json", "bench.encoders_native", function="profile_report"
)
from_bench(
    "encoders-native-vnni",
    "encoders_openvino.json",
    "bench.encoders_native",
    function="vnni_report",
)
from_bench("native-weights", "native_weights.json", "bench.native_weights")
from_bench("retina-threads", "retina_threads.json", "bench.retina_threads")
from_bench("smooth-sweep", "smooth_sweep.json", "bench.smooth_sweep", doc=MODELS)
from_bench("native-threads", "native_threads.json", "bench.native_threads", doc=MODELS)
from_bench(
    "heads-finetune", "heads-minilm-l6/finetune.json", "bench.heads_finetune",
    doc=ROOT / "docs" / "heads.md",
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
    if "lmdb_ns_per_hit" in cost:
        line += (
            f"; a read from LMDB {cost.get('lmdb_version', '')} in /dev/shm, the candidate for"
            f" one cache shared by the workers: {cost['lmdb_ns_per_hit']:.0f} ns"
        )
    return f"{zipf_table(r)}\n\n{line}.\n\n{split_vs_shared(r)}"


def split_vs_shared(r: dict[str, Any]) -> str:
    """Two workers with half the cache each (what EMBARK_WORKERS does: a connection stays on
    one worker, so each LRU sees the whole key distribution) against one shared cache of the
    whole budget: hit ratios from the same Zipf curve, at the fractions where both exist."""
    curve = {(z["zipf_s"], round(z["cache_fraction"], 4)): z["hit_ratio"] for z in r["zipf"]}
    rows = []
    for (s, f), shared in sorted(curve.items()):
        split = curve.get((s, round(f / 2, 4)))
        if split is not None:
            rows.append(
                [s, f"{f:.1%}", split, shared, f"{(1 - split) / max(1e-9, 1 - shared):.2f}x"]
            )
    return table(
        ["Zipf s", "budget / working set", "hit ratio, 2 workers split it",
         "hit ratio, one shared cache", "archive reads, split / shared"],
        rows,
    )  # fmt: skip


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


@section("encoders", "encoders.json")
def encoders(r: dict[str, Any]) -> str:
    """Every text variant tried, in CPU time (one intra-op thread), with why it was kept."""
    return _encoder_table(r)


@section("encoders-openvino", "encoders_openvino.json")
def encoders_openvino(r: dict[str, Any]) -> str:
    """The OpenVINO rerun (`bench.encoders --only openvino`): the table, then served
    throughput (concurrent one-text calls) against the raw session batched and one by one."""
    served = [
        [m, s["served_items_per_s"], s["raw_items_per_s"], s.get("one_by_one_items_per_s", "-"),
         "one by one" if s["batch_coupled"] else "padded"]
        for m, s in r.get("served", {}).items()
    ]  # fmt: skip
    headers = ["served model", "served items/s", "raw items/s (b32 chunks)", "raw one by one",
               "batches"]  # fmt: skip
    return _encoder_table(r) + "\n\n" + table(headers, served)


def _encoder_table(r: dict[str, Any]) -> str:

    def cos(x: dict[str, Any]) -> str:
        return f"{x['cos_min']:.4f} / {x['cos_mean']:.4f}"

    threads = r.get("threads", 2)
    rows = [
        [x["variant"], x["ms_b1"], x["speedup_b1"], x["cpu_ms_b1"], x["speedup_cpu"],
         x["cpu_items_per_s"], cos(x),
         {True: "one by one", False: "padded"}.get(x["coupled"], "padded"), x["note"]]
        for x in r["rows"]
        if x["group"] == "text"
    ]  # fmt: skip
    return table(
        ["variant", f"ms, b1/64 tok, {threads} threads", "x PyTorch", "CPU ms, b1, 1 thread",
         "x PyTorch (CPU)", "items per CPU-s, b32", "cos min / mean vs reference", "batches",
         "kept?"],
        rows,
    )  # fmt: skip


@section("openvino-profile", "encoders_openvino-quiet-run4.json")
def openvino_profile(r: dict[str, Any]) -> str:
    """Where the OpenVINO recipe's batch-1 time goes, per (node type, kernel), by threads."""
    profiles = r.get("openvino_profile") or []
    if not profiles:
        return "(not measured in this run: OpenVINO not installed)"
    by = [{(x["node_type"], x["kernel"]): x for x in p["rows"]} for p in profiles]
    slowest: dict[tuple[str, str], dict[str, Any]] = {}
    for b in by:
        for key, x in b.items():
            if key not in slowest or x["ms"] > slowest[key]["ms"]:
                slowest[key] = x
    rows = [
        [node, kernel, x["nodes"], *(b[(node, kernel)]["ms"] if (node, kernel) in b else 0.0
                                     for b in by)]
        for (node, kernel), x in sorted(slowest.items(), key=lambda kv: -kv[1]["ms"])
    ]  # fmt: skip
    rows += [
        ["all nodes", "", "", *(p["nodes_ms"] for p in profiles)],
        ["wall clock a call", "", "", *(p["wall_ms"] for p in profiles)],
        ["process CPU a call", "", "", *(p["cpu_ms"] for p in profiles)],
    ]
    heads = [f"ms a call, {p['threads']} thread{'s' if p['threads'] > 1 else ''}" for p in profiles]
    return table(["node type", "kernel", "nodes", *heads], rows)


# --- categorizer heads (docs/heads.md) --------------------------------------------------------


@section("heads-prototypes", "heads-minilm-l6/protos.json", doc=ROOT / "docs" / "heads.md")
def heads_prototypes(r: dict[str, Any]) -> str:
    from bench.heads_protos import protos_table

    return protos_table(r)


HEADS = ROOT / "docs" / "heads.md"
from_bench("heads-titles", "heads-minilm-l6/titles.json", "bench.heads_titles", doc=HEADS)


@section("heads-titles-batches", "heads-minilm-l6/titles.json", doc=HEADS)
def heads_titles_batches(r: dict[str, Any]) -> str:
    from bench.heads_titles import batches_table

    return batches_table(RESULTS / "heads-minilm-l6")


# --- similarity (docs/similarity.md) ---------------------------------------------------------

SIMILARITY = ROOT / "docs" / "similarity.md"


def _search_row(label: str, rows: int, run: dict[str, Any]) -> list[Any]:
    o = run["one_in_flight"]
    return [label, rows, f"{run['recall_at_10']:.4f}", o["p50_ms"], o["p99_ms"], run["qps"],
            run.get("concurrency", "-")]  # fmt: skip


_SEARCH_HEADERS = ["index", "rows", "recall@10", "p50 ms (1 in flight)", "p99 ms (1 in flight)",
                   "queries/s", "in flight"]  # fmt: skip


@section("similar-search", "similar.json", doc=SIMILARITY)
def similar_search(r: dict[str, Any]) -> str:
    ann, t = r["cassandra_ann"], r["targets"]
    rows = [_search_row(f"Cassandra 5.0 SAI ANN (COSINE), {ann.get('sstables', '?')} SSTable(s)",
                        ann["rows"], ann)]  # fmt: skip
    after = ann.get("after_major_compaction")
    if after:
        rows.append(_search_row("the same after a major compaction", ann["rows"], after))
        ann = after  # the goals are read on the table as an operator would leave it
    if "sqlite_exact" in r:
        sq = r["sqlite_exact"]
        rows.append(_search_row("SQLite, exact numpy", sq["rows"], sq))
    o = ann["one_in_flight"]
    goals = [
        ["recall@10 >= 0.98 on >= 100k", f"{ann['recall_at_10']:.4f} on {ann['rows']:,}",
         ann["recall_at_10"] >= t["recall_at_10"] and ann["rows"] >= 100_000],
        ["p99 <= 25 ms, one query in flight", f"{o['p99_ms']:.1f} ms",
         o["p99_ms"] <= t["p99_ms_one_in_flight"]],
        [">= 150 queries/s at saturation", f"{ann['qps']:.0f} ({ann['concurrency']} in flight)",
         ann["qps"] >= t["qps_saturated"]],
    ]  # fmt: skip
    return (
        table(_SEARCH_HEADERS, rows)
        + "\n\n"
        + table(["goal", "measured", ""], [[g, m, "met" if ok else "missed"] for g, m, ok in goals])
    )


@section("similar-writes", "similar.json", doc=SIMILARITY)
def similar_writes(r: dict[str, Any]) -> str:
    w = r["write_cost"]
    hp = r["cassandra_ann"]["hit_path_get_many_64"]
    return (
        table(
            ["put_many (256-row batches)", "rows/s", "Cassandra CPU ms/row", "client CPU ms/row"],
            [
                [
                    name,
                    w[key]["rows_per_s"],
                    w[key]["cassandra_cpu_ms_per_row"],
                    w[key]["client_cpu_ms_per_row"],
                ]
                for name, key in (
                    ("store only (search off)", "plain"),
                    ("store + vector table (search on)", "indexed"),
                )
            ],
        )
        + f"\n\nRate with the index: **{w['rate_ratio_indexed_vs_plain']:.2f}x**; Cassandra CPU"
        f" per row: **{w.get('cpu_ratio_indexed_vs_plain', float('nan')):.1f}x**.\n\n"
        + table(
            ["hit path: get_many of 64 stored keys", "p50 ms", "p99 ms"],
            [
                ["plain store", hp["plain"]["p50_ms"], hp["plain"]["p99_ms"]],
                [
                    "through IndexingStore (search on)",
                    hp["through_indexing_store"]["p50_ms"],
                    hp["through_indexing_store"]["p99_ms"],
                ],
            ],
        )
    )


@section("similar-kfc", "similar_kfc.json", doc=SIMILARITY)
def similar_kfc(r: dict[str, Any]) -> str:
    runs = [["search " + ("on" if x["search"] else "off"), x["window_jobs"], x["window_s"],
             x["stored_per_s"], x["cassandra_cpu_ms_per_job"]] for x in r["runs"]]  # fmt: skip
    ratio = r["rate_ratio_on_vs_off"]
    return (
        table(
            [
                "KFC burst, in run order",
                "jobs timed",
                "seconds",
                "stored/s",
                "Cassandra CPU ms/job",
            ],
            runs,
        )
        + f"\n\nMean stored/s: {r['stored_per_s']['search_off']:.0f} off,"
        f" {r['stored_per_s']['search_on']:.0f} on: **{ratio:.2f}x**, a {1 - ratio:.0%} lower"
        f" rate (goal: at most {r['goal_max_loss']:.0%}:"
        f" {'met' if 1 - ratio <= r['goal_max_loss'] else 'missed'})."
    )


@section("similar-compaction", "similar-compaction.json", doc=SIMILARITY)
def similar_compaction(r: dict[str, Any]) -> str:
    ann = r["cassandra_ann"]
    after = ann["after_major_compaction"]
    return (
        table(
            _SEARCH_HEADERS,
            [
                _search_row(f"{ann['sstables']} SSTables", ann["rows"], ann),
                _search_row(f"after a major compaction: {after['sstables']}", ann["rows"], after),
            ],
        )
        + f"\n\nThe major compaction took {after['compaction_s']:.0f} s"
        f" ({ann['rows'] / after['compaction_s']:.0f} rows/s: it rebuilds the graph)."
    )


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
