"""Fixtures for tests/cluster: the devstack's three-node Cassandra ring and three-broker Kafka
(devstack/cluster.sh), and EmbArk, Retina and three KFC instances on them as real processes.

Owns:

* the ``cluster`` mark on every test collected here (`make test` deselects it; `make
  test-cluster` selects it);
* ``ring`` (session): the running cluster, or one started for the session and stopped at its
  end (DEVSTACK_CLUSTER_KEEP=1 keeps it); SIGKILL and restart of one server;
* ``cluster_stack`` (module): one keyspace (NetworkTopologyStrategy, datacenter1: 3), jobs and
  dead-letter topics (replication 3, min.insync.replicas 2) created by `embark schema apply`
  with the cluster settings of docs/cluster.md, then Retina, EmbArk (no hot LRU, so every hit is
  a Cassandra read at LOCAL_QUORUM) and three KFC instances in one consumer group. The process
  logs are printed when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from embark.client import EmbarkClient, make_input
from embark.errors import EmbarkError
from embark.store.base import StoredVector
from embark.store.cassandra import CassandraConfig, open_cassandra_store
from tests.integration.processes import ServiceProcess, free_port
from tests.integration.servers import REPO_ROOT, log_tail

_HERE = Path(__file__).resolve().parent
CLUSTER_SH = REPO_ROOT / "devstack" / "cluster.sh"
ROOT = Path(os.environ.get("DEVSTACK_CLUSTER_DIR", REPO_ROOT / ".devstack" / "cluster"))
NODES = (1, 2, 3)
CQL = tuple(f"127.0.0.1{n}:19042" for n in NODES)
KAFKA = ",".join(f"127.0.0.1{n}:19092" for n in NODES)
# The fast text model when the catalog has it: the pipeline under test is the same for any.
FAST_MODELS = ("minilm-l3", "minilm-l6")
PARTITIONS = 6
KFC_INSTANCES = 3
# KafkaConfig's default session timeout (KFC_QUEUE__KAFKA__SESSION_TIMEOUT_S), kept as shipped.
SESSION_TIMEOUT_S = 10.0
DEADLINE_S = 8.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.cluster)


# --- the ring and the brokers ----------------------------------------------------------------


@dataclass
class Ring:
    """The devstack cluster, driven through cluster.sh."""

    def run(self, *args: str, timeout_s: float = 600) -> str:
        done = subprocess.run(
            [str(CLUSTER_SH), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise RuntimeError(f"cluster.sh {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def running(self) -> bool:
        return (
            subprocess.run(
                [str(CLUSTER_SH), "status"], capture_output=True, timeout=60, check=False
            ).returncode
            == 0
        )

    def kill(self, server: str) -> None:
        """SIGKILL, e.g. ``kill("cassandra3")``: no shutdown code runs."""
        self.run("kill", server)

    def start(self, server: str) -> float:
        """Start one server again; seconds until devstack.sh calls it ready."""
        started = time.monotonic()
        self.run("start", server)
        return time.monotonic() - started

    def log(self, server: str) -> Path:
        kind, n = server[:-1], server[-1]
        return ROOT / f"node{n}" / kind / "server.log"


@pytest.fixture(scope="session")
def ring() -> Iterator[Ring]:
    ring = Ring()
    started_here = not ring.running()
    if started_here:
        ring.run("start", timeout_s=900)
    try:
        yield ring
    finally:
        if started_here and os.environ.get("DEVSTACK_CLUSTER_KEEP") != "1":
            ring.run("stop", timeout_s=300)


# --- the processes on it ---------------------------------------------------------------------


@dataclass
class ClusterStack:
    ring: Ring
    model: str
    keyspace: str
    jobs_topic: str
    group_id: str
    embark: ServiceProcess
    retina: ServiceProcess
    kfcs: list[ServiceProcess]
    make_kfc: Callable[[int], ServiceProcess]
    logs: Path
    kfc_serial: list[int] = field(default_factory=lambda: [KFC_INSTANCES])

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.embark.health_port}"

    def alive(self) -> dict[str, bool]:
        procs = [self.embark, self.retina, *self.kfcs]
        return {p.name: p.proc is not None and p.proc.poll() is None for p in procs}

    def ask(self, texts: list[str], timeout_s: float = 30.0) -> list[tuple[str, str]]:
        """(status, key) per text, in batches of 500."""
        with EmbarkClient(self.target, timeout_s=timeout_s) as client:
            out: list[tuple[str, str]] = []
            for i in range(0, len(texts), 500):
                chunk = [make_input(text=t) for t in texts[i : i + 500]]
                out.extend((a.status, a.key) for a in client.get_many(self.model, chunk))
            return out

    def store_all(self, texts: list[str], timeout_s: float = 180.0) -> float:
        """Ask for ``texts`` (queueing the misses) and wait until every one is a HIT."""
        self.ask(texts)
        return wait_for(lambda: {s for s, _ in self.ask(texts)} == {"HIT"}, timeout_s, 1.0)

    def stored(self, keys: list[str]) -> set[str]:
        """The keys among ``keys`` the archive holds, read at LOCAL_QUORUM straight from it."""
        return asyncio.run(_stored(self.keyspace, keys))

    def rows(self) -> list[tuple[str, str]]:
        """(key, input) of every row of the keyspace's embeddings table."""
        return asyncio.run(_rows(self.keyspace))

    def group(self) -> tuple[int, set[int]]:
        """(members, assigned partitions) of the KFC consumer group, as the broker sees it."""
        admin = AdminClient({"bootstrap.servers": KAFKA})
        desc = admin.describe_consumer_groups([self.group_id])[self.group_id].result(timeout=10)
        parts = {tp.partition for m in desc.members for tp in m.assignment.topic_partitions}
        return len(desc.members), parts


