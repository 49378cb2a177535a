"""What replication costs: hits and misses on the single-node devstack (replication 1) beside the
three-node cluster of devstack/cluster.sh (Cassandra replication 3, jobs topic replication 3 with
min.insync.replicas 2), in one run, with the same processes and the same model.

Rows: ``single`` (127.0.0.1:9042 / :9092, reads and writes at LOCAL_QUORUM of 1 replica),
``cluster`` (reads and writes at LOCAL_QUORUM: 2 of 3 replicas answer), and ``cluster, reads
LOCAL_ONE`` (the same cluster, EmbArk reading one replica: the store's default read level).
Columns: hit latency with one call in flight and hit throughput with 64 callers, both with
EmbArk's hot LRU off (``EMBARK_CACHE_BYTES=0``, so every hit reads Cassandra), and miss ->
stored latency at idle (Kafka acks=all, KFC, Retina, the LOCAL_QUORUM write).

    devstack/devstack.sh start && devstack/cluster.sh start
    .venv/bin/python -m bench.cluster        # prints the table, writes bench/results/cluster.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from bench.hotpath import latency, throughput
from bench.inputs import titles
from bench.pipeline import miss_to_stored
from bench.stack import RESULTS, Stack, machine, run, seed, stack, table, write_result
from embark.store.cassandra import CassandraConfig

CLUSTER_CQL = ("127.0.0.11:19042", "127.0.0.12:19042", "127.0.0.13:19042")
CLUSTER_KAFKA = "127.0.0.11:19092,127.0.0.12:19092,127.0.0.13:19092"


class ClusterStack(Stack):
    """bench.stack's Stack with docs/cluster.md's settings: every node as a contact point,
    replication 3, LOCAL_QUORUM, topics with replication 3 and min.insync.replicas 2."""

    def backends(self, prefix: str) -> dict[str, str]:
        return {
            **super().backends(prefix),
            f"{prefix}_STORE__CASSANDRA__CONTACT_POINTS": json.dumps(list(CLUSTER_CQL)),
            f"{prefix}_STORE__CASSANDRA__REPLICATION": json.dumps(
                {"class": "NetworkTopologyStrategy", "datacenter1": 3}
            ),
            f"{prefix}_STORE__CASSANDRA__READ_CONSISTENCY": "LOCAL_QUORUM",
            f"{prefix}_STORE__CASSANDRA__WRITE_CONSISTENCY": "LOCAL_QUORUM",
            f"{prefix}_QUEUE__KAFKA__REPLICATION_FACTOR": "3",
            f"{prefix}_QUEUE__KAFKA__MIN_INSYNC_REPLICAS": "2",
        }

    def cassandra_config(self) -> CassandraConfig:
        return CassandraConfig(
            contact_points=CLUSTER_CQL,
            keyspace=self.keyspace,
            replication={"class": "NetworkTopologyStrategy", "datacenter1": "3"},
            write_consistency="LOCAL_QUORUM",
        )


def measure(s: Stack, args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    """Hit latency and throughput per EmbArk read level, then miss -> stored, on one stack."""
    run(seed(s.cassandra_config(), texts))
    s.start_retina()
    s.start_kfc()
    rows: dict[str, Any] = {}
    levels = ["LOCAL_QUORUM", "LOCAL_ONE"] if isinstance(s, ClusterStack) else ["LOCAL_QUORUM"]
    for level in levels:
        embark = s.start_embark(
            f"embark-{level.lower()}",
            cache_bytes=0,
            EMBARK_STORE__CASSANDRA__READ_CONSISTENCY=level,
            # Every call a real read: past the default 250 ms a lookup is answered OOV +
            # UNAVAILABLE, which would count as a (cheap) completed call on a saturated box.
            EMBARK_LOOKUP_TIMEOUT_MS="5000",
        )
        target = f"127.0.0.1:{embark.health_port}"
        rows[level] = {
            "hit_latency": run(latency(target, texts, args.calls)),
            "hit_throughput": run(throughput(target, texts, args.seconds, 64, embark.pid)),
        }
        if level == "LOCAL_QUORUM":
            rows[level]["miss_to_stored"] = run(miss_to_stored(target, args.misses))
        embark.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=2000, help="stored texts the hits read")
    parser.add_argument("--calls", type=int, default=1000, help="hit latency samples")
    parser.add_argument("--seconds", type=float, default=8.0, help="hit throughput run")
    parser.add_argument("--misses", type=int, default=40, help="idle miss -> stored samples")
    args = parser.parse_args()
    random.seed(0)
    texts = titles(args.texts, prefix="cluster bench")
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "rows": {}}
    started = time.monotonic()
    with stack("single", logs=RESULTS / "logs" / "cluster-single") as s:
        result["rows"]["single"] = measure(s, args, texts)
    logs = RESULTS / "logs" / "cluster-3x3"
    c = ClusterStack("ring", logs, cassandra=CLUSTER_CQL[0], kafka=CLUSTER_KAFKA)
    try:
        c.apply_schema()
        result["rows"]["cluster"] = measure(c, args, texts)
    finally:
        c.stop()
        c.drop()
    result["seconds"] = time.monotonic() - started
    path = write_result("cluster", result)
    report(result)
    print(f"\nwrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


def report(result: dict[str, Any]) -> None:
    single = result["rows"]["single"]["LOCAL_QUORUM"]
    out = []
    for name, rows in result["rows"].items():
        for level, r in rows.items():
            label = {"single": "single node (RF 1)", "cluster": "3+3 cluster (RF 3)"}[name]
            out.append(
                [
                    f"{label}, reads {level}",
                    r["hit_latency"]["p50_ms"],
                    r["hit_latency"]["p99_ms"],
                    r["hit_throughput"]["rps"],
                    r["hit_throughput"]["rps"] / single["hit_throughput"]["rps"],
                    r["hit_throughput"]["errors"],
                    r["miss_to_stored"]["p50_ms"] if "miss_to_stored" in r else "-",
                    r["miss_to_stored"]["p99_ms"] if "miss_to_stored" in r else "-",
                ]
            )
    print(
        table(
            [
                "backends",
                "hit p50 ms",
                "hit p99 ms",
                "hits/s (64 callers)",
                "x single",
                "errors",
                "miss->stored p50 ms",
                "p99 ms",
            ],
            out,
        )
    )


if __name__ == "__main__":
    main()
