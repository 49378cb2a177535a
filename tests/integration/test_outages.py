"""Faults under load, on a PRIVATE real Cassandra and Kafka (never the shared devstack servers,
which other sessions use): this module starts its own pair with devstack.sh on free ports under
a temporary DEVSTACK_DIR (reusing the jars of .devstack/ when present), stops and restarts them
to cause the outages, and stops them at the end.

What each test shows, with the figures it prints (-s, or in the report of a failure):

* Retina killed and restarted: KFC backs off (kfc_transient_errors{cause="encode"}), commits
  nothing while Retina is down, and stores every job after the restart.
* KFC SIGKILLed at random moments during a run of 10,000 jobs: every job is stored (counted by
  batched reads of the archive).
* Kafka stopped for 30 s: hits keep being served; misses are buffered up to the bound and
  delivered after the restart; the ones beyond the bound are answered DROPPED and counted in
  embark_misses_dropped; asked again after the restart, they are stored too.
* Cassandra stopped for 30 s under steady load: every call answers within its deadline (HIT from
  the hot LRU, or OOV + UNAVAILABLE), no process dies, normal service returns within 10 s of the
  restart, and the misses queued during the outage are stored afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from embark.client import EmbarkClient, make_input
from embark.errors import EmbarkError
from embark.store.base import StoredVector
from embark.store.cassandra import CassandraConfig, open_cassandra_store
from tests.integration.processes import ServiceProcess, free_port
from tests.integration.servers import DEVSTACK_SH, REPO_ROOT, log_tail

pytestmark = [pytest.mark.outage, pytest.mark.timeout(900)]

# The fast text model (paraphrase-MiniLM-L3) when the catalog has it: 10,000 jobs must encode
# in well under a minute on two busy cores. The pipeline under test is the same for any model.
FAST_MODELS = ("minilm-l3", "minilm-l6")
MODEL = FAST_MODELS[0]
OUTAGE_S = 30.0
DEADLINE_S = 2.0  # each load call's gRPC deadline
BUFFER_BOUND = 2000  # EmbArk's Kafka producer buffer (EMBARK_QUEUE__KAFKA__BUFFER_MAX_MESSAGES)
PARTITIONS = 3
KILL_JOBS = 10_000
# Answers that mean "a job was queued": PENDING, or UNAVAILABLE when a big batch's lookup
# outran the lookup timeout (its misses are queued all the same).
QUEUED = {"PENDING", "UNAVAILABLE"}


# --- the private Cassandra and Kafka ---------------------------------------------------------


@dataclass
class PrivateServers:
    root: Path
    env: dict[str, str]
    cql_port: int
    kafka_port: int

    def devstack(self, command: str, server: str, timeout_s: float = 300) -> float:
        """Run devstack.sh COMMAND SERVER against this private instance; returns seconds."""
        started = time.monotonic()
        result = subprocess.run(
            [str(DEVSTACK_SH), command, server],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"devstack.sh {command} {server} failed:\n{result.stdout}{result.stderr}\n"
                f"{log_tail(self.root / server / 'server.log')}"
            )
        return time.monotonic() - started

    def start_both(self) -> None:
        # In parallel: each server has its own lock, and the start-up is mostly waiting.
        procs = [
            subprocess.Popen(
                [str(DEVSTACK_SH), "start", server],
                env={**os.environ, **self.env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            for server in ("cassandra", "kafka")
        ]
        for proc in procs:
            out, _ = proc.communicate(timeout=400)
            if proc.returncode != 0:
                text = out.decode(errors="replace")
                raise RuntimeError(f"private devstack start failed:\n{text}")


@pytest.fixture(scope="module")
def private_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateServers]:
    root = tmp_path_factory.mktemp("devstack")
    for server in ("cassandra", "kafka"):
        shared_lib = REPO_ROOT / ".devstack" / server / "lib"
        (root / server).mkdir()
        if (shared_lib / ".pom.sha256").exists():
            # The jars are read-only at run time: share them instead of fetching again.
            (root / server / "lib").symlink_to(shared_lib)
    cql, storage, kafka, controller = free_port(), free_port(), free_port(), free_port()
    env = {
        "DEVSTACK_DIR": str(root),
        "DEVSTACK_CQL_PORT": str(cql),
        "DEVSTACK_CASSANDRA_STORAGE_PORT": str(storage),
        "DEVSTACK_KAFKA_PORT": str(kafka),
        "DEVSTACK_KAFKA_CONTROLLER_PORT": str(controller),
        "DEVSTACK_CASSANDRA_JMX_PORT": "",
    }
    servers = PrivateServers(root, env, cql, kafka)
    started = time.monotonic()
    try:
        servers.start_both()
        took = time.monotonic() - started
        print(f"private Cassandra :{cql} and Kafka :{kafka} up in {took:.1f}s")
        yield servers
    finally:
        with_timeout = {**os.environ, **env}
        subprocess.run(
            [str(DEVSTACK_SH), "stop", "all"],
            env=with_timeout,
            capture_output=True,
            timeout=180,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        shutil.rmtree(root, ignore_errors=True)


# --- the three processes on them -------------------------------------------------------------


@dataclass
class Stack:
    servers: PrivateServers
    embark: ServiceProcess
    retina: ServiceProcess
    kfc: ServiceProcess
    client: EmbarkClient
    keyspace: str
    jobs_topic: str
    group_id: str
    embark_metrics_port: int
    kfc_metrics_port: int
    make_kfc: Callable[[], ServiceProcess]
    make_retina: Callable[[], ServiceProcess]

    def alive(self) -> dict[str, bool]:
        return {
            p.name: p.proc is not None and p.proc.poll() is None
            for p in (self.embark, self.retina, self.kfc)
        }

    def statuses(self, texts: list[str], timeout_s: float = 30.0) -> list[str]:
        client = EmbarkClient(self.client_target, timeout_s=timeout_s)
        try:
            out: list[str] = []
            for i in range(0, len(texts), 1000):
                chunk = [make_input(text=t) for t in texts[i : i + 1000]]
                out.extend(r.status for r in client.get_many(MODEL, chunk))
            return out
        finally:
            client.close()

    @property
    def client_target(self) -> str:
        return f"127.0.0.1:{self.embark.health_port}"

    def committed(self) -> list[int]:
        consumer = Consumer(
            {
                "bootstrap.servers": f"127.0.0.1:{self.servers.kafka_port}",
                "group.id": self.group_id,
                "enable.auto.commit": False,
            }
        )
        try:
            parts = [TopicPartition(self.jobs_topic, p) for p in range(PARTITIONS)]
            return [tp.offset for tp in consumer.committed(parts, timeout=10)]
        finally:
            consumer.close()

    def count_stored(self, keys: list[str]) -> int:
        """Stored vectors among ``keys``, by batched reads of the archive itself (retried: the
        archive is busy with KFC's writes on a 2-core box)."""

        async def count() -> int:
            config = CassandraConfig(
                contact_points=(f"127.0.0.1:{self.servers.cql_port}",),
                keyspace=self.keyspace,
                request_timeout_s=20.0,
                max_concurrent_requests=16,
            )
            store = await open_cassandra_store(config)
            try:
                total = 0
                for i in range(0, len(keys), 1000):
                    for attempt in range(5):
                        try:
                            found = await store.get_many(keys[i : i + 1000])
                            break
                        except EmbarkError:
                            if attempt == 4:
                                raise
                            await asyncio.sleep(1)
                    total += sum(isinstance(v, StoredVector) for v in found.values())
                return total
            finally:
                await store.close()

        return asyncio.run(count())


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(port: int, name: str, **labels: str) -> float:
    return scrape(port).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def stack(
    private_servers: PrivateServers,
    built_artifacts: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    global MODEL
    served = {
        m["name"] for m in json.loads((built_artifacts / "catalog.json").read_text())["models"]
    }
    MODEL = next(m for m in FAST_MODELS if m in served)
    suffix = uuid.uuid4().hex[:8]
    keyspace, jobs, dlq, group = f"out_{suffix}", f"jobs-{suffix}", f"dlq-{suffix}", f"kfc-{suffix}"
    logs = tmp_path_factory.mktemp("outage-logs")
    retina_port, embark_port, kfc_health = free_port(), free_port(), free_port()
    embark_metrics, kfc_metrics = free_port(), free_port()

    def backends(prefix: str) -> dict[str, str]:
        return {
            f"{prefix}_CATALOG": str(built_artifacts / "catalog.json"),
            f"{prefix}_STORE__BACKEND": "cassandra",
            f"{prefix}_STORE__CASSANDRA__CONTACT_POINTS": json.dumps(
                [f"127.0.0.1:{private_servers.cql_port}"]
            ),
            f"{prefix}_STORE__CASSANDRA__KEYSPACE": keyspace,
            f"{prefix}_STORE__CASSANDRA__REPLICATION": json.dumps(
                {"class": "SimpleStrategy", "replication_factor": 1}
            ),
            f"{prefix}_QUEUE__BACKEND": "kafka",
            f"{prefix}_QUEUE__KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{private_servers.kafka_port}",
            f"{prefix}_QUEUE__KAFKA__JOBS_TOPIC": jobs,
            f"{prefix}_QUEUE__KAFKA__DEAD_LETTER_TOPIC": dlq,
            f"{prefix}_QUEUE__KAFKA__PARTITIONS": str(PARTITIONS),
            f"{prefix}_QUEUE__KAFKA__GROUP_ID": group,
            f"{prefix}_RETINA_ADDRESS": f"127.0.0.1:{retina_port}",
        }

    schema = subprocess.run(
        [sys.executable, "-m", "embark", "schema", "apply"],
        env={**os.environ, **backends("EMBARK")},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert schema.returncode == 0, schema.stderr

    def make_retina() -> ServiceProcess:
        env = {
            "RETINA_ARTIFACTS_DIR": str(built_artifacts),
            "RETINA_PORT": str(retina_port),
            "RETINA_MODELS": MODEL,
        }
        return ServiceProcess("retina", ["retina", "serve"], env, retina_port, logs)

    def make_kfc() -> ServiceProcess:
        env = {
            **backends("KFC"),
            "KFC_HEALTH_PORT": str(kfc_health),
            "KFC_METRICS_PORT": str(kfc_metrics),
            # Short enough that a test sees recovery within seconds of a restart.
            "KFC_BACKOFF_MAX_S": "2",
            # A SIGKILLed member's partitions move after this (the broker's minimum is 6 s).
            "KFC_QUEUE__KAFKA__SESSION_TIMEOUT_S": "6",
        }
        return ServiceProcess("kfc", ["kfc", "run"], env, kfc_health, logs)

    embark_env = {
        **backends("EMBARK"),
        "EMBARK_PORT": str(embark_port),
        "EMBARK_METRICS_PORT": str(embark_metrics),
        "EMBARK_QUEUE__KAFKA__BUFFER_MAX_MESSAGES": str(BUFFER_BOUND),
        # Batches of up to 1000 keys (2000 point reads) on a busy 2-core box; single calls
        # still get OOV + UNAVAILABLE well within DEADLINE_S when the archive is down.
        "EMBARK_LOOKUP_TIMEOUT_MS": "1000",
    }
    retina = make_retina().start(timeout_s=180)
    embark = ServiceProcess("embark", ["embark", "serve"], embark_env, embark_port, logs)
    embark.start(timeout_s=180)
    kfc = make_kfc().start(timeout_s=180)
    client = EmbarkClient(f"127.0.0.1:{embark_port}", timeout_s=DEADLINE_S)
    the_stack = Stack(
        private_servers,
        embark,
        retina,
        kfc,
        client,
        keyspace,
        jobs,
        group,
        embark_metrics,
        kfc_metrics,
        make_kfc,
        make_retina,
    )
    try:
        yield the_stack
    finally:
        client.close()
        for proc in (the_stack.kfc, embark, the_stack.retina):
            proc.terminate()


@pytest.fixture(autouse=True)
def _print_logs_on_failure(request: pytest.FixtureRequest, stack: Stack) -> Iterator[None]:
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        for proc in (stack.embark, stack.kfc, stack.retina):
            print(f"----- {proc.name} log -----\n{proc.tail(120)}")


def wait_for(predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.2) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


def texts(tag: str, n: int) -> list[str]:
    run = uuid.uuid4().hex[:6]
    return [f"{tag} item {i} {run}" for i in range(n)]


def store_all(stack: Stack, items: list[str], timeout_s: float = 120.0) -> float:
    """Ask for ``items`` (queueing the misses) and wait until every one is a HIT."""
    stack.statuses(items)
    return wait_for(lambda: set(stack.statuses(items)) == {"HIT"}, timeout_s, every_s=1.0)


# --- steady load -----------------------------------------------------------------------------


@dataclass
class Call:
    at: float
    phase: str
    kind: str  # "known" (stored before the outage) or "fresh" (never seen)
    text: str
    status: str  # an answer's status, or "error:<CODE>"
    seconds: float


@dataclass
class Load:
    """One known and one fresh GetEmbedding about every 100 ms, each with DEADLINE_S."""

    target: str
    known: list[str]
    phase: str = "before"
    calls: list[Call] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)

    def _run(self) -> None:
        client = EmbarkClient(self.target, timeout_s=DEADLINE_S)
        run = uuid.uuid4().hex[:6]
        n = 0
        try:
            while not self._stop.is_set():
                fresh = f"load fresh {n} {run}"
                for kind, text in (("known", self.known[n % len(self.known)]), ("fresh", fresh)):
                    phase = self.phase
                    started = time.monotonic()
                    try:
                        answer = client.get(MODEL, text=text)
                        # UNAVAILABLE (a slow lookup) whose reason says the miss was dropped
                        # too counts as a drop, as embark_misses_dropped does.
                        dropped = "queue is full" in answer.reason
                        status = "DROPPED" if dropped else answer.status
                    except EmbarkError as exc:
                        status = f"error:{exc.code.name}"
                    self.calls.append(
                        Call(started, phase, kind, text, status, time.monotonic() - started)
                    )
                n += 1
                self._stop.wait(0.1)
        finally:
            client.close()

    def summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter[str]] = {}
        for call in self.calls:
            out.setdefault(f"{call.phase}/{call.kind}", Counter())[call.status] += 1
        return {k: dict(v) for k, v in sorted(out.items())}


# --- the tests -------------------------------------------------------------------------------


def test_retina_killed_kfc_backs_off_commits_nothing_and_loses_nothing(stack: Stack) -> None:
    store_all(stack, texts("warm-up", 5))  # the pipeline works, and offsets exist
    transient_before = metric(stack.kfc_metrics_port, "kfc_transient_errors_total", cause="encode")
    stack.retina.kill()
    committed_before = stack.committed()
    items = texts("retina down", 200)
    assert set(stack.statuses(items)) <= QUEUED

    time.sleep(10)  # Retina stays down; KFC keeps retrying
    committed_during = stack.committed()
    transient = (
        metric(stack.kfc_metrics_port, "kfc_transient_errors_total", cause="encode")
        - transient_before
    )
    stored_during = stack.statuses(items).count("HIT")
    assert stack.alive()["kfc"]
    assert stack.alive()["embark"]
    assert committed_during == committed_before, "KFC committed while Retina was down"
    assert stored_during == 0
    assert transient >= 2, "KFC did not back off and retry"

    restart = time.monotonic()
    stack.retina = stack.make_retina().start(timeout_s=180)
    serving = time.monotonic() - restart
    drained = wait_for(lambda: set(stack.statuses(items)) == {"HIT"}, timeout_s=120, every_s=0.5)
    lost = len(items) - stack.count_stored([stack.client.get(MODEL, text=t).key for t in items])
    print(
        f"\nRETINA: down ~{10 + serving:.0f}s; {len(items)} jobs queued meanwhile; "
        f"KFC retries (cause=encode) {transient:.0f}; offsets committed meanwhile: "
        f"{sum(committed_during) - sum(committed_before)}; stored while down: {stored_during}; "
        f"all stored {drained:.1f}s after Retina was SERVING again (restart took {serving:.1f}s); "
        f"jobs lost: {lost}"
    )
    assert lost == 0


def test_kfc_sigkilled_at_random_moments_loses_none_of_10000_jobs(stack: Stack) -> None:
    seed = int(os.environ.get("EMBARK_TEST_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    items = texts("kill run", KILL_JOBS)
    keys: list[str] = []
    enqueue_started = time.monotonic()
    with EmbarkClient(stack.client_target, timeout_s=60) as client:
        for i in range(0, KILL_JOBS, 1000):
            answers = client.get_many(MODEL, [make_input(text=t) for t in items[i : i + 1000]])
            assert {a.status for a in answers} <= QUEUED
            keys.extend(a.key for a in answers)
    enqueued_s = time.monotonic() - enqueue_started
    started = time.monotonic()
    sample = rng.sample(keys, 300)
    kills: list[tuple[float, float]] = []  # (seconds into the run, share stored at the kill)
    for _ in range(rng.randint(3, 5)):
        time.sleep(rng.uniform(0.5, 3.0))
        stack.kfc.kill()
        kills.append((time.monotonic() - started, stack.count_stored(sample) / len(sample)))
        stack.kfc = stack.make_kfc().start(timeout_s=120)
    drained = wait_for(lambda: stack.count_stored(keys) == KILL_JOBS, timeout_s=300, every_s=3)
    stored = stack.count_stored(keys)
    print(
        f"\nKFC KILLS (seed {seed}): {KILL_JOBS} jobs enqueued in {enqueued_s:.1f}s; "
        f"SIGKILLs at (s into the run, share stored by a 300-key sample) "
        f"{[(round(t, 1), round(share, 2)) for t, share in kills]}; "
        f"all stored {time.monotonic() - started:.1f}s after the run began "
        f"({drained:.1f}s after the last restart); stored {stored}/{KILL_JOBS}, "
        f"jobs lost: {KILL_JOBS - stored}"
    )
    assert kills[0][1] < 1.0, "the run was over before the first kill"
    assert stored == KILL_JOBS


def test_kafka_down_hits_served_misses_buffered_to_the_bound_and_the_rest_counted(
    stack: Stack,
) -> None:
    known = texts("kafka known", 5)
    store_all(stack, known)
    dropped_before = metric(stack.embark_metrics_port, "embark_misses_dropped_total", model=MODEL)
    beyond = 500
    misses = texts("kafka down", BUFFER_BOUND + beyond)
    with Load(stack.client_target, known) as load:
        time.sleep(2)
        stop_s = stack.servers.devstack("stop", "kafka")
        load.phase = "outage"
        outage_started = time.monotonic()
        time.sleep(3)  # let the producer notice
        statuses: list[str] = []
        with EmbarkClient(stack.client_target, timeout_s=DEADLINE_S * 5) as client:
            for i in range(0, len(misses), 500):
                chunk = [make_input(text=t) for t in misses[i : i + 500]]
                # DROPPED, or UNAVAILABLE (a slow lookup) whose reason says it was dropped too.
                statuses.extend(
                    "DROPPED" if "queue is full" in r.reason else r.status
                    for r in client.get_many(MODEL, chunk)
                )
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
        outage_s = time.monotonic() - outage_started
        start_s = stack.servers.devstack("start", "kafka")
        load.phase = "after"
        time.sleep(2)
    dropped_metric = (
        metric(stack.embark_metrics_port, "embark_misses_dropped_total", model=MODEL)
        - dropped_before
    )
    counts = Counter(statuses)
    load_dropped = sum(c.status == "DROPPED" for c in load.calls)
    pending = [t for t, s in zip(misses, statuses, strict=True) if s in QUEUED]
    dropped = [t for t, s in zip(misses, statuses, strict=True) if s == "DROPPED"]
    restarted = time.monotonic()
    delivered = wait_for(
        lambda: set(stack.statuses(pending)) == {"HIT"}, timeout_s=180, every_s=1.0
    )
    retried = store_all(stack, dropped)  # asked again, the dropped ones are queued and stored
    outage_calls = [c for c in load.calls if c.phase == "outage"]
    print(
        f"\nKAFKA: stop {stop_s:.1f}s, down {outage_s:.1f}s (+{start_s:.1f}s restart); "
        f"load calls by phase/kind/status {load.summary()}; slowest call "
        f"{max(c.seconds for c in load.calls) * 1000:.0f} ms; misses during the outage "
        f"{dict(counts)} (bound {BUFFER_BOUND}); embark_misses_dropped +{dropped_metric:.0f}; "
        f"buffered misses all stored {time.monotonic() - restarted:.1f}s after the restart "
        f"(delivered+encoded in {delivered:.1f}s); dropped ones stored {retried:.1f}s after "
        f"being asked again; processes alive {stack.alive()}"
    )
    assert all(stack.alive().values())
    assert outage_calls
    assert all(c.status == "HIT" for c in outage_calls if c.kind == "known")
    assert all(not c.status.startswith("error") for c in load.calls)
    assert set(counts) <= {"PENDING", "UNAVAILABLE", "DROPPED"}
    assert counts["DROPPED"] >= beyond  # beyond the bound: answered DROPPED ...
    # ... and counted, one for one (the steady load's fresh misses were dropped too)
    assert dropped_metric == counts["DROPPED"] + load_dropped
    assert len(pending) <= BUFFER_BOUND


def test_cassandra_down_every_call_answers_in_time_and_service_returns(stack: Stack) -> None:
    known = texts("cassandra known", 5)
    store_all(stack, known)
    for text in known:  # into EmbArk's hot LRU, as a steady workload's hits would be
        assert stack.client.get(MODEL, text=text).hit
    errors_before = metric(
        stack.embark_metrics_port, "embark_store_errors_total", reason="unavailable"
    ) + metric(stack.embark_metrics_port, "embark_store_errors_total", reason="timeout")
    with Load(stack.client_target, known) as load:
        time.sleep(2)
        load.phase = "stopping"
        stop_s = stack.servers.devstack("stop", "cassandra")
        load.phase = "outage"
        time.sleep(OUTAGE_S)
        load.phase = "restarting"
        start_s = stack.servers.devstack("start", "cassandra")
        load.phase = "after"

        def store_answers() -> bool:
            fresh = f"cassandra probe {uuid.uuid4().hex}"
            return stack.client.get(MODEL, text=fresh).status == "PENDING"

        recovery = wait_for(store_answers, timeout_s=60, every_s=0.1)
        time.sleep(2)
    store_errors = (
        metric(stack.embark_metrics_port, "embark_store_errors_total", reason="unavailable")
        + metric(stack.embark_metrics_port, "embark_store_errors_total", reason="timeout")
        - errors_before
    )
    down = [c for c in load.calls if c.phase == "outage"]
    outage_misses = sorted({c.text for c in down if c.kind == "fresh"})
    stored_after = wait_for(
        lambda: set(stack.statuses(outage_misses)) == {"HIT"}, timeout_s=120, every_s=1.0
    )
    late = [c for c in load.calls if c.seconds > DEADLINE_S]
    print(
        f"\nCASSANDRA: stop {stop_s:.1f}s, down {OUTAGE_S:.0f}s, restart {start_s:.1f}s; "
        f"load calls by phase/kind/status {load.summary()}; slowest call "
        f"{max(c.seconds for c in load.calls) * 1000:.0f} ms (deadline {DEADLINE_S * 1000:.0f}); "
        f"embark_store_errors +{store_errors:.0f}; normal service {recovery:.1f}s after the "
        f"restart; {len(outage_misses)} misses queued during the outage all stored "
        f"{stored_after:.1f}s later; processes alive {stack.alive()}"
    )
    assert all(stack.alive().values())
    assert all(not c.status.startswith("error") for c in load.calls), late
    assert not late
    assert down
    assert {c.status for c in down} <= {"HIT", "UNAVAILABLE"}
    assert any(c.status == "UNAVAILABLE" for c in down)
    assert recovery <= 10.0
