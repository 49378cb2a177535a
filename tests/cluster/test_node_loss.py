"""Node loss under load on the devstack cluster (three Cassandra nodes, three Kafka brokers, three
KFC instances), with the settings of docs/cluster.md. Each test prints its figures (run with -s;
they are in the report of a failure too):

* a Cassandra node SIGKILLed under read and write load: every hit is still answered HIT, no
  write is lost, the node rejoins, and the writes it missed reach it by hinted handoff (the
  survivors' hints for it are replayed and gone);
* a Kafka broker SIGKILLed during a burst of misses: every miss is queued (PENDING), none is
  lost, no vector is stored under a second key, and KFC keeps consuming while it is down;
* one of three KFC instances SIGKILLed mid-backlog: its partitions move to the other two within
  the session timeout (plus the rebalance itself), and nothing is lost.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import WhiteListRoundRobinPolicy
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from embark.client import EmbarkClient, make_input
from embark.errors import EmbarkError
from tests.cluster.conftest import (
    DEADLINE_S,
    KAFKA,
    PARTITIONS,
    SESSION_TIMEOUT_S,
    ClusterStack,
    wait_for,
)

pytestmark = pytest.mark.timeout(900)

# Answers that mean "a job was queued".
QUEUED = {"PENDING"}


def texts(tag: str, n: int) -> list[str]:
    run = uuid.uuid4().hex[:6]
    return [f"{tag} item {i} {run}" for i in range(n)]


@dataclass
class Call:
    phase: str
    kind: str  # "hit" (stored before) or "miss" (never seen: KFC writes it)
    text: str
    status: str  # the answer's status, or "error:<CODE>"
    seconds: float


@dataclass
class Load:
    """Reads and writes at once: every ~100 ms a batch of 8 stored items (each must be HIT) and
    one never-seen item (a miss, which KFC then writes at LOCAL_QUORUM)."""

    stack: ClusterStack
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
        client = EmbarkClient(self.stack.target, timeout_s=DEADLINE_S)
        run = uuid.uuid4().hex[:6]
        n = 0
        try:
            while not self._stop.is_set():
                batch = [self.known[(n * 8 + i) % len(self.known)] for i in range(8)]
                for kind, items in (("hit", batch), ("miss", [f"load miss {n} {run}"])):
                    phase, started = self.phase, time.monotonic()
                    try:
                        answers = client.get_many(
                            self.stack.model, [make_input(text=t) for t in items]
                        )
                        statuses = [a.status for a in answers]
                    except EmbarkError as exc:
                        statuses = [f"error:{exc.code.name}"] * len(items)
                    took = time.monotonic() - started
                    self.calls.extend(
                        Call(phase, kind, t, s, took) for t, s in zip(items, statuses, strict=True)
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


def pending_hints(node: int) -> int:
    """Hint files node ``node`` still holds for other nodes (its virtual table, node-local)."""
    profile = ExecutionProfile(
        load_balancing_policy=WhiteListRoundRobinPolicy([f"127.0.0.1{node}"]), request_timeout=20
    )
    cluster = Cluster(
        [f"127.0.0.1{node}"], port=19042, execution_profiles={EXEC_PROFILE_DEFAULT: profile}
    )
    try:
        rows = cluster.connect().execute("SELECT files FROM system_views.pending_hints")
        return sum(int(row.files) for row in rows)
    finally:
        cluster.shutdown()


def _lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines()


def test_cassandra_node_killed_under_load_every_hit_answered_and_no_write_lost(
    cluster_stack: ClusterStack,
) -> None:
    stack = cluster_stack
    known = texts("ring known", 200)
    stack.store_all(known)
    victim, victim_node = "cassandra3", 3
    survivor_logs = [stack.ring.log(f"cassandra{n}") for n in (1, 2)]
    log_lines_before = [len(_lines(path)) for path in survivor_logs]
    with Load(stack, known) as load:
        time.sleep(3)
        load.phase = "down"
        stack.ring.kill(victim)
        killed = time.monotonic()
        time.sleep(20)
        # The writes the dead replica missed, kept by the coordinators as hints.
        hints_while_down = pending_hints(1) + pending_hints(2)
        load.phase = "rejoining"
        restart_s = stack.ring.start(victim)
        load.phase = "after"
        time.sleep(5)
    down_s = time.monotonic() - killed
    # Hinted handoff: the survivors replay the writes the dead node missed once gossip sees
    # it again; then they hold no hint files for it.
    replayed = wait_for(lambda: pending_hints(1) + pending_hints(2) == 0, 120, 1.0)
    hinted_log = sum(  # this outage's lines only: the logs outlive a test run
        "Finished hinted handoff" in line and f"127.0.0.1{victim_node}" in line
        for path, before in zip(survivor_logs, log_lines_before, strict=True)
        for line in _lines(path)[before:]
    )
    misses = sorted({c.text for c in load.calls if c.kind == "miss"})
    answers = stack.ask(misses)
    stored_wait = wait_for(
        lambda: {s for s, _ in stack.ask(misses)} == {"HIT"}, timeout_s=180, every_s=1.0
    )
    lost = len(misses) - len(stack.stored([k for _, k in stack.ask(misses)]))
    hits = [c for c in load.calls if c.kind == "hit"]
    not_hit = [c for c in hits if c.status != "HIT"]
    print(
        f"\nCASSANDRA NODE LOSS: {victim} SIGKILLed under load, {down_s:.1f}s from the kill to "
        f"the end of the load (restart began 20 s in and took {restart_s:.1f}s); "
        f"hit reads by phase {load.summary()}; "
        f"{len(hits)} hit reads, {len(not_hit)} not HIT; slowest call "
        f"{max(c.seconds for c in load.calls) * 1000:.0f} ms; {len(misses)} misses written "
        f"meanwhile, all stored {stored_wait:.1f}s after the load stopped, lost {lost}; "
        f"hint files on the survivors 20 s into the outage {hints_while_down}, none left "
        f"{replayed:.1f}s after the load stopped ({hinted_log} 'Finished hinted handoff' "
        f"log lines for 127.0.0.1{victim_node}); processes alive {stack.alive()}"
    )
    assert [c for c in load.calls if c.phase == "down" and c.kind == "hit"]
    assert not not_hit, Counter(c.status for c in not_hit)
    assert hints_while_down > 0  # the survivors kept what the dead node missed ...
    assert hinted_log > 0  # ... and handed it off when it came back
    assert {s for s, _ in answers} <= {"HIT", "PENDING"}
    assert lost == 0
    assert all(stack.alive().values())


def _leader_of_most(topic: str) -> int:
    meta = AdminClient({"bootstrap.servers": KAFKA}).list_topics(topic, timeout=10)
    leaders = Counter(p.leader for p in meta.topics[topic].partitions.values())
    return leaders.most_common(1)[0][0]


def _high_watermarks(topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": KAFKA, "group.id": f"probe-{uuid.uuid4().hex[:6]}"})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(PARTITIONS)
        )
    finally:
        consumer.close()


def test_kafka_broker_killed_during_a_burst_of_misses_no_job_lost_no_duplicate(
    cluster_stack: ClusterStack,
) -> None:
    stack = cluster_stack
    stack.store_all(texts("broker warm-up", 5))
    broker = _leader_of_most(stack.jobs_topic)
    victim = f"kafka{broker}"
    items = texts("broker burst", 3000)
    produced_before = _high_watermarks(stack.jobs_topic)
    statuses: list[str] = []
    keys: list[str] = []
    errors: list[str] = []

    def burst() -> None:
        with EmbarkClient(stack.target, timeout_s=30) as client:
            for i in range(0, len(items), 100):
                chunk = [make_input(text=t) for t in items[i : i + 100]]
                try:
                    answers = client.get_many(stack.model, chunk)
                except EmbarkError as exc:
                    errors.append(exc.code.name)
                    continue
                statuses.extend(a.status for a in answers)
                keys.extend(a.key for a in answers)
                time.sleep(0.05)

    sender = threading.Thread(target=burst)
    sender.start()
    time.sleep(1.0)
    stack.ring.kill(victim)
    killed = time.monotonic()
    stored_at_kill = len(stack.stored(list(keys)))
    sender.join(300)
    burst_s = time.monotonic() - killed
    # KFC keeps consuming with the broker down: the partitions it led get new leaders.
    consumed_down = wait_for(lambda: len(stack.stored(keys)) >= stored_at_kill + 100, 120, 1.0)
    stored_down = len(stack.stored(keys))
    restart_s = stack.ring.start(victim)
    drained = wait_for(lambda: len(stack.stored(keys)) == len(items), 300, 2.0)
    produced = _high_watermarks(stack.jobs_topic) - produced_before
    mine = set(items)
    rows = [(k, i) for k, i in stack.rows() if i in mine]
    by_input = Counter(i for _, i in rows)
    print(
        f"\nKAFKA BROKER LOSS: {victim} (leader of the most job partitions) SIGKILLed "
        f"{1.0:.0f}s into a burst of {len(items)} misses; burst answered "
        f"{dict(Counter(statuses))}, call errors {errors}; the burst ended {burst_s:.1f}s "
        f"after the kill; KFC stored {stored_down - stored_at_kill} more while the broker was "
        f"down (the first 100 within {consumed_down:.1f}s of the burst's end); restart took "
        f"{restart_s:.1f}s; all "
        f"{len(items)} stored {drained:.1f}s after it; jobs produced {produced} for "
        f"{len(items)} misses; rows for these inputs {len(rows)} (inputs with more than one "
        f"key: {sum(c > 1 for c in by_input.values())}); processes alive {stack.alive()}"
    )
    assert not errors
    assert set(statuses) <= QUEUED
    assert len(keys) == len(items)
    assert len(stack.stored(keys)) == len(items)  # no job lost
    assert len(rows) == len(items)  # no vector stored under a second key
    assert set(by_input.values()) == {1}
    assert {k for k, _ in rows} == set(keys)
    assert all(stack.alive().values())


def test_one_of_three_kfc_killed_partitions_move_within_the_session_timeout(
    cluster_stack: ClusterStack,
) -> None:
    stack = cluster_stack
    stack.store_all(texts("kfc warm-up", 5))
    members, parts = stack.group()
    assert members == len(stack.kfcs) == 3
    assert parts == set(range(PARTITIONS))
    items = texts("kfc backlog", 3000)
    answers = stack.ask(items)
    keys = [k for _, k in answers]
    assert {s for s, _ in answers} <= QUEUED
    time.sleep(1.0)
    victim = stack.kfcs.pop(0)
    victim.kill()
    killed = time.monotonic()
    stored_at_kill = len(stack.stored(keys))

    def moved() -> bool:
        members, parts = stack.group()
        return members == 2 and parts == set(range(PARTITIONS))

    wait_for(moved, 120, 0.2)
    moved_s = time.monotonic() - killed
    drained = wait_for(lambda: len(stack.stored(keys)) == len(items), 300, 2.0)
    total_s = time.monotonic() - killed
    print(
        f"\nKFC LOSS: {victim.name} of 3 SIGKILLed with {len(items) - stored_at_kill} of "
        f"{len(items)} jobs still to store; its partitions moved to the other two "
        f"{moved_s:.1f}s after the kill (session timeout {SESSION_TIMEOUT_S:.0f}s); all "
        f"{len(items)} stored {total_s:.1f}s after the kill ({drained:.1f}s after the move); "
        f"jobs lost {len(items) - len(stack.stored(keys))}; processes alive {stack.alive()}"
    )
    assert stored_at_kill < len(items), "the backlog was gone before the kill"
    # The session timeout, then one rebalance of the two survivors (seconds on a busy box).
    assert moved_s <= SESSION_TIMEOUT_S + 20
    assert len(stack.stored(keys)) == len(items)
    stack.kfcs.append(stack.make_kfc(stack.kfc_serial[0]).start(timeout_s=180))
    stack.kfc_serial[0] += 1
