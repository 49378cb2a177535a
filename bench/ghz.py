"""The native load generator for the gRPC benchmarks: ghz (a Go program, built from the Go
module proxy into the git-ignored bench/bin/ by `make bench-tools`), run as a subprocess.

A Python grpc.aio client spends more CPU per call than the server it measures; on a 2-core box
that client's CPU is taken from the server. ghz's CPU per call is several times smaller, and is
measured here (the child's rusage) beside the server's (its processes' /proc times), so every
result says what share of the machine each side had.

    from bench.ghz import ghz
    r = ghz("127.0.0.1:50051", "GetEmbedding", requests, concurrency=64, seconds=8, pids=[pid])
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.stack import ROOT

GHZ = Path(os.environ.get("EMBARK_BENCH_GHZ", ROOT / "bench" / "bin" / "ghz"))
PROTO = ROOT / "proto" / "embark_api" / "v1" / "embark.proto"
SERVICE = "embark.v1.EmbArk"


def protoset(out: Path) -> Path:
    """EmbArk's service as a compiled descriptor set: ghz's own .proto parser predates proto3
    ``optional`` fields (FindSimilarRequest.min_score), a descriptor set has no such limit."""
    from grpc_tools import protoc

    path = out / "embark.protoset"
    code = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'proto'}",
            "--include_imports",
            f"--descriptor_set_out={path}",
            str(PROTO),
        ]
    )
    if code:
        raise RuntimeError(f"protoc failed ({code}) on {PROTO}")
    return path


def require() -> Path:
    if not GHZ.exists():
        raise SystemExit(f"{GHZ} is missing: run `make bench-tools` (builds ghz with `go install`)")
    return GHZ


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (an `embark serve` with workers is a parent and N children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except (FileNotFoundError, ProcessLookupError):
                continue
    return out


def cpu_of(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` and their descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for root in pids:
        for p in process_tree(root):
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def drive(argv: Sequence[str], pids: Sequence[int], report: Path) -> tuple[float, float, float]:
    """Run a load generator (``argv``) to its end: the seconds it ran, its own CPU seconds
    (its rusage) and those of the server processes ``pids`` over the run. Raises with its
    stderr when it fails or writes no ``report``."""
    server_before = cpu_of(pids)
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    server_cpu = cpu_of(pids) - server_before
    code = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if code or not report.exists():
        raise RuntimeError(f"{Path(argv[0]).name} failed ({code}): {stderr[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime, server_cpu


def ghz(
    target: str,
    method: str,
    requests: Sequence[dict[str, Any]],
    *,
    concurrency: int,
    seconds: float | None = None,
    total: int | None = None,
    connections: int = 1,
    cpus: int = 1,
    pids: Sequence[int] = (),
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Call ``method`` with ``requests`` (round robin, JSON as protobuf's JSON mapping) from
    ``concurrency`` workers over ``connections`` HTTP/2 connections, for ``seconds`` or
    ``total`` calls. Returns calls/s, latency percentiles, errors, and the CPU seconds and
    machine share of ghz and of the server processes ``pids``."""
    exe = require()
    with tempfile.TemporaryDirectory(prefix="ghz-") as tmp:
        data, report = Path(tmp) / "data.json", Path(tmp) / "report.json"
        data.write_text(json.dumps(list(requests)))
        argv = [
            str(exe),
            "--insecure",
            "--protoset",
            str(protoset(Path(tmp))),
            "--call",
            f"{SERVICE}.{method}",
            "--data-file",
            str(data),
            "--concurrency",
            str(concurrency),
            "--connections",
            str(connections),
            "--cpus",
            str(cpus),
            "--timeout",
            f"{timeout_s}s",
            "--format",
            "json",
            "--output",
            str(report),
        ]
        if seconds is not None:
            # A duration-bounded run cuts the calls in flight at the end ("transport is
            # closing"): counted in errors_cut_at_end, not as failures.
            argv += ["--duration", f"{seconds}s", "--total", "100000000"]
        else:
            argv += ["--total", str(total or 1000)]
        argv.append(target)
        elapsed, ghz_cpu, server_cpu = drive(argv, pids, report)
        r = json.loads(report.read_text())
    cores = os.cpu_count() or 1
    lat = {
        int(float(d["percentage"])): d["latency"] / 1e6 for d in r.get("latencyDistribution") or []
    }
    errors = r.get("errorDistribution") or {}
    cut = sum(n for e, n in errors.items() if "transport is closing" in e or "Canceled" in e)
    calls = int(r["count"]) - sum(errors.values())
    duration = r["total"] / 1e9
    return {
        "rps": calls / duration if duration else float("nan"),
        "calls": calls,
        "errors": sum(errors.values()) - cut,
        "errors_cut_at_end": cut,
        "error_kinds": dict(list(errors.items())[:5]),
        "concurrency": concurrency,
        "connections": connections,
        "p50_ms": lat.get(50, float("nan")),
        "p90_ms": lat.get(90, float("nan")),
        "p99_ms": lat.get(99, float("nan")),
        "max_ms": r["slowest"] / 1e6,
        "elapsed_s": elapsed,
        "ghz_cpu_s": ghz_cpu,
        "server_cpu_s": server_cpu,
        # Shares of the whole machine (all cores) over the run: what the load generator took,
        # and what the server got.
        "ghz_cpu_share": ghz_cpu / (elapsed * cores),
        "server_cpu_share": server_cpu / (elapsed * cores),
        "calls_per_server_cpu_s": calls / server_cpu if server_cpu else float("nan"),
        "calls_per_ghz_cpu_s": calls / ghz_cpu if ghz_cpu else float("nan"),
    }


def server_over_ghz(run: dict[str, Any]) -> float:
    """The server's CPU a call over ghz's CPU a call in one ``ghz`` result. ghz does the same
    work against any server, so its CPU a call swings with the host's speed (a shared VM's by
    +-25% from one round to the next) and the ratio cancels that. It also rises a little when
    the server answers more slowly (fewer answers per wake-up), so the ratio understates a gap
    between two servers rather than inventing one."""
    return float(run["calls_per_ghz_cpu_s"] / run["calls_per_server_cpu_s"])


def alternating_rounds(
    targets: dict[str, tuple[str, Sequence[int]]],
    method: str,
    requests: Sequence[dict[str, Any]],
    *,
    rounds: int,
    label: str,
    **load: Any,
) -> list[dict[str, Any]]:
    """``rounds`` ghz runs against each of ``targets`` (name -> (address, server pids)), the
    order reversed every other round so neither side always goes first: one
    ``{label: name, "round": n, "loaded": ghz result}`` a run. ``load`` is passed to ``ghz``."""
    names = list(targets)
    runs: list[dict[str, Any]] = []
    for n in range(1, rounds + 1):
        for name in names if n % 2 else names[::-1]:
            address, pids = targets[name]
            run = ghz(address, method, requests, pids=pids, **load)
            print(f"round {n}: {name}: {1e6 / run['calls_per_server_cpu_s']:.0f} us a call")
            runs.append({label: name, "round": n, "loaded": run})
    return runs
