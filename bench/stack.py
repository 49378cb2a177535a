"""The real stack for benchmarks: `retina serve`, `embark serve` and `kfc run` as processes on
real Cassandra and Kafka (devstack's 127.0.0.1:9042 / :9092 unless EMBARK_BENCH_CASSANDRA /
EMBARK_BENCH_KAFKA say otherwise), each in a fresh keyspace and topic that are dropped at the
end. Also the compute-per-request server (bench/compute_server.py), the bare gRPC floor
(bench/floor_server.py) and helpers shared by the benchmark scripts: seeding the archive,
scraping a metrics port, percentiles, results files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embark.catalog import Catalog
from embark.keys import canonical_text, derive_key
from embark.store.base import StoredVector
from embark.store.cassandra import CassandraConfig, open_cassandra_store

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
IMAGES = ROOT / "docs" / "img"
ARTIFACTS = Path(os.environ.get("EMBARK_BENCH_ARTIFACTS", ROOT / "artifacts"))
CASSANDRA = os.environ.get("EMBARK_BENCH_CASSANDRA", "127.0.0.1:9042")
KAFKA = os.environ.get("EMBARK_BENCH_KAFKA", "127.0.0.1:9092")
TEXT_MODEL = "minilm-l6"
IMAGE_MODEL = "efficientnet-lite0"
EDGE = ROOT / "edge" / "bin" / "edge"


def build_edge() -> Path:
    """The native hit front (edge/), built with the Go toolchain (`make edge`; the module cache
    makes a rebuild of unchanged sources a second or two)."""
    done = subprocess.run(
        ["go", "build", "-buildvcs=false", "-o", str(EDGE), "."],
        cwd=ROOT / "edge",
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"go build of edge/ failed:\n{done.stderr}")
    return EDGE


def command(argv: Sequence[str]) -> list[str]:
    """A built binary (the edge) runs by its path; a Python service by its module."""
    return list(argv) if Path(argv[0]).is_absolute() else [sys.executable, "-m", *argv]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    health_port: int
    log_path: Path
    metrics_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    # The source tree it runs from (`python -m` imports from its working directory): another
    # revision's checkout for bench/revisions.py.
    cwd: Path = ROOT

    def start(self, timeout_s: float = 120.0) -> Proc:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command(self.argv),
                env={**os.environ, "HF_HUB_OFFLINE": "1", **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
            )
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(f"127.0.0.1:{self.health_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
                with contextlib.suppress(grpc.RpcError):
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                time.sleep(0.2)
        raise TimeoutError(f"{self.name} not SERVING in {timeout_s}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def metrics(self) -> dict[str, float]:
        return scrape(self.metrics_port)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass
class Stack:
    """Names, ports and processes of one benchmark run; ``start_*`` adds processes."""

    tag: str
    logs: Path
    keyspace: str = ""
    jobs_topic: str = ""
    retina_port: int = field(default_factory=free_port)
    procs: list[Proc] = field(default_factory=list)
    # Where the servers and models are (the integration tests hand in their fixtures' own).
    cassandra: str = CASSANDRA
    kafka: str = KAFKA
    artifacts: Path = ARTIFACTS

    def __post_init__(self) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.keyspace = f"bench_{self.tag}_{suffix}"
        self.jobs_topic = f"bench-{self.tag}-{suffix}"
        self.logs.mkdir(parents=True, exist_ok=True)

    @property
    def catalog_path(self) -> Path:
        return self.artifacts / "catalog.json"

    def backends(self, prefix: str) -> dict[str, str]:
        return {
            f"{prefix}_CATALOG": str(self.catalog_path),
            f"{prefix}_STORE__BACKEND": "cassandra",
            f"{prefix}_STORE__CASSANDRA__CONTACT_POINTS": json.dumps([self.cassandra]),
            f"{prefix}_STORE__CASSANDRA__KEYSPACE": self.keyspace,
            f"{prefix}_STORE__CASSANDRA__REPLICATION": json.dumps(
                {"class": "SimpleStrategy", "replication_factor": 1}
            ),
            f"{prefix}_QUEUE__BACKEND": "kafka",
            f"{prefix}_QUEUE__KAFKA__BOOTSTRAP_SERVERS": self.kafka,
            f"{prefix}_QUEUE__KAFKA__JOBS_TOPIC": self.jobs_topic,
            f"{prefix}_QUEUE__KAFKA__DEAD_LETTER_TOPIC": f"{self.jobs_topic}.dlq",
            f"{prefix}_QUEUE__KAFKA__PARTITIONS": "3",
            f"{prefix}_QUEUE__KAFKA__GROUP_ID": f"kfc-{self.jobs_topic}",
            f"{prefix}_RETINA_ADDRESS": f"127.0.0.1:{self.retina_port}",
        }

    def cassandra_config(self) -> CassandraConfig:
        return CassandraConfig(
            contact_points=(self.cassandra,),
            keyspace=self.keyspace,
            replication={"class": "SimpleStrategy", "replication_factor": 1},
        )

    def apply_schema(self, **extra: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "embark", "schema", "apply"],
            env={**os.environ, **self.backends("EMBARK"), **extra},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            cwd=ROOT,
        )
        if done.returncode:
            raise RuntimeError(f"schema apply failed:\n{done.stderr}")

    def _add(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc.start()

    def start_retina(
        self,
        models: Sequence[str] = (TEXT_MODEL,),
        *,
        name: str = "retina",
        port: int | None = None,
        **extra: str,
    ) -> Proc:
        """A Retina on the stack's ``retina_port`` (the one EmbArk and KFC are given), or on
        ``port`` for a second instance."""
        port = port or self.retina_port
        metrics = free_port()
        env = {
            "RETINA_ARTIFACTS_DIR": str(self.artifacts),
            "RETINA_PORT": str(port),
            "RETINA_METRICS_PORT": str(metrics),
            "RETINA_MODELS": ",".join(models),
            **extra,
        }
        return self._add(
            Proc(name, ["retina", "serve"], env, port, self.logs / f"{name}.log", metrics)
        )

    def start_embark(
        self,
        name: str = "embark",
        *,
        cache_bytes: int | None = None,
        source: Path = ROOT,
        **extra: str,
    ) -> Proc:
        port, metrics = free_port(), free_port()
        env = {
            **self.backends("EMBARK"),
            "EMBARK_PORT": str(port),
            "EMBARK_METRICS_PORT": str(metrics),
            **extra,
        }
        if cache_bytes is not None:
            env["EMBARK_CACHE_BYTES"] = str(cache_bytes)
        # One process unless the caller asks for workers: the benchmarks compare paths, and
        # name the worker count where they measure it (bench/hotpath.py).
        env.setdefault("EMBARK_WORKERS", "1")
        log = self.logs / f"{name}.log"
        return self._add(Proc(name, ["embark", "serve"], env, port, log, metrics, cwd=source))

    def start_edge(self, upstream: Proc, name: str = "edge", **extra: str) -> Proc:
        """The native hit front (edge/) in front of ``upstream`` (an `embark serve`)."""
        port, metrics = free_port(), free_port()
        env = {
            "EDGE_LISTEN": f"127.0.0.1:{port}",
            "EDGE_UPSTREAM": f"127.0.0.1:{upstream.health_port}",
            "EDGE_METRICS_LISTEN": f"127.0.0.1:{metrics}",
            **extra,
        }
        return self._add(
            Proc(name, [str(build_edge())], env, port, self.logs / f"{name}.log", metrics)
        )

    def start_kfc(self, **extra: str) -> Proc:
        health, metrics = free_port(), free_port()
        env = {
            **self.backends("KFC"),
            "KFC_HEALTH_PORT": str(health),
            "KFC_METRICS_PORT": str(metrics),
            **extra,
        }
        return self._add(Proc("kfc", ["kfc", "run"], env, health, self.logs / "kfc.log", metrics))

    def start_compute(self) -> Proc:
        port = free_port()
        env = {"RETINA_ARTIFACTS_DIR": str(self.artifacts)}
        return self._add(
            Proc(
                "compute",
                ["bench.compute_server", "--port", str(port)],
                env,
                port,
                self.logs / "compute.log",
            )
        )

    def start_floor(self) -> Proc:
        port = free_port()
        return self._add(
            Proc("floor", ["bench.floor_server", "--port", str(port)], {}, port,
                 self.logs / "floor.log")
        )  # fmt: skip

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def drop(self) -> None:
        """Drop the keyspace and topics this run created."""
        from cassandra.cluster import Cluster
        from confluent_kafka.admin import AdminClient

        host, port = self.cassandra.rsplit(":", 1)
        cluster = Cluster([host], port=int(port))
        try:
            cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {self.keyspace}", timeout=60)
        except Exception as exc:  # noqa: BLE001 (cleanup is best effort)
            print(f"could not drop {self.keyspace}: {exc}", file=sys.stderr)
        finally:
            cluster.shutdown()
        admin = AdminClient({"bootstrap.servers": self.kafka})
        with contextlib.suppress(Exception):
            for future in admin.delete_topics(
                [self.jobs_topic, f"{self.jobs_topic}.dlq"], operation_timeout=30
            ).values():
                future.result(timeout=60)


@contextlib.contextmanager
def stack(tag: str, **where: Any) -> Iterator[Stack]:
    """A fresh keyspace and topics on the servers (``cassandra``, ``kafka`` and ``artifacts``
    override the defaults); every process started is stopped and the data dropped at exit."""
    s = Stack(tag, where.pop("logs", RESULTS / "logs" / tag), **where)
    try:
        s.apply_schema()
        yield s
    finally:
        s.stop()
        s.drop()


async def seed(
    config: CassandraConfig,
    texts: Sequence[str],
    *,
    dim: int = 384,
    catalog_path: Path = ARTIFACTS / "catalog.json",
) -> None:
    """Write a vector for each text under the key EmbArk derives for it (random unit vectors:
    the serving path never looks inside them)."""
    catalog = Catalog.load(catalog_path)
    spec = catalog.require(TEXT_MODEL)
    rng = np.random.default_rng(0)
    store = await open_cassandra_store(config)
    try:
        # Chunk by chunk, so a million-row archive never holds its rows in memory at once.
        for start in range(0, len(texts), 500):
            rows = []
            for text in texts[start : start + 500]:
                canonical = canonical_text(text)
                key = derive_key(spec.name, spec.revision, "text", canonical)
                v = rng.standard_normal(spec.dim).astype("<f4")
                v /= np.linalg.norm(v)
                rows.append(
                    StoredVector(
                        key.digest,
                        spec.name,
                        spec.revision,
                        "text",
                        canonical,
                        v.tobytes(),
                        spec.dim,
                        int(time.time() * 1000),
                    )
                )
            await store.put_many(rows)
    finally:
        await store.close()


def scrape(port: int) -> dict[str, float]:
    """Prometheus text from a metrics port, as {"name{labels}": value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds."""
    if not samples_s:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan")}
    a = np.asarray(samples_s) * 1000
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listener_pid(address: str) -> int | None:
    """The pid of the process listening on ``address``'s port ("host:port"), for its CPU
    time; None if none (or another user's, which ``ss`` does not name)."""
    port = address.rsplit(":", 1)[1]
    out = subprocess.run(
        ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=False
    ).stdout
    for part in out.split("pid=")[1:]:
        return int(part.split(",")[0])
    return None


def nodetool(*args: str) -> str:
    """devstack's nodetool (needs the node started with DEVSTACK_CASSANDRA_JMX_PORT)."""
    script = ROOT / "devstack" / "nodetool.sh"
    return subprocess.run(
        # No timeout: a major compaction of 100k vectors rebuilds their graph (35 min here).
        [str(script), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def sstables(table: str) -> int | None:
    """The table's live SSTable count, or None when nodetool cannot reach the node."""
    try:
        out = nodetool("tablestats", table)
    except (subprocess.SubprocessError, OSError):
        return None
    for line in out.splitlines():
        if line.strip().startswith("SSTable count:"):
            return int(line.split(":")[1])
    return None


def settle(keyspace: str, table: str, timeout_s: float = 600.0) -> dict[str, Any]:
    """Flush ``table`` and wait (up to ``timeout_s``) until no compaction is pending, so a
    read benchmark measures the archive at rest, not during its compactions; returns the
    SSTable count and how long it took (nothing when nodetool cannot reach the node)."""
    started = time.perf_counter()
    try:
        nodetool("flush", keyspace, table)
        while time.perf_counter() - started < timeout_s:
            stats = nodetool("compactionstats").splitlines()
            pending = [line.split()[-1] for line in stats if line.startswith("pending tasks")]
            if pending == ["0"]:
                break
            time.sleep(5)
    except (subprocess.SubprocessError, OSError):
        return {}
    return {"sstables": sstables(f"{keyspace}.{table}"), "settle_s": time.perf_counter() - started}


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m_at_start": round(load[0], 2),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    """bench/results/<name>.json, with the machine's core count and load average at the end
    of the run added to what ``machine()`` recorded at its start (every result carries both:
    figures from a loaded box must say so)."""
    result.setdefault("machine", machine())
    result["machine"]["cpus"] = os.cpu_count()
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True))
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (what the scripts print and docs/performance.md carries)."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def run(coro: Any) -> Any:
    return asyncio.run(coro)
