"""deploy/nomad/: every file parses (python-hcl2), and the app jobs have what running them for
real needs: Consul registration with gRPC health, mesh upstreams, canary updates with
auto-revert, resources, a kill_timeout above the services' shutdown grace, CPU autoscaling for
retina and kfc (kfc never above the topic's partitions), and image/addresses/secrets from
variables. Env names and values are checked against the settings classes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from embark.queue.kafka import KafkaConfig
from tests.unit.deploy.deployfiles import (
    COMMANDS,
    ENV_NAME,
    NOMAD_DIR,
    NomadJob,
    NomadTask,
    build_settings,
    duration_s,
    first,
    labelled,
    load_hcl,
    load_nomad_job,
    nomad_job_files,
    settings_env_names,
    settings_for,
)

# job -> (settings prefix, gRPC health service name or "" for the server, health port field)
APPS = {
    "embark": ("EMBARK_", "embark.v1.EmbArk", "port"),
    "kfc": ("KFC_", "", "health_port"),
    "retina": ("RETINA_", "retina.v1.Retina", "port"),
}
SCALED = ("retina", "kfc")
# What the Nomad client interpolates at run time, for the purpose of parsing the values.
RUNTIME = {
    "NOMAD_UPSTREAM_ADDR_retina": "127.0.0.1:50052",
    "NOMAD_ALLOC_INDEX": "0",
    "NOMAD_SECRETS_DIR": "/secrets",
    "NOMAD_TASK_DIR": "/local",
}
# Nomad clients cap kill_timeout at max_kill_timeout, 30 s unless the operator raises it.
MAX_KILL_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def jobs() -> dict[str, NomadJob]:
    loaded = [load_nomad_job(path) for path in nomad_job_files()]
    return {job.name: job for job in loaded}


def _task(job: NomadJob) -> NomadTask:
    (task,) = list(job.tasks())
    return task


def _env(job: NomadJob) -> dict[str, str]:
    return {k: job.resolve(v, RUNTIME) for k, v in _task(job).env.items()}


def _settings(job: NomadJob, monkeypatch: pytest.MonkeyPatch) -> Any:
    return build_settings(APPS[job.name][0], _env(job), monkeypatch)


def test_every_file_parses_and_the_expected_jobs_exist(jobs: dict[str, NomadJob]) -> None:
    for path in sorted(NOMAD_DIR.rglob("*.hcl")):
        assert load_hcl(path), path
    assert set(jobs) == {
        "embark", "kfc", "retina", "embark-schema", "embark-ingress", "cassandra", "kafka",
    }  # fmt: skip
    for name in ("cassandra", "kafka"):
        assert jobs[name].path.parent.name == "examples", f"{name} is an example, not the app"


@pytest.mark.parametrize("name", sorted(APPS))
def test_runs_the_one_image_with_the_right_command(name: str, jobs: dict[str, NomadJob]) -> None:
    job = jobs[name]
    task = _task(job)
    assert task.body["driver"] == "docker"
    config = first(task.body["config"])
    assert config["image"] == "${var.image}"
    assert "default" not in job.variables["image"], "the image tag is always chosen explicitly"
    command = (config["command"], *config["args"])
    assert command in COMMANDS
    assert COMMANDS[command] == APPS[name][0]


def test_schema_job_is_a_one_shot_migration(jobs: dict[str, NomadJob]) -> None:
    job = jobs["embark-schema"]
    assert job.body["type"] == "batch"
    config = first(_task(job).body["config"])
    assert (config["command"], *config["args"]) == ("embark", "schema", "apply")


@pytest.mark.parametrize("name", sorted(APPS))
def test_update_uses_canaries_and_auto_revert(name: str, jobs: dict[str, NomadJob]) -> None:
    update = first(jobs[name].body["update"])
    assert update["canary"] >= 1
    assert update["auto_revert"] is True
    assert update["health_check"] == "checks"
    assert duration_s(update["min_healthy_time"]) < duration_s(update["healthy_deadline"])
    assert duration_s(update["healthy_deadline"]) < duration_s(update["progress_deadline"])


@pytest.mark.parametrize("name", sorted(APPS))
def test_consul_service_with_grpc_health_through_the_mesh(
    name: str, jobs: dict[str, NomadJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = jobs[name]
    (group,) = job.groups.values()
    network = first(group["network"])
    assert network["mode"] == "bridge", "Connect sidecars need a network namespace"
    services = {s["name"]: s for s in group["service"]}
    service = services[name]
    assert service["provider"] == "consul"
    settings = _settings(job, monkeypatch)
    # The service port is the in-namespace port the process listens on (Connect needs a number).
    assert int(service["port"]) == getattr(settings, APPS[name][2])
    assert settings.host == "127.0.0.1", "only the sidecar should reach the process"
    connect = first(service["connect"])
    assert connect["sidecar_service"], "Consul Connect sidecar (mTLS, mesh balancing)"
    (check,) = service["check"]
    assert check["type"] == "grpc"
    assert check["expose"] is True
    assert check["protocol"] == "http2"
    assert check["path"] == "/grpc.health.v1.Health/Check"
    assert check.get("grpc_service", "") == APPS[name][1]
    assert duration_s(check["timeout"]) < duration_s(check["interval"])


@pytest.mark.parametrize("name", sorted(APPS))
def test_metrics_are_scrapeable_through_an_expose_path(
    name: str, jobs: dict[str, NomadJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = jobs[name]
    (group,) = job.groups.values()
    ports = labelled(first(group["network"]).get("port"))
    services = {s["name"]: s for s in group["service"]}
    metrics_service = services[f"{name}-metrics"]
    assert "prometheus" in metrics_service["tags"]
    assert metrics_service["port"] in ports
    proxy = first(first(first(services[name]["connect"])["sidecar_service"])["proxy"])
    (path,) = first(proxy["expose"])["path"]
    assert path["path"] == "/metrics"
    assert path["listener_port"] == metrics_service["port"]
    assert path["local_path_port"] == _settings(job, monkeypatch).metrics_port > 0


@pytest.mark.parametrize("name", ["embark", "kfc"])
def test_retina_is_reached_through_a_connect_upstream(
    name: str, jobs: dict[str, NomadJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = jobs[name]
    (group,) = job.groups.values()
    service = next(s for s in group["service"] if s["name"] == name)
    proxy = first(first(first(service["connect"])["sidecar_service"])["proxy"])
    upstreams = {u["destination_name"]: u for u in proxy["upstreams"]}
    assert set(upstreams) == {"retina"}
    assert _task(job).env[f"{APPS[name][0]}RETINA_ADDRESS"] == "${NOMAD_UPSTREAM_ADDR_retina}"
    settings = _settings(job, monkeypatch)
    assert settings.retina_address == f"127.0.0.1:{upstreams['retina']['local_bind_port']}"


@pytest.mark.parametrize("name", sorted(APPS))
def test_kill_timeout_outlasts_the_shutdown_grace(
    name: str, jobs: dict[str, NomadJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = jobs[name]
    task = _task(job)
    kill_timeout = duration_s(task.body["kill_timeout"])
    settings = _settings(job, monkeypatch)
    grace = getattr(settings, "shutdown_grace_s", 0.0)
    if name == "embark":  # the Kafka producer's flush follows the gRPC grace
        grace += settings.queue.kafka.close_timeout_s
    assert kill_timeout > grace, f"{name}: kill_timeout {kill_timeout}s <= grace {grace}s"
    assert kill_timeout <= MAX_KILL_TIMEOUT_S, "clients cap kill_timeout at max_kill_timeout"


@pytest.mark.parametrize("name", sorted(APPS))
def test_resources_are_reserved(name: str, jobs: dict[str, NomadJob]) -> None:
    resources = first(_task(jobs[name]).body["resources"])
    assert resources.get("cpu", 0) > 0 or resources.get("cores", 0) > 0
    assert resources["memory"] > 0
    assert resources.get("memory_max", resources["memory"]) >= resources["memory"]


@pytest.mark.parametrize("name", SCALED)
def test_cpu_autoscaling_policy(name: str, jobs: dict[str, NomadJob]) -> None:
    job = jobs[name]
    (group,) = job.groups.values()
    scaling = first(group["scaling"])
    assert scaling["enabled"] is True
    assert 1 <= scaling["min"] <= scaling["max"]
    count = int(job.resolve(group["count"]))
    assert scaling["min"] <= count <= scaling["max"]
    policy = first(scaling["policy"])
    checks = labelled(policy["check"])
    assert checks, "a scaling check"
    for check in checks.values():
        assert check["source"] == "nomad-apm"
        assert "cpu" in check["query"]
        strategy = labelled(check["strategy"])["target-value"]
        assert 0 < strategy["target"] <= 100


def test_kfc_never_scales_past_the_partitions(
    jobs: dict[str, NomadJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    kfc = jobs["kfc"]
    (group,) = kfc.groups.values()
    partitions = _settings(kfc, monkeypatch).queue.kafka.partitions
    assert first(group["scaling"])["max"] <= partitions
    # The topic is created by whichever of EmbArk and KFC starts first: both must agree.
    assert _settings(jobs["embark"], monkeypatch).queue.kafka.partitions == partitions
    assert partitions == int(kfc.variables["kafka_partitions"]["default"])
    assert KafkaConfig.model_fields["partitions"].default == partitions


def test_env_names_are_settings_fields(jobs: dict[str, NomadJob]) -> None:
    for job in jobs.values():
        for task in job.tasks():
            for var in {*task.env, *task.template_env_names()}:
                if ENV_NAME.fullmatch(var):
                    assert var in settings_env_names(settings_for(var)), (
                        f"{job.path.name}: {var} is not a settings field"
                    )
        if job.name in APPS:
            prefix = APPS[job.name][0]
            for var in _task(job).env:
                assert var.startswith(prefix), f"{job.name} sets another service's {var}"


@pytest.mark.parametrize("name", [*sorted(APPS), "embark-schema"])
def test_env_values_parse_into_the_settings(
    name: str, jobs: dict[str, NomadJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = jobs[name]
    prefix = APPS[name][0] if name in APPS else "EMBARK_"
    settings: Any = build_settings(prefix, _env(job), monkeypatch)
    if prefix != "RETINA_":
        assert settings.store.backend == "cassandra"
        assert settings.store.cassandra.contact_points == tuple(
            json.loads(job.variables["cassandra_contact_points"]["default"])
        )
    if name in ("embark", "kfc"):
        assert settings.queue.backend == "kafka"


def test_addresses_default_to_the_example_services(jobs: dict[str, NomadJob]) -> None:
    """The default addresses are the Consul names the example Cassandra/Kafka jobs register."""
    registered = {
        s["name"]
        for name in ("cassandra", "kafka")
        for group in jobs[name].groups.values()
        for s in group["service"]
    }
    for job in (jobs["embark"], jobs["kfc"], jobs["embark-schema"]):
        for var, spec in job.variables.items():
            default = str(spec.get("default", ""))
            if ".service.consul" in default:
                service = default.split(".service.consul")[0].split('"')[-1]
                assert service in registered, f"{job.name}: {var} names unknown {service}"


def test_secrets_come_from_nomad_variables(jobs: dict[str, NomadJob]) -> None:
    secret_words = ("TOKEN", "PASSWORD", "USERNAME")
    for job in jobs.values():
        for task in job.tasks():
            for var in task.env:
                assert not any(w in var for w in secret_words), (
                    f"{job.name}: {var} is a secret; render it from a Nomad Variable"
                )
            for template in task.templates:
                if "nomadVar" in template["data"]:
                    # The job's own path: readable by this job's workload identity only.
                    assert f'nomadVar "nomad/jobs/{job.name}"' in template["data"]
                    assert template["destination"].startswith("${NOMAD_SECRETS_DIR}/")
                    assert template["env"] is True
    for name in ("embark", "kfc"):
        names = _task(jobs[name]).template_env_names()
        assert any("PASSWORD" in n for n in names), f"{name}: credentials are templated"


def test_clients_outside_the_mesh_enter_through_an_ingress_gateway(
    jobs: dict[str, NomadJob],
) -> None:
    (group,) = jobs["embark-ingress"].groups.values()
    service = first(group["service"])
    gateway = first(first(service["connect"])["gateway"])
    listener = first(first(gateway["ingress"])["listener"])
    assert listener["protocol"] == "grpc"
    routed = [s["name"] for s in listener["service"]]
    assert routed == ["embark"]
    entries = [load_hcl(p) for p in sorted((NOMAD_DIR / "consul").glob("*.hcl"))]
    intentions = {e["Name"]: e for e in entries if e["Kind"] == "service-intentions"}
    sources = intentions["embark"]["Sources"]
    assert {"Name": service["name"], "Action": "allow"} in sources
    assert sources[-1] == {"Name": "*", "Action": "deny"}


def test_heads_are_an_artifact_of_the_embark_task(jobs: dict[str, NomadJob]) -> None:
    job = jobs["embark"]
    task = _task(job)
    assert task.env["EMBARK_HEADS_DIR"] == "${NOMAD_TASK_DIR}/heads"
    (dynamic,) = task.body["dynamic"]
    assert "artifact" in dynamic
    content = first(dynamic["artifact"]["content"])
    assert content["destination"] == "local/heads"
    assert job.variables["heads_source"]["default"] == ""


def test_consul_config_entries_enable_grpc_balancing_and_intentions() -> None:
    entries = [load_hcl(p) for p in sorted((NOMAD_DIR / "consul").glob("*.hcl"))]
    defaults = {e["Name"]: e for e in entries if e["Kind"] == "service-defaults"}
    # Every upstream destination is balanced per request (L7), not per connection.
    assert defaults["retina"]["Protocol"] == "grpc"
    intentions = {e["Name"]: e for e in entries if e["Kind"] == "service-intentions"}
    allowed = {s["Name"] for s in intentions["retina"]["Sources"] if s["Action"] == "allow"}
    assert allowed == {"embark", "kfc"}
    assert intentions["retina"]["Sources"][-1] == {"Name": "*", "Action": "deny"}
