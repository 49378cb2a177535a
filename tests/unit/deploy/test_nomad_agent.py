"""OPT-IN: the Nomad jobs on a real ``nomad agent -dev``.

    EMBARK_TEST_NOMAD=/path/to/nomad .venv/bin/pytest tests/unit/deploy/test_nomad_agent.py

Skipped unless ``EMBARK_TEST_NOMAD`` names a Nomad binary (``nomad`` for the one on PATH): no
Nomad release is a package in the registries this project installs from (building one from the
Go module proxy takes about 20 minutes on a 2-core machine; docs/deploy.md, "Checks").

What runs:
- ``nomad fmt -check`` on every file under deploy/nomad (the canonical formatting);
- ``nomad job validate`` of every job against the agent (the server's own validation, which
  python-hcl2 cannot do: expose checks, Connect, scaling policies, templates);
- the Retina job *for real*: the job as Nomad parsed it (``nomad job run -output``), with only
  what a dev agent without Docker and Consul cannot provide replaced: the docker driver by
  ``raw_exec`` starting ``retina serve`` from this checkout, bridge networking and Connect by a
  host port, and the Consul gRPC check by a Nomad-native TCP check. Its env, kill_timeout and
  update block (canary, auto_revert) are the file's. The deployment must become successful and
  the health probe answer SERVING on every allocation; a broken new version must get exactly one
  canary, leave the running allocations alone, fail and be reverted automatically; and a stop
  must end the tasks within their kill_timeout;
- with ``EMBARK_TEST_CASSANDRA`` and ``EMBARK_TEST_KAFKA`` (``host:port``) set as well, the schema
  job, KFC and EmbArk the same way, their secret templates rendered by the real template engine
  (no Nomad Variable: the settings stay unset).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.unit.deploy.deployfiles import HEALTHCHECK, NOMAD_DIR, REPO, nomad_job_files

_BINARY = os.environ.get("EMBARK_TEST_NOMAD", "")
pytestmark = pytest.mark.skipif(
    not _BINARY,
    reason="opt-in: set EMBARK_TEST_NOMAD=/path/to/nomad to run the jobs on `nomad agent -dev` "
    "(raw_exec); no registry packages Nomad: docs/deploy.md builds it from the Go module "
    "proxy (~20 min)",
)

NS = 1_000_000_000  # Nomad's JSON durations are nanoseconds
ARTIFACTS = REPO / "artifacts"
VENV_BIN = REPO / ".venv" / "bin"


def _nomad() -> str:
    path = shutil.which(_BINARY)
    if path is None:
        pytest.fail(f"EMBARK_TEST_NOMAD={_BINARY!r} is not an executable")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Agent:
    binary: str
    address: str
    log: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "NOMAD_ADDR": self.address}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args], capture_output=True, text=True, env=self.env(), timeout=120
        )
        if check and result.returncode != 0:
            pytest.fail(f"nomad {' '.join(args)}: {result.stdout}\n{result.stderr}")
        return result

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.address + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def wait(self, what: str, predicate: Any, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(1)
        pytest.fail(
            f"timed out waiting for {what}; agent log tail:\n{self.log.read_text()[-4000:]}"
        )


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    binary = _nomad()
    root = tmp_path_factory.mktemp("nomad")
    http = _free_port()
    config = root / "agent.hcl"
    config.write_text(
        f"""
