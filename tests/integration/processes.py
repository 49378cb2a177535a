"""The three services as real processes (`retina serve`, `embark serve`, `kfc run`), the way a
user or an orchestrator runs them: settings through the environment, readiness through gRPC
health, SIGTERM to stop, SIGKILL to crash. Logs go to files that failing tests print.

``Backends`` is the environment every stack test gives its processes (one keyspace, one jobs and
dead-letter topic, one consumer group); ``fresh_backends`` names and registers a new one and runs
`embark schema apply` with it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.stack import command


@dataclass(frozen=True)
class Backends:
    """Where one test stack's processes find the archive, the queue, the catalog and Retina."""

    catalog: Path
    cassandra: str
    kafka: str
    keyspace: str
    jobs_topic: str
    dead_letter_topic: str
    group_id: str
    retina_port: int

    def env(self, prefix: str) -> dict[str, str]:
        """The settings of the service whose environment prefix is ``prefix`` (EMBARK, KFC)."""
        return {
            f"{prefix}_CATALOG": str(self.catalog),
            f"{prefix}_STORE__BACKEND": "cassandra",
            f"{prefix}_STORE__CASSANDRA__CONTACT_POINTS": json.dumps([self.cassandra]),
            f"{prefix}_STORE__CASSANDRA__KEYSPACE": self.keyspace,
            f"{prefix}_STORE__CASSANDRA__REPLICATION": json.dumps(
                {"class": "SimpleStrategy", "replication_factor": 1}
            ),
            f"{prefix}_QUEUE__BACKEND": "kafka",
            f"{prefix}_QUEUE__KAFKA__BOOTSTRAP_SERVERS": self.kafka,
            f"{prefix}_QUEUE__KAFKA__JOBS_TOPIC": self.jobs_topic,
            f"{prefix}_QUEUE__KAFKA__DEAD_LETTER_TOPIC": self.dead_letter_topic,
            f"{prefix}_QUEUE__KAFKA__PARTITIONS": "3",
            f"{prefix}_QUEUE__KAFKA__GROUP_ID": self.group_id,
            f"{prefix}_RETINA_ADDRESS": f"127.0.0.1:{self.retina_port}",
        }


def fresh_backends(
    name: str,
    *,
    catalog: Path,
    cassandra: str,
    kafka: str,
    keyspaces: list[str],
    topics: list[str],
    retina_port: int,
) -> Backends:
    """A stack of its own: a new keyspace, jobs and dead-letter topics and consumer group named
    after ``name``, handed to the session's cleanup lists, with the schema applied."""
    suffix = f"{name}_{uuid.uuid4().hex[:10]}"
    backends = Backends(
        catalog=catalog,
        cassandra=cassandra,
        kafka=kafka,
        keyspace=suffix,
        jobs_topic=f"jobs-{suffix}",
        dead_letter_topic=f"dlq-{suffix}",
        group_id=f"kfc-{suffix}",
        retina_port=retina_port,
    )
    keyspaces.append(backends.keyspace)
    topics.extend([backends.jobs_topic, backends.dead_letter_topic])
    apply_schema(backends)
    return backends


def apply_schema(backends: Backends) -> None:
    """`embark schema apply` with the stack's settings; fails the test with its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "embark", "schema", "apply"],
        env={**os.environ, **backends.env("EMBARK")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServiceProcess:
    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], health_port: int, log_dir: Path
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.health_port = health_port
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90.0) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command(self.argv),
                env={**os.environ, "HF_HUB_OFFLINE": "1", **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_serving(timeout_s)
        return self

    def wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(f"127.0.0.1:{self.health_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"{self.name} not SERVING within {timeout_s}s:\n{self.tail()}")

    def terminate(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (graceful), SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        """A crash: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
