"""docker-compose.yml: checked by a compose tool where one is installed, and structurally here
always: images, commands, ports, health checks, start order, and every EMBARK_/KFC_/RETINA_
variable against the settings classes (and actually parsed by them)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from embark.store.cassandra import CassandraConfig
from tests.unit.deploy.deployfiles import (
    COMMANDS,
    COMPOSE,
    ENV_NAME,
    PROMETHEUS,
    REPO,
    build_settings,
    compose_env,
    load_compose,
    settings_env_names,
    settings_for,
)

APP_SERVICES = {"schema": "EMBARK_", "retina": "RETINA_", "kfc": "KFC_", "embark": "EMBARK_"}
LONG_RUNNING = ("cassandra", "kafka", "retina", "kfc", "embark")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def _compose_cli() -> list[str] | None:
    """A compose implementation that can render the file without an engine, if installed."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=10
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_tool_validates_the_file() -> None:
    """`docker compose config` validates against the compose-spec schema and resolves
    anchors, merges and interpolation; it needs no running engine."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip(
            "no compose implementation installed (`docker compose` plugin or docker-compose); "
            "the structural tests below still run"
        )
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_top_level_shape(compose: dict[str, Any]) -> None:
    assert set(compose) <= {"name", "services", "volumes", "networks", "configs", "secrets"} | {
        key for key in compose if key.startswith("x-")
    }
    assert "version" not in compose  # obsolete in the compose spec; compose v2 warns on it
    assert set(compose["services"]) == {*LONG_RUNNING, "schema", "prometheus"}


def test_every_service_has_a_pinned_image(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image"
        assert ":" in image, f"{name}: unpinned {image}"
        assert not image.endswith(":latest"), f"{name}: unpinned {image}"
    # Variables (the locally built images in tests/docker) whose defaults are the official ones.
    assert services["cassandra"]["image"] == "${CASSANDRA_IMAGE:-cassandra:5.0}"
    assert services["kafka"]["image"].startswith("${KAFKA_IMAGE:-apache/kafka:3.9")


def test_app_services_build_the_one_image(services: dict[str, dict[str, Any]]) -> None:
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1, f"one image for every process, got {images}"
    for name in APP_SERVICES:
        build = services[name]["build"]
        assert (REPO / build["context"] / build["dockerfile"]).is_file()


def test_commands_are_real_cli_commands(services: dict[str, dict[str, Any]]) -> None:
    for name, prefix in APP_SERVICES.items():
        command = tuple(services[name]["command"])
        assert command in COMMANDS, f"{name}: unknown command {command}"
        assert COMMANDS[command] == prefix
    scripts = (REPO / "pyproject.toml").read_text()
    for script in {c[0] for c in COMMANDS}:
        assert f'{script} = "' in scripts, f"{script} is not a [project.scripts] entry"


def test_env_names_are_settings_fields(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for var in compose_env(service):
            if not ENV_NAME.fullmatch(var):
                continue
            assert var in settings_env_names(settings_for(var)), (
                f"{name}: {var} is not a settings field"
            )
            if name in APP_SERVICES:
                assert var.startswith(APP_SERVICES[name]), f"{name} sets another service's {var}"


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_env_values_parse_into_the_settings(
    name: str, services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = compose_env(services[name])
    settings: Any = build_settings(APP_SERVICES[name], env, monkeypatch)
    if name == "retina":
        assert settings.host == "0.0.0.0"
        return
    store = settings.store
    assert store.backend == "cassandra"
    assert isinstance(store.cassandra, CassandraConfig)
    for point in store.cassandra.contact_points:
        assert point.rpartition(":")[0] in services, f"{name}: {point} is not a compose service"
    if name != "schema":
        assert settings.host == "0.0.0.0"
        assert settings.queue.backend == "kafka"
        host = settings.queue.kafka.bootstrap_servers.rpartition(":")[0]
        assert host in services
        retina_host, _, retina_port = settings.retina_address.rpartition(":")
        assert retina_host == "retina"
        assert int(retina_port) == int(compose_env(services["retina"])["RETINA_PORT"])


def test_same_topic_and_archive_for_embark_and_kfc(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    embark: Any = build_settings("EMBARK_", compose_env(services["embark"]), monkeypatch)
    kfc: Any = build_settings("KFC_", compose_env(services["kfc"]), monkeypatch)
    schema: Any = build_settings("EMBARK_", compose_env(services["schema"]), monkeypatch)
    for field in ("jobs_topic", "dead_letter_topic", "partitions", "bootstrap_servers"):
        assert getattr(embark.queue.kafka, field) == getattr(kfc.queue.kafka, field), field
    for cfg in (kfc.store.cassandra, schema.store.cassandra):
        assert cfg.keyspace == embark.store.cassandra.keyspace
        assert cfg.contact_points == embark.store.cassandra.contact_points


def test_published_ports_match_the_settings(services: dict[str, dict[str, Any]]) -> None:
    env = {name: compose_env(services[name]) for name in APP_SERVICES}
    published = {
        name: {int(str(p).rsplit(":", 1)[-1]) for p in services[name].get("ports", [])}
        for name in APP_SERVICES
    }
    assert int(env["embark"]["EMBARK_PORT"]) in published["embark"]
    assert int(env["retina"]["RETINA_PORT"]) in published["retina"]
    for name in APP_SERVICES:  # only loopback: exposing the stack is a deployment decision
        for port in services[name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} not on loopback"


def test_health_checks_and_start_order(services: dict[str, dict[str, Any]]) -> None:
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check, f"{name}: no health check"
        assert not check.get("disable"), f"{name}: health check disabled"
        assert {"test", "interval", "timeout", "retries"} <= set(check), name
    for name in ("retina", "kfc", "embark"):
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "/app/deploy/healthcheck.py"]
        assert test[3] == name
    assert services["schema"]["healthcheck"] == {"disable": True}
    assert services["schema"]["depends_on"] == {"cassandra": {"condition": "service_healthy"}}
    for name in ("kfc", "embark"):
        deps = services[name]["depends_on"]
        assert deps["schema"] == {"condition": "service_completed_successfully"}
        assert deps["kafka"] == {"condition": "service_healthy"}
        assert deps["retina"] == {"condition": "service_healthy"}
    # Nothing waits on a service that does not exist, and there is no cycle.
    graph = {n: set(s.get("depends_on") or {}) for n, s in services.items()}
    seen: set[str] = set()

    def visit(node: str, stack: tuple[str, ...]) -> None:
        assert node in services, f"depends_on names unknown service {node}"
        assert node not in stack, f"dependency cycle {(*stack, node)}"
        if node not in seen:
            seen.add(node)
            for dep in graph[node]:
                visit(dep, (*stack, node))

    for node in graph:
        visit(node, ())


def test_shutdown_grace_fits_the_stop_grace_period(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("retina", "embark"):
        settings: Any = build_settings(APP_SERVICES[name], compose_env(services[name]), monkeypatch)
        grace = services[name]["stop_grace_period"]
        assert grace.endswith("s")
        assert float(grace[:-1]) > settings.shutdown_grace_s


def test_secrets_are_not_literals(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for var, value in (service.get("environment") or {}).items():
            if any(word in var for word in ("TOKEN", "PASSWORD", "USERNAME")):
                assert str(value).startswith("${"), f"{name}: {var} must come from the host env"


def test_prometheus_scrapes_the_metrics_ports(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = {
        f"{name}:{compose_env(services[name])[APP_SERVICES[name] + 'METRICS_PORT']}"
        for name in ("embark", "kfc", "retina")
    }
    assert targets == expected
    assert services["prometheus"]["profiles"] == ["metrics"]