data_dir  = "{root / "data"}"
bind_addr = "127.0.0.1"
ports {{
  http = {http}
  rpc  = {_free_port()}
  serf = {_free_port()}
}}
plugin "raw_exec" {{
  config {{
    enabled = true
  }}
}}
client {{
  # No cloud metadata services here (and the AWS one fails hard when AWS_CA_BUNDLE is set).
  options = {{
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
  }}
}}
"""
    )
    log = root / "agent.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [binary, "agent", "-dev", "-config", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    handle = Agent(binary, f"http://127.0.0.1:{http}", log)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"nomad agent exited {process.returncode}:\n{log.read_text()[-4000:]}")
            try:
                nodes = handle.api("GET", "/v1/nodes")
            except (urllib.error.URLError, ConnectionError):
                return False
            return any(n["Status"] == "ready" for n in nodes or [])

        handle.wait("the dev agent", ready, 60)
        yield handle
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def test_files_are_nomad_fmt_clean() -> None:
    result = subprocess.run(
        [_nomad(), "fmt", "-check", "-recursive", str(NOMAD_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"nomad fmt would change: {result.stdout}{result.stderr}"


@pytest.mark.parametrize("path", nomad_job_files(), ids=lambda p: p.name)
def test_job_validates_on_the_agent(agent: Agent, path: Path) -> None:
    args = ["job", "validate"]
    if "examples" not in path.parts:
        args += ["-var", "image=embark:test"]
    agent.cli(*args, str(path))


def _parsed(agent: Agent, path: Path) -> dict[str, Any]:
    out = agent.cli("job", "run", "-output", "-var", "image=embark:test", str(path)).stdout
    job: dict[str, Any] = json.loads(out)["Job"]
    return job


def _as_raw_exec(
    job: dict[str, Any], *, command: list[str], port_env: str, env: dict[str, str]
) -> dict[str, Any]:
    """The parsed job with only the Docker/Consul-specific parts swapped out (module doc). Each
    allocation gets a dynamic host port, passed to the process as its port setting."""
    job["ID"] = job["Name"] = f"{job['ID']}-{uuid.uuid4().hex[:6]}"
    (group,) = job["TaskGroups"]
    (task,) = group["Tasks"]
    group["Networks"] = [{"Mode": "host", "DynamicPorts": [{"Label": "grpc"}]}]
    if job["Type"] == "service":
        group["Services"] = [
            {
                "Name": job["ID"],
                "PortLabel": "grpc",
                "Provider": "nomad",
                "Checks": [{"Name": "tcp", "Type": "tcp", "Interval": 2 * NS, "Timeout": 1 * NS}],
            }
        ]
        # Shortened for a test (the files' values and their order are asserted in
        # test_nomad.py). A canary that keeps failing is rescheduled until the progress
        # deadline passes; only then does the deployment fail and auto_revert act.
        for update in (job.get("Update"), group.get("Update")):
            if update:
                update["MinHealthyTime"] = 2 * NS
                update["HealthyDeadline"] = 30 * NS
                update["ProgressDeadline"] = 60 * NS
    else:
        group["Services"] = None
    group["ShutdownDelay"] = 0
    task["Driver"] = "raw_exec"
    task["Config"] = {"command": command[0], "args": command[1:]}
    task["Env"] = {**task["Env"], **env, port_env: "${NOMAD_PORT_grpc}"}
    task["Resources"] = {"CPU": 500, "MemoryMB": 1024}
    task["Services"] = None
    return job


def _run(agent: Agent, job: dict[str, Any]) -> None:
    agent.api("PUT", "/v1/jobs", {"Job": job})


def _deployed(agent: Agent, job_id: str) -> bool:
    deployment = agent.api("GET", f"/v1/job/{job_id}/deployment")
    if deployment and deployment["Status"] == "failed":
        pytest.fail(f"deployment failed: {deployment['StatusDescription']}")
    return bool(deployment) and deployment["Status"] == "successful"


def _ports(agent: Agent, job_id: str) -> list[int]:
    """The grpc port of each running allocation of the job."""
    ports = []
    for stub in agent.api("GET", f"/v1/job/{job_id}/allocations"):
        if stub["ClientStatus"] != "running":
            continue
        alloc = agent.api("GET", f"/v1/allocation/{stub['ID']}")
        for port in alloc["AllocatedResources"]["Shared"]["Ports"] or []:
            if port["Label"] == "grpc":
                ports.append(port["Value"])
    return ports


def _serving(service: str, ports: list[int]) -> bool:
    """The health probe of the image answers SERVING on every port."""
    for port in ports:
        result = subprocess.run(
            [sys.executable, str(HEALTHCHECK), service, "--address", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            return False
    return bool(ports)


def _stop_within_kill_timeout(agent: Agent, job: dict[str, Any]) -> None:
    (task,) = job["TaskGroups"][0]["Tasks"]
    kill_timeout_s = task["KillTimeout"] / NS
    started = time.monotonic()
    agent.api("DELETE", f"/v1/job/{job['ID']}?purge=false")

    def stopped() -> bool:
        allocs = agent.api("GET", f"/v1/job/{job['ID']}/allocations")
        return all(a["ClientStatus"] in ("complete", "failed") for a in allocs)

    agent.wait(f"{job['ID']} to stop", stopped, kill_timeout_s + 30)
    assert time.monotonic() - started < kill_timeout_s + 10


def _retina(agent: Agent) -> tuple[dict[str, Any], int]:
    if not (ARTIFACTS / "catalog.json").is_file():
        pytest.skip("no built models: run `make models` first")
    job = _as_raw_exec(
        _parsed(agent, NOMAD_DIR / "retina.nomad.hcl"),
        command=[str(VENV_BIN / "retina"), "serve"],
        port_env="RETINA_PORT",
        env={"RETINA_ARTIFACTS_DIR": str(ARTIFACTS), "RETINA_METRICS_PORT": "0"},
    )
    _run(agent, job)
    agent.wait("the retina deployment", lambda: _deployed(agent, job["ID"]), 240)
    ports = _ports(agent, job["ID"])
    assert len(ports) == job["TaskGroups"][0]["Count"]
    agent.wait("retina SERVING", lambda: _serving("retina", ports), 60)
    return job, ports[0]


def _bad_canary_is_reverted(agent: Agent, job: dict[str, Any]) -> None:
    """A new version whose task cannot start gets one canary, never touches the running
    allocations, fails its deployment and is reverted automatically (update block)."""
    serving_before = _ports(agent, job["ID"])
    bad = copy.deepcopy(job)
    (task,) = bad["TaskGroups"][0]["Tasks"]
    task["Config"]["args"] = [*task["Config"]["args"], "--no-such-flag"]  # exits 2 at once
    _run(agent, bad)

    def deployment(version: int) -> dict[str, Any] | None:
        for d in agent.api("GET", f"/v1/job/{job['ID']}/deployments"):
            if d["JobVersion"] == version:
                return dict(d)
        return None

    failed = agent.wait(
        "the bad version's deployment to fail",
        lambda: (d := deployment(1)) is not None and d["Status"] == "failed" and d,
        300,
    )
    assert failed["TaskGroups"]["retina"]["DesiredCanaries"] == 1
    assert _serving("retina", serving_before), "the old allocations kept serving"

    def reverted() -> bool:
        current = agent.api("GET", f"/v1/job/{job['ID']}")
        (t,) = current["TaskGroups"][0]["Tasks"]
        return bool(current["Version"] >= 2 and "--no-such-flag" not in t["Config"]["args"])

    agent.wait("auto-revert to the stable version", reverted, 120)


@pytest.mark.timeout(900)
def test_retina_job_runs_for_real(agent: Agent) -> None:
    job, _ = _retina(agent)
    _bad_canary_is_reverted(agent, job)
    _stop_within_kill_timeout(agent, job)


@pytest.mark.timeout(900)
def test_the_stack_runs_for_real(agent: Agent) -> None:
    cassandra = os.environ.get("EMBARK_TEST_CASSANDRA")
    kafka = os.environ.get("EMBARK_TEST_KAFKA")
    if not (cassandra and kafka):
        pytest.skip("set EMBARK_TEST_CASSANDRA and EMBARK_TEST_KAFKA (host:port) as well")
    suffix = uuid.uuid4().hex[:8]
    backends = {
        "CONTACT_POINTS": json.dumps([cassandra]),
        "KEYSPACE": f"nomad_{suffix}",
        "REPLICATION": json.dumps({"class": "SimpleStrategy", "replication_factor": 1}),
    }
    catalog = str(ARTIFACTS / "catalog.json")

    schema = _as_raw_exec(
        _parsed(agent, NOMAD_DIR / "embark-schema.nomad.hcl"),
        command=[str(VENV_BIN / "embark"), "schema", "apply"],
        port_env="EMBARK_PORT",
        env={f"EMBARK_STORE__CASSANDRA__{k}": v for k, v in backends.items()},
    )
    _run(agent, schema)

    def schema_done() -> bool:
        allocs = agent.api("GET", f"/v1/job/{schema['ID']}/allocations")
        if any(a["ClientStatus"] == "failed" for a in allocs):
            pytest.fail(f"schema job failed: {allocs}")
        return bool(allocs) and all(a["ClientStatus"] == "complete" for a in allocs)

    agent.wait("the schema job", schema_done, 180)

    retina, retina_port = _retina(agent)
    topic = f"embark.jobs.{suffix}"
    for name, prefix, command, port_env in (
        ("kfc", "KFC_", "run", "KFC_HEALTH_PORT"),
        ("embark", "EMBARK_", "serve", "EMBARK_PORT"),
    ):
        env = {
            f"{prefix}CATALOG": catalog,
            f"{prefix}METRICS_PORT": "0",
            f"{prefix}RETINA_ADDRESS": f"127.0.0.1:{retina_port}",
            f"{prefix}QUEUE__KAFKA__BOOTSTRAP_SERVERS": kafka,
            f"{prefix}QUEUE__KAFKA__JOBS_TOPIC": topic,
            f"{prefix}QUEUE__KAFKA__DEAD_LETTER_TOPIC": f"{topic}.dlq",
            f"{prefix}QUEUE__KAFKA__GROUP_ID": f"kfc-{suffix}",
            **{
                f"{prefix}STORE__CASSANDRA__{k}": v
                for k, v in backends.items()
                if k != "REPLICATION"
            },
        }
        job = _as_raw_exec(
            _parsed(agent, NOMAD_DIR / f"{name}.nomad.hcl"),
            command=[str(VENV_BIN / name), command],
            port_env=port_env,
            env=env,
        )
        _run(agent, job)
        agent.wait(f"the {name} deployment", lambda job=job: _deployed(agent, job["ID"]), 240)
        ports = _ports(agent, job["ID"])
        agent.wait(f"{name} SERVING", lambda name=name, ports=ports: _serving(name, ports), 60)
        _stop_within_kill_timeout(agent, job)
    _stop_within_kill_timeout(agent, retina)