def _store_config(keyspace: str) -> CassandraConfig:
    return CassandraConfig(
        contact_points=CQL,
        keyspace=keyspace,
        read_consistency="LOCAL_QUORUM",
        request_timeout_s=20.0,
        max_concurrent_requests=16,
    )


async def _stored(keyspace: str, keys: list[str]) -> set[str]:
    store = await open_cassandra_store(_store_config(keyspace))
    try:
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            for attempt in range(5):
                try:
                    got = await store.get_many(keys[i : i + 500])
                    break
                except EmbarkError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(1)
            found.update(k for k, v in got.items() if isinstance(v, StoredVector))
        return found
    finally:
        await store.close()


async def _rows(keyspace: str) -> list[tuple[str, str]]:
    from tests.integration.servers import cassandra_cluster

    cluster = cassandra_cluster("127.0.0.11", 19042)
    try:
        session = cluster.connect()
        result = session.execute(f"SELECT key, input FROM {keyspace}.embeddings", timeout=60)
        return [(row.key, row.input) for row in result]
    finally:
        cluster.shutdown()


def wait_for(predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.2) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


def cluster_env(prefix: str) -> dict[str, str]:
    """docs/cluster.md's settings: replication 3 everywhere, LOCAL_QUORUM reads and writes."""
    return {
        f"{prefix}_STORE__BACKEND": "cassandra",
        f"{prefix}_STORE__CASSANDRA__CONTACT_POINTS": json.dumps(list(CQL)),
        f"{prefix}_STORE__CASSANDRA__REPLICATION": json.dumps(
            {"class": "NetworkTopologyStrategy", "datacenter1": 3}
        ),
        f"{prefix}_STORE__CASSANDRA__READ_CONSISTENCY": "LOCAL_QUORUM",
        f"{prefix}_STORE__CASSANDRA__WRITE_CONSISTENCY": "LOCAL_QUORUM",
        f"{prefix}_QUEUE__BACKEND": "kafka",
        f"{prefix}_QUEUE__KAFKA__BOOTSTRAP_SERVERS": KAFKA,
        f"{prefix}_QUEUE__KAFKA__REPLICATION_FACTOR": "3",
        f"{prefix}_QUEUE__KAFKA__MIN_INSYNC_REPLICAS": "2",
        f"{prefix}_QUEUE__KAFKA__PARTITIONS": str(PARTITIONS),
        # Three JVMs per kind plus five processes on two shared cores: a quorum read or write
        # can take seconds when the box is saturated (load average 15-25 seen). These tests
        # are about losing a node, not about latency, so the store gets time to answer.
        f"{prefix}_STORE__CASSANDRA__REQUEST_TIMEOUT_S": "10",
    }


