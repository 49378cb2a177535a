"""Where the integration tests get their real Cassandra and Kafka servers from.

Owns the resolution order for one server, tried in turn until one gives an address:

1. an address in the environment (``EMBARK_TEST_CASSANDRA`` / ``EMBARK_TEST_KAFKA``, "host[:port]"),
   used as given: nothing is probed, started or stopped;
2. a server already answering a real protocol request on the devstack address (127.0.0.1:9042 and
   127.0.0.1:9092 unless ``DEVSTACK_HOST`` / ``DEVSTACK_CQL_PORT`` / ``DEVSTACK_KAFKA_PORT`` say
   otherwise), which is left running;
3. a testcontainers container of the locally built image (``deploy/images/build.sh``: the same
   Maven Central jars and devstack configuration, on a local Debian base;
   ``EMBARK_TEST_CASSANDRA_IMAGE`` / ``EMBARK_TEST_KAFKA_IMAGE`` override it), only when the
   ``testcontainers`` package is importable and a Docker engine answers; reached at its
   container address; stopped at session end;
4. ``devstack/devstack.sh start SERVER``; stopped at session end if this session started it (set
   ``EMBARK_TEST_KEEP_SERVERS=1`` to leave it running for the next session).

Also owns the probes behind step 2 and reading the tail of a devstack server log, which
``conftest.py`` attaches to failing reports. The fixtures themselves live in ``conftest.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

Server = Literal["cassandra", "kafka"]
Source = Literal["env", "running", "testcontainers", "devstack"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVSTACK_SH = REPO_ROOT / "devstack" / "devstack.sh"
BUILD_SH = REPO_ROOT / "deploy" / "images" / "build.sh"

#: The datacenter name SimpleSnitch (devstack) and the cassandra image's snitch both report.
LOCAL_DC = "datacenter1"

_ENV_ADDRESS: dict[Server, str] = {
    "cassandra": "EMBARK_TEST_CASSANDRA",
    "kafka": "EMBARK_TEST_KAFKA",
}
_ENV_DEVSTACK_PORT: dict[Server, str] = {
    "cassandra": "DEVSTACK_CQL_PORT",
    "kafka": "DEVSTACK_KAFKA_PORT",
}
_DEFAULT_PORT: dict[Server, int] = {"cassandra": 9042, "kafka": 9092}
# Built locally from devstack's Maven Central jars (deploy/images/build.sh), so the tests run
# the same servers with or without Docker, and never pull from Docker Hub.
_CONTAINER_IMAGE: dict[Server, str] = {
    "cassandra": "embark-local/cassandra:5.0",
    "kafka": "embark-local/kafka:3.9",
}
# Covers a cold Cassandra start on two cores with margin; devstack.sh has its own limit too.
_DEVSTACK_START_TIMEOUT_S = 300
_PROBE_TIMEOUT_S = 3.0


class ServerUnavailableError(RuntimeError):
    """No server could be found or started; the message carries the server log tail."""


@dataclass(frozen=True)
class Endpoint:
    """A server the session talks to, where it came from and how to let go of it."""

    server: Server
    host: str
    port: int
    source: Source
    #: The devstack server log, when the server is a devstack one (for failure reports).
    log_path: Path | None = None
    #: Stops what this session started; ``None`` when the server is not ours to stop.
    stop: Callable[[], None] | None = field(default=None, compare=False)

    @property
    def address(self) -> str:
        """``host:port``, what ``cassandra_contact`` and ``kafka_bootstrap`` hand out."""
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        """Stop the server if this session started it; otherwise do nothing."""
        if self.stop is not None:
            self.stop()


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """Split ``host[:port]`` (IPv6 as ``[::1]:9042``) into host and port."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    return host, int(port)


def devstack_address(server: Server) -> tuple[str, int]:
    """The address devstack.sh serves SERVER on, honouring the same variables as the script."""
    host = os.environ.get("DEVSTACK_HOST", "127.0.0.1")
    port = int(os.environ.get(_ENV_DEVSTACK_PORT[server], _DEFAULT_PORT[server]))
    return host, port


def devstack_run_dir(server: Server) -> Path:
    """``.devstack/SERVER`` (or under ``DEVSTACK_DIR``), where its pid file and log live."""
    return Path(os.environ.get("DEVSTACK_DIR", REPO_ROOT / ".devstack")) / server


def devstack_log_path(server: Server) -> Path:
    return devstack_run_dir(server) / "server.log"


