"""The lean load generator (bench/loadgen/, Go, built into the git-ignored bench/bin/ by
`make bench-tools`), run as a subprocess beside ghz: it sends prebuilt protobuf frames and
takes answers as bytes without decoding them. ghz decodes every answer into a dynamic message,
which for 1,024-vector batches made ghz the bottleneck (it took a whole core while the edge it
measured took a sixth of one); with loadgen the server's share of the machine is what limits.

    from bench.loadgen import loadgen
    r = loadgen("127.0.0.1:50050", "BatchGetEmbeddings", [req.SerializeToString()], ...)

The result has ghz's keys (bench/ghz.py) where they mean the same, and ``driver_cpu_*`` for
the load generator's own CPU.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.ghz import SERVICE, drive
from bench.stack import ROOT

LOADGEN = ROOT / "bench" / "bin" / "loadgen"


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint: the length before each frame in loadgen's requests file."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def loadgen(
    target: str,
    method: str,
    requests: Sequence[bytes],
    *,
    concurrency: int,
    seconds: float | None = None,
    total: int | None = None,
    connections: int = 1,
    cpus: int = 1,
    pids: Sequence[int] = (),
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Call ``method`` with the encoded ``requests`` (round robin) from ``concurrency`` workers
    over ``connections`` connections, for ``seconds`` or ``total`` calls; the CPU of the
    driver and of the server processes ``pids`` over the run."""
    if not LOADGEN.exists():
        raise SystemExit(f"{LOADGEN} is missing: run `make bench-tools`")
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        frames, report = Path(tmp) / "requests.bin", Path(tmp) / "report.json"
        frames.write_bytes(b"".join(varint(len(r)) + r for r in requests))
        argv = [
            str(LOADGEN),
            f"-target={target}",
            f"-method=/{SERVICE}/{method}",
            f"-requests={frames}",
            f"-concurrency={concurrency}",
            f"-connections={connections}",
            f"-cpus={cpus}",
            f"-timeout={timeout_s}s",
            f"-out={report}",
            f"-duration={seconds}s" if seconds is not None else f"-total={total or 1000}",
        ]
        elapsed, driver_cpu, server_cpu = drive(argv, pids, report)
        r = json.loads(report.read_text())
    cores = os.cpu_count() or 1
    calls = int(r["calls"])
    return {
        "driver": "loadgen",
        "rps": calls / r["seconds"],
        "calls": calls,
        "errors": sum(r["errors"].values()),
        "error_kinds": r["errors"],
        "concurrency": concurrency,
        "connections": connections,
        "p50_ms": r["p50_ms"],
        "p90_ms": r["p90_ms"],
        "p99_ms": r["p99_ms"],
        "max_ms": r["max_ms"],
        "response_bytes": r["response_bytes"],
        "elapsed_s": elapsed,
        "driver_cpu_s": driver_cpu,
        "server_cpu_s": server_cpu,
        "driver_cpu_share": driver_cpu / (elapsed * cores),
        "server_cpu_share": server_cpu / (elapsed * cores),
        "calls_per_server_cpu_s": calls / server_cpu if server_cpu else float("nan"),
    }
