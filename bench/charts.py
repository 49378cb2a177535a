"""PNG charts for docs/performance.md from whatever bench/results/*.json exist.

.venv/bin/python -m bench.charts      # writes docs/img/bench_*.png
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt

from bench.report import paths
from bench.stack import IMAGES, RESULTS

_COLOURS = {"hot": "#2a9d8f", "edge": "#264653", "cold": "#e9c46a", "compute": "#e76f51"}


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _save(fig: Any, name: str) -> Path:
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def hotpath(r: dict[str, Any]) -> list[Path]:
    names = paths(r["a"])  # hot-1, hot-<workers>, edge, cold, compute (bench/hotpath.py)
    described = {
        "edge": "edge hit\n(Go front)",
        "cold": "EmbArk hit\n(Cassandra)",
        "compute": "encode\nper request",
    }
    labels = [described.get(n, f"LRU hit\n{n.split('-')[-1]} worker(s)") for n in names]
    colours = [_COLOURS[n.split("-")[0]] for n in names]
    compute = names.index("compute")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    rps = [r["a"][n]["throughput"]["rps"] for n in names]
    left.bar(labels, rps, color=colours)
    left.set_yscale("log")
    left.set_ylabel("GetEmbedding calls/s (log)")
    left.margins(y=0.15)
    left.set_title("(a) throughput")
    for i, v in enumerate(rps):
        left.text(
            i, v, f"{v:,.0f}\n({v / rps[compute]:.1f}x)", ha="center", va="bottom", fontsize=8
        )
    x = range(len(names))
    p50 = [r["a"][n]["latency"]["p50_ms"] for n in names]
    p99 = [r["a"][n]["latency"]["p99_ms"] for n in names]
    right.bar([i - 0.2 for i in x], p50, width=0.4, label="p50", color=colours)
    right.bar([i + 0.2 for i in x], p99, width=0.4, label="p99", color=colours, alpha=0.5)
    right.set_xticks(list(x), labels)
    right.set_yscale("log")
    right.set_ylabel("ms, one call in flight (log)")
    right.set_title("(a) latency: p50 solid, p99 light")
    out = [_save(fig, "bench_hotpath_a")]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    vps = [r["b"][n]["vectors_per_s"] for n in names]
    ax.bar(labels, vps, color=colours)
    ax.set_yscale("log")
    ax.set_ylabel("vectors/s (log)")
    ax.set_title("(b) BatchGetEmbeddings")
    for i, v in enumerate(vps):
        ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    out.append(_save(fig, "bench_hotpath_b"))
    return out


def pipeline(r: dict[str, Any]) -> list[Path]:
    """Left: a new input's vector at idle (pipeline-idle.json); right: KFC against Retina
    alone at each number of calls in flight (kfc_retina.json), when it exists."""
    fair = _load("kfc_retina")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    m, s = r["idle"]["miss_to_stored"], r["idle"]["retina_single_call"]
    keys = ["p50_ms", "p90_ms", "p99_ms"]
    x = range(len(keys))
    left.bar([i - 0.2 for i in x], [m[k] for k in keys], width=0.4, label="miss -> stored")
    left.bar([i + 0.2 for i in x], [s[k] for k in keys], width=0.4, label="one Retina call")
    left.set_xticks(list(x), ["p50", "p90", "p99"])
    left.set_ylabel("ms")
    left.set_title("(c1) a new input's vector, at idle")
    left.legend(fontsize=8)
    if fair is not None:
        rates = fair["summary"]["texts_per_s"]
        flights = list(rates["retina"])
        x = range(len(flights))
        right.bar(
            [i - 0.2 for i in x],
            [rates["retina"][c] for c in flights],
            width=0.4,
            label="Retina alone",
            color="#888",
        )
        right.bar(
            [i + 0.2 for i in x],
            [rates["kfc"][c] for c in flights],
            width=0.4,
            label="Kafka->KFC->Retina->Cassandra",
            color="#2a9d8f",
        )
        right.set_xticks(list(x), flights)
        right.set_xlabel("Embed calls in flight")
        right.set_ylabel("texts/s")
        best = fair["summary"]["ratio_best_vs_best"]
        right.set_title(f"(c2) sustained: KFC at {best:.0%} of Retina, best vs best")
        right.legend(fontsize=8)
    return [_save(fig, "bench_pipeline")]  # fmt: skip


def load(r: dict[str, Any]) -> list[Path]:
    t = r["timeline"]
    if not t:
        return []
    t0 = t[0]["t"]
    xs = [p["t"] - t0 for p in t]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    top.plot(xs, [p["rps"] for p in t], label="requests/s", color="#2a9d8f")
    top.set_ylabel("requests/s")
    users = top.twinx()
    users.plot(xs, [p["users"] for p in t], label="users", color="#555", linestyle="--")
    users.set_ylabel("concurrent users")
    top.set_title("Locust: ramp to 1,000 gRPC users (dashed), throughput (solid)")
    for key, colour in (("p50_ms", "#2a9d8f"), ("p95_ms", "#e9c46a"), ("p99_ms", "#e76f51")):
        bottom.plot(xs, [p[key] for p in t], label=key.replace("_ms", ""), color=colour)
    bottom.set_ylabel("ms (Locust rolling window)")
    bottom.set_xlabel("seconds")
    bottom.legend(fontsize=8)
    return [_save(fig, "bench_load")]


def main() -> None:
    for name, draw in (("hotpath", hotpath), ("pipeline-idle", pipeline), ("load", load)):
        result = _load(name)
        if result is not None:
            for path in draw(result):
                print(f"wrote {path}")


if __name__ == "__main__":
    main()