@pytest.fixture(scope="module")
def cluster_stack(
    ring: Ring, built_artifacts: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterStack]:
    catalog = built_artifacts / "catalog.json"
    served = {m["name"] for m in json.loads(catalog.read_text())["models"]}
    model = next(m for m in FAST_MODELS if m in served)
    suffix = uuid.uuid4().hex[:8]
    keyspace, jobs, dlq, group = f"cl_{suffix}", f"jobs-{suffix}", f"dlq-{suffix}", f"kfc-{suffix}"
    logs = tmp_path_factory.mktemp("cluster-logs")
    retina_port, embark_port = free_port(), free_port()

    def env(prefix: str) -> dict[str, str]:
        return {
            **cluster_env(prefix),
            f"{prefix}_CATALOG": str(catalog),
            f"{prefix}_STORE__CASSANDRA__KEYSPACE": keyspace,
            f"{prefix}_QUEUE__KAFKA__JOBS_TOPIC": jobs,
            f"{prefix}_QUEUE__KAFKA__DEAD_LETTER_TOPIC": dlq,
            f"{prefix}_QUEUE__KAFKA__GROUP_ID": group,
            f"{prefix}_RETINA_ADDRESS": f"127.0.0.1:{retina_port}",
        }

    schema = subprocess.run(
        [sys.executable, "-m", "embark", "schema", "apply"],
        env={**os.environ, **env("EMBARK")},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert schema.returncode == 0, schema.stderr

    def make_kfc(n: int) -> ServiceProcess:
        kfc_env = {**env("KFC"), "KFC_HEALTH_PORT": str(free_port()), "KFC_BACKOFF_MAX_S": "2"}
        return ServiceProcess(
            f"kfc{n}", ["kfc", "run"], kfc_env, int(kfc_env["KFC_HEALTH_PORT"]), logs
        )

    retina_env = {
        "RETINA_ARTIFACTS_DIR": str(built_artifacts),
        "RETINA_PORT": str(retina_port),
        "RETINA_MODELS": model,
    }
    retina = ServiceProcess("retina", ["retina", "serve"], retina_env, retina_port, logs)
    embark_env = {
        **env("EMBARK"),
        "EMBARK_PORT": str(embark_port),
        # No hot LRU: every hit below is a read of the ring, which is what a node loss tests.
        "EMBARK_CACHE_BYTES": "0",
        # A lookup slower than this is answered OOV + UNAVAILABLE (not HIT): 4 s instead of
        # 250 ms, for the saturated box (above); the callers' deadline is DEADLINE_S.
        "EMBARK_LOOKUP_TIMEOUT_MS": "4000",
    }
    embark = ServiceProcess("embark", ["embark", "serve"], embark_env, embark_port, logs)
    procs: list[ServiceProcess] = []
    stack = ClusterStack(ring, model, keyspace, jobs, group, embark, retina, [], make_kfc, logs)
    try:
        for proc in (retina, embark):
            procs.append(proc.start(timeout_s=180))
        stack.kfcs = [make_kfc(n).start(timeout_s=180) for n in range(KFC_INSTANCES)]
        yield stack
    finally:
        for proc in [*stack.kfcs, embark, retina]:
            proc.terminate()
        _drop(keyspace, [jobs, dlq])


def _drop(keyspace: str, topics: list[str]) -> None:
    from tests.integration.servers import cassandra_cluster

    try:
        cluster = cassandra_cluster("127.0.0.11", 19042)
        try:
            cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
        finally:
            cluster.shutdown()
        admin = AdminClient({"bootstrap.servers": KAFKA})
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            future.result(timeout=60)
    except Exception as exc:  # cleanup of a throwaway cluster: report it, go on
        print(f"cleanup of {keyspace} / {topics} failed: {exc!r}")


@pytest.fixture(autouse=True)
def _print_logs_on_failure(
    request: pytest.FixtureRequest, cluster_stack: ClusterStack
) -> Iterator[None]:
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        for proc in (cluster_stack.embark, *cluster_stack.kfcs, cluster_stack.retina):
            print(f"----- {proc.name} log -----\n{proc.tail(80)}")
        for server in ("cassandra3", "kafka1"):
            print(f"----- {server} log -----\n{log_tail(cluster_stack.ring.log(server), 40)}")
