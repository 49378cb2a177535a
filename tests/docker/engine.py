"""The Docker engine as tests/docker drives it: through the same CLIs a user types (`docker`,
`docker-compose` / `docker compose`, deploy/images/build.sh), never a mock.

Owns: finding the engine and the compose tool (and the reason to skip when there is none),
building the images once per session with their build times, running and inspecting
containers, waiting for gRPC health, free host ports, and a head file for the reload tests.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embark.client import CategorizeResult, EmbarkClient
from embark.errors import EmbarkError
from embark.heads.artifact import Head, save_head

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "deploy" / "images" / "build.sh"
COMPOSE_FILE = REPO / "docker-compose.yml"

#: The CLI with the built-in BuildKit (another, newer client may shadow it on PATH).
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "")

#: Images the session builds (tags of their own, so a user's embark:dev is never replaced).
EMBARK_IMAGE = os.environ.get("EMBARK_TEST_IMAGE", "embark:test")
CASSANDRA_IMAGE = "embark-local/cassandra:5.0"
KAFKA_IMAGE = "embark-local/kafka:3.9"


def engine_missing() -> str | None:
    """Why no Docker engine can be used, or None when one answers."""
    if not DOCKER:
        return "no docker CLI installed (.ci/run installs docker.io)"
    try:
        probe = subprocess.run(
            [DOCKER, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer in 20 s"
    if probe.returncode != 0:
        return f"no Docker engine answers ({probe.stderr.strip()[:200]}); .ci/run starts dockerd"
    return None


def compose_cli() -> list[str] | None:
    """`docker compose` (v2 plugin) when installed, else Debian's `docker-compose` (v1.29)."""
    plugin = subprocess.run(
        [DOCKER, "compose", "version"], capture_output=True, text=True, timeout=10, check=False
    )
    if plugin.returncode == 0:
        return [DOCKER, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


@dataclass(frozen=True)
class Built:
    image: str
    seconds: float


def build(*what: str, env: dict[str, str] | None = None) -> float:
    """deploy/images/build.sh WHAT... (bases first; cache reused); returns the wall time."""
    t0 = time.monotonic()
    result = subprocess.run(
        [str(BUILD_SH), *what],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env={**os.environ, "EMBARK_IMAGE": EMBARK_IMAGE, **(env or {})},
    )
    if result.returncode != 0:
        raise AssertionError(f"build.sh {' '.join(what)} failed:\n{result.stderr[-6000:]}")
    return time.monotonic() - t0


def image_bytes(image: str) -> int:
    return int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout.strip())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def published_port(container: str, port: int) -> int:
    out = docker("port", container, f"{port}/tcp").stdout.split()
    return int(out[0].rsplit(":", 1)[1])


def wait_serving(address: str, timeout_s: float = 180.0) -> float:
    """Seconds until ``address`` answers SERVING on gRPC health."""
    t0 = time.monotonic()
    last = "no answer"
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() - t0 < timeout_s:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=3)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - t0
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                last = exc.code().name
            time.sleep(0.5)
    raise AssertionError(f"{address} not SERVING after {timeout_s:.0f} s (last: {last})")


def logs(container: str) -> str:
    result = docker("logs", "--tail", "80", container, check=False)
    return result.stdout + result.stderr


def catalog_of(image: str) -> dict[str, str]:
    """model -> revision, as the image's own catalog says."""
    out = docker("run", "--rm", image, "cat", "/app/artifacts/catalog.json").stdout
    doc = json.loads(out)
    models = doc["models"] if isinstance(doc, dict) and "models" in doc else doc
    if isinstance(models, dict):
        return {name: spec["revision"] for name, spec in models.items()}
    return {spec["name"]: spec["revision"] for spec in models}


def write_head(
    directory: Path, name: str, model: str, revision: str, rows: dict[str, Sequence[float]]
) -> Path:
    """A nearest-prototype head (one row per label: that label's embedding), readable by the
    container's non-root user. Real format, real loader: only the training is skipped."""
    labels = tuple(rows)
    weights = np.array([rows[label] for label in labels], dtype=np.float32)
    head = Head(
        name=name,
        version=1,
        labels=labels,
        model=model,
        revision=revision,
        dim=weights.shape[1],
        weights=weights,
        bias=np.zeros(len(labels), dtype=np.float32),
    )
    path = save_head(head, directory)
    for p in (directory, *directory.rglob("*")):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return path


def categorize_once_loaded(
    client: EmbarkClient, head: str, text: str, timeout_s: float = 30
) -> CategorizeResult:
    """Categorize ``text`` with ``head``, retrying while the server does not know the head yet
    (a SIGHUP reload in progress); any other error is raised at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.categorize(head, text=text)
        except EmbarkError as exc:
            if "unknown head" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.3)


#: Figures measured by this session's docker tests, written to bench/results/docker-tests.json
#: at the end (conftest.py): build times, image size, compose timings, the kill test.
FIGURES: dict[str, float | int | str] = {}
FIGURES_PATH = REPO / "bench" / "results" / "docker-tests.json"


def record(name: str, value: float | int | str) -> None:
    FIGURES[name] = round(value, 1) if isinstance(value, float) else value


def write_figures() -> None:
    if not FIGURES:
        return
    FIGURES_PATH.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "pytest -m docker tests/docker -s",
        "cpus": os.cpu_count(),
        "figures": dict(sorted(FIGURES.items())),
    }
    FIGURES_PATH.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
