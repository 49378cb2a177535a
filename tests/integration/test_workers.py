"""`embark serve` with EMBARK_WORKERS=2 on real Cassandra and Kafka: both workers answer on the
one port, the one metrics port (and each worker's HTTP /metrics) sums them, SIGTERM drains and
stops every worker, and a worker that dies takes the group down with a non-zero exit."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from embark_api.v1 import embark_pb2, embark_pb2_grpc, inputs_pb2
from tests.integration.processes import Backends, ServiceProcess, free_port, fresh_backends


def _children(pid: int) -> list[int]:
    """The worker processes of ``pid`` (multiprocessing's spawned workers, not its resource
    tracker, which is a child too)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for c in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):
                if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes():
                    out.append(int(c))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose (its parent has not reaped it yet).
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = out.get(f"{s.name}{{{labels}}}", 0.0) + s.value
    return out


def _answers(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("embark_answers_total{"))


@pytest.fixture(scope="module")
def backends(
    cassandra_contact: str,
    kafka_bootstrap: str,
    handed_out_keyspaces: list[str],
    handed_out_topics: list[str],
    built_artifacts: Path,
) -> Backends:
    return fresh_backends(
        "workers",
        catalog=built_artifacts / "catalog.json",
        cassandra=cassandra_contact,
        kafka=kafka_bootstrap,
        keyspaces=handed_out_keyspaces,
        topics=handed_out_topics,
        retina_port=free_port(),
    )


class Workers:
    def __init__(self, backends: Backends, log_dir: Path) -> None:
        self.port, self.metrics_port, self.http_port = free_port(), free_port(), free_port()
        env = {
            **backends.env("EMBARK"),
            "EMBARK_PORT": str(self.port),
            "EMBARK_METRICS_PORT": str(self.metrics_port),
            "EMBARK_HTTP_PORT": str(self.http_port),
            "EMBARK_WORKERS": "2",
            "EMBARK_RETINA_ADDRESS": "",
        }
        self.process = ServiceProcess(
            "embark-workers", ["embark", "serve"], env, self.port, log_dir
        )

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid


@pytest.fixture
def workers(backends: Backends, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(backends, tmp_path)
    w.process.start(timeout_s=180)
    # SERVING means one worker answered; wait until both are up, each with its backends.
    deadline = time.monotonic() + 120
    while len(_children(w.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    _wait_all_serving(w.port, deadline)
    yield w
    w.process.terminate()


def _wait_all_serving(port: int, deadline: float, in_a_row: int = 16) -> None:
    """Until health says SERVING on ``in_a_row`` new connections in a row: the kernel spreads
    connections over the workers, so a worker still starting would answer NOT_SERVING to one
    of them (missed by all 16 with odds 2^-16)."""
    row = 0
    while row < in_a_row:
        assert time.monotonic() < deadline, "the workers did not all become SERVING"
        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                serving = False
        row = row + 1 if serving else 0
        if not serving:
            time.sleep(0.2)


def _ask_on_new_connections(port: int, n: int) -> None:
    """``n`` calls, each on a connection of its own (the kernel balances connections)."""
    for i in range(n):
        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            stub = embark_pb2_grpc.EmbArkStub(channel)
            reply = stub.GetEmbedding(
                embark_pb2.GetEmbeddingRequest(
                    model="minilm-l6",
                    input=inputs_pb2.Input(text=f"workers {uuid.uuid4().hex} {i}"),
                ),
                timeout=30,
            )
            assert reply.embedding.status == embark_pb2.PENDING


def test_both_workers_serve_one_port_and_one_metrics_port_sums_them(workers: Workers) -> None:
    kids = _children(workers.pid)
    assert len(kids) == 2, kids
    before = _answers(_scrape(f"http://127.0.0.1:{workers.metrics_port}/metrics"))
    _ask_on_new_connections(workers.port, 24)
    summed = _scrape(f"http://127.0.0.1:{workers.metrics_port}/metrics")
    assert _answers(summed) - before == 24
    # Every call was a miss: the derived hit ratio says 0, not missing.
    assert summed['embark_hit_ratio{model="minilm-l6"}'] == 0.0
    # Both workers answered: their per-process metric files both hold answers. A worker's
    # HTTP /metrics reads the same files, so it shows the same sum.
    via_http = _scrape(f"http://127.0.0.1:{workers.http_port}/metrics")
    assert _answers(via_http) == _answers(summed)
    per_pid = {
        k: v
        for k, v in _scrape_raw_by_pid(workers).items()
        if k.startswith("embark_answers_total") and v > 0
    }
    assert len(per_pid) == 2, per_pid


def _scrape_raw_by_pid(workers: Workers) -> dict[str, float]:
    """Each worker's own answers, from its own metric file (counter_<pid>.db) read alone."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    kid = _children(workers.pid)[0]
    env = Path(f"/proc/{kid}/environ").read_bytes().split(b"\0")
    [path] = [
        e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")
    ]
    out: dict[str, float] = {}
    for db in Path(path).glob("counter_*.db"):
        alone = Path(tempfile.mkdtemp())
        shutil.copy(db, alone / db.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        text = generate_latest(registry).decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "embark_answers_total":
                    key = f"embark_answers_total[{db.name}]"
                    out[key] = out.get(key, 0.0) + s.value
        shutil.rmtree(alone)
    return out


def test_sigterm_drains_and_stops_every_worker(workers: Workers) -> None:
    kids = _children(workers.pid)
    assert len(kids) == 2
    assert workers.process.proc is not None
    workers.process.proc.send_signal(signal.SIGTERM)
    assert workers.process.proc.wait(60) == 0, workers.process.tail()
    assert not any(_alive(k) for k in kids)


def test_a_worker_that_dies_stops_the_group_with_an_error(workers: Workers) -> None:
    kids = _children(workers.pid)
    os.kill(kids[0], signal.SIGKILL)
    assert workers.process.proc is not None
    assert workers.process.proc.wait(60) == 1, workers.process.tail()
    assert not any(_alive(k) for k in kids)
    assert "exited" in workers.process.tail()


def test_workers_stop_when_the_parent_is_killed(workers: Workers) -> None:
    kids = _children(workers.pid)
    assert len(kids) == 2
    workers.process.kill()  # SIGKILL: the parent runs no shutdown code
    deadline = time.monotonic() + 60
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(k) for k in kids), workers.process.tail()


def test_a_configuration_the_workers_refuse_exits_2_like_one_process(
    built_artifacts: Path,
) -> None:
    """Every worker refuses the local queue (it lives inside one process): the group exits with
    the workers' own status 2 and their one-line message, as a single `embark serve` does."""
    env = {
        **os.environ,
        "EMBARK_WORKERS": "2",
        "EMBARK_PORT": str(free_port()),
        "EMBARK_METRICS_PORT": "0",
        "EMBARK_CATALOG": str(built_artifacts / "catalog.json"),
        "EMBARK_QUEUE__BACKEND": "local",
    }
    done = subprocess.run(
        [sys.executable, "-m", "embark", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "the local queue lives inside one process" in done.stderr
    assert "Traceback" not in done.stderr