def log_tail(path: Path, lines: int = 60) -> str:
    """The last LINES lines of a (possibly large) log file, or a note that it is missing."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            data = f.read()
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def cassandra_cluster(host: str, port: int, *, connect_timeout: float = 10.0) -> Cluster:
    """A driver ``Cluster`` for a single local node (explicit DC-aware policy, no warnings)."""
    profile = ExecutionProfile(
        load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=LOCAL_DC),
        request_timeout=30.0,
    )
    return Cluster(
        [host],
        port=port,
        connect_timeout=connect_timeout,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def cassandra_answers(host: str, port: int) -> bool:
    """A CQL query succeeds (an open port alone may be a node still starting, or not Cassandra)."""
    if not tcp_open(host, port):
        return False
    cluster = cassandra_cluster(host, port, connect_timeout=_PROBE_TIMEOUT_S)
    try:
        cluster.connect().execute(
            "SELECT release_version FROM system.local", timeout=_PROBE_TIMEOUT_S
        ).one()
    except Exception:
        return False
    finally:
        cluster.shutdown()
    return True


def kafka_answers(host: str, port: int) -> bool:
    """A metadata request succeeds against a broker on host:port."""
    if not tcp_open(host, port):
        return False
    admin = AdminClient({"bootstrap.servers": f"{host}:{port}", "socket.timeout.ms": 3000})
    try:
        admin.list_topics(timeout=_PROBE_TIMEOUT_S)
    except KafkaException:
        return False
    return True


_ANSWERS: dict[Server, Callable[[str, int], bool]] = {
    "cassandra": cassandra_answers,
    "kafka": kafka_answers,
}


def _devstack_pid_alive(server: Server) -> bool:
    try:
        pid = int((devstack_run_dir(server) / "server.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def _from_testcontainers(server: Server) -> Endpoint | None:
    """Start a container of the locally built image (deploy/images/build.sh builds it when it is
    missing) when testcontainers is installed and a Docker engine answers."""
    if importlib.util.find_spec("testcontainers") is None:
        return None
    # Ryuk (testcontainers' reaper) is an image from Docker Hub; the endpoint stops its own.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    docker = importlib.import_module("docker")
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        # No engine here. Asked anyway, docker-py's failed client leaks its socket, and the
        # ResourceWarning fails whichever later test the garbage collector runs in.
        return None
    try:
        client = docker.from_env(timeout=3)
        client.ping()
    except Exception:
        return None
    image = os.environ.get(f"{_ENV_ADDRESS[server]}_IMAGE", _CONTAINER_IMAGE[server])
    try:
        client.images.get(image)
        missing = False
    except docker.errors.ImageNotFound:
        missing = True
    if missing:
        build = subprocess.run(
            [str(BUILD_SH), server], capture_output=True, text=True, timeout=1800, check=False
        )
        if build.returncode != 0:
            raise ServerUnavailableError(f"building {image} failed:\n{build.stderr[-3000:]}")
    container = importlib.import_module("testcontainers.core.container").DockerContainer(image)
    container.start()
    try:
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        # The server advertises its container address (Kafka's listener, Cassandra's
        # rpc_address), which the host reaches over Docker's bridge: no published ports.
        host = str(wrapped.attrs["NetworkSettings"]["IPAddress"])
        port = _DEFAULT_PORT[server]
        deadline = time.monotonic() + _DEVSTACK_START_TIMEOUT_S
        while not _ANSWERS[server](host, port):
            wrapped.reload()
            if wrapped.status != "running" or time.monotonic() > deadline:
                logs = wrapped.logs(tail=60).decode("utf-8", "replace")
                raise ServerUnavailableError(f"{image} did not answer on {host}:{port}\n{logs}")
            time.sleep(2)
    except BaseException:
        container.stop()
        raise
    return Endpoint(server, host, port, "testcontainers", stop=container.stop)


def _devstack(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DEVSTACK_SH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _from_devstack(server: Server) -> Endpoint:
    """``devstack.sh start SERVER``; the endpoint stops it again only if this call started it."""
    host, port = devstack_address(server)
    log_path = devstack_log_path(server)
    try:
        result = _devstack("start", server, timeout=_DEVSTACK_START_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ServerUnavailableError(
            f"devstack.sh start {server} did not finish in {_DEVSTACK_START_TIMEOUT_S}s\n"
            f"--- {log_path} (tail) ---\n{log_tail(log_path)}"
        ) from exc
    if result.returncode != 0:
        message = f"devstack.sh start {server} failed (exit {result.returncode})\n"
        message += result.stdout + result.stderr
        if "--- last" not in result.stderr:  # devstack.sh dumps the tail itself when it can
            message += f"\n--- {log_path} (tail) ---\n{log_tail(log_path)}"
        raise ServerUnavailableError(message)
    # devstack.sh serialises starts with a lock, so "already running" means someone else's server
    # even when several test sessions race to start it.
    started_here = "already running" not in result.stdout
    keep = os.environ.get("EMBARK_TEST_KEEP_SERVERS", "") not in ("", "0")

    def stop() -> None:
        _devstack("stop", server, timeout=120)

    return Endpoint(
        server, host, port, "devstack", log_path, stop if started_here and not keep else None
    )


def resolve(server: Server) -> Endpoint:
    """Find or start SERVER following the order in the module docstring."""
    given = os.environ.get(_ENV_ADDRESS[server], "").strip()
    if given:
        host, port = parse_address(given, _DEFAULT_PORT[server])
        return Endpoint(server, host, port, "env")

    host, port = devstack_address(server)
    if _ANSWERS[server](host, port):
        log_path = devstack_log_path(server) if _devstack_pid_alive(server) else None
        return Endpoint(server, host, port, "running", log_path)

    container = _from_testcontainers(server)
    if container is not None:
        return container

    return _from_devstack(server)
