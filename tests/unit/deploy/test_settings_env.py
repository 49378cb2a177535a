"""The env-name derivation the other deployment tests rely on, and the health probe's defaults,
both checked against the settings classes."""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType

import pytest

from embark.settings import EmbarkSettings
from kfc.settings import KfcSettings
from retina.settings import RetinaSettings
from tests.unit.deploy.deployfiles import (
    COMPOSE,
    DOCS,
    ENV_NAME,
    HEALTHCHECK,
    SETTINGS,
    TEST_ONLY_ENV,
    settings_env_names,
)


def _probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("embark_healthcheck", HEALTHCHECK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_env_names_include_nested_paths() -> None:
    embark = settings_env_names(EmbarkSettings)
    assert {
        "EMBARK_PORT",
        "EMBARK_STORE",
        "EMBARK_STORE__BACKEND",
        "EMBARK_STORE__CASSANDRA__CONTACT_POINTS",
        "EMBARK_STORE__CASSANDRA__PASSWORD",
        "EMBARK_QUEUE__KAFKA__BOOTSTRAP_SERVERS",
        "EMBARK_QUEUE__KAFKA__SASL_PASSWORD",
        "EMBARK_TOKEN",
    } <= embark
    assert "KFC_QUEUE__KAFKA__GROUP_ID" in settings_env_names(KfcSettings)
    assert "RETINA_FETCH__ALLOW_PRIVATE" in settings_env_names(RetinaSettings)
    # Not invented: a leaf's own fields are not walked into (SecretStr, Path, tuples...).
    assert not any(name.startswith("EMBARK_TOKEN__") for name in embark)


@pytest.mark.parametrize("prefix", sorted(SETTINGS))
def test_env_names_are_what_pydantic_settings_reads(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round trip: setting a derived nested name really changes the field (so the derivation
    matches pydantic-settings' own rules, prefix and delimiter included)."""
    cls = SETTINGS[prefix]
    probes = {
        "EMBARK_": ("EMBARK_STORE__CASSANDRA__KEYSPACE", "probe_ks"),
        "KFC_": ("KFC_QUEUE__KAFKA__GROUP_ID", "probe-group"),
        "RETINA_": ("RETINA_FETCH__USER_AGENT", "probe-agent"),
    }
    name, value = probes[prefix]
    assert name in settings_env_names(cls)
    monkeypatch.setenv(name, value)
    assert value in repr(cls().model_dump())


@pytest.mark.parametrize(
    ("service", "settings", "port_field"),
    [
        ("embark", EmbarkSettings, "port"),
        ("kfc", KfcSettings, "health_port"),
        ("retina", RetinaSettings, "port"),
    ],
)
def test_healthcheck_defaults_match_settings(service: str, settings: type, port_field: str) -> None:
    probe = _probe().PROBES[service]
    names = settings_env_names(settings)
    assert probe.port_env in names
    assert probe.host_env in names
    assert probe.port_default == settings.model_fields[port_field].default
    assert probe.host_default == settings.model_fields["host"].default


def test_healthcheck_finds_the_process_and_its_port() -> None:
    probe = _probe()
    lines = [
        ["/usr/bin/docker-init", "--", "kfc", "run"],
        ["/bin/sh", "-c", "sleep 1"],
    ]
    assert probe.detect(lines) == "kfc"
    assert probe.detect([["/app/.venv/bin/python", "/app/.venv/bin/embark", "-v", "serve"]]) == (
        "embark"
    )
    assert probe.detect([["python", "/app/.venv/bin/retina", "serve"]]) == "retina"
    assert probe.detect([["embark", "schema", "apply"]]) is None
    # The image's default command, the single-container trial.
    trial = ["/app/.venv/bin/python", "/app/.venv/bin/embark", "dev", "--host", "0.0.0.0"]
    assert probe.detect([trial]) == "dev"
    assert probe.address_for("dev", {"EMBARK_HOST": "0.0.0.0"}) == "127.0.0.1:50051"
    assert probe.address_for("retina", {"RETINA_HOST": "0.0.0.0"}) == "127.0.0.1:50052"
    assert probe.address_for("kfc", {"KFC_HEALTH_PORT": "6000"}) == "127.0.0.1:6000"
    assert probe.address_for("embark", {"EMBARK_HOST": "::1"}) == "[::1]:50051"


def test_healthcheck_reports_an_unreachable_server_as_unhealthy() -> None:
    probe = _probe()
    assert probe.main(["embark", "--address", "127.0.0.1:1", "--timeout", "0.5"]) == 1


def test_docs_name_only_real_settings() -> None:
    """Every EMBARK_/KFC_/RETINA_ name in docs/deploy.md is a field a newcomer can set."""
    valid = set().union(*(settings_env_names(cls) for cls in SETTINGS.values()))
    # Allow prose like "EMBARK_STORE__CASSANDRA__*" by ignoring names cut at a wildcard.
    text = re.sub(r"\b[A-Z0-9_]+__?\*", "", DOCS.read_text())
    # docker-compose.yml's own ${VARIABLES} (EMBARK_IMAGE, EMBARK_KEYSPACE) are the compose
    # file's inputs, not settings; they are documented with it.
    compose_inputs = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    unknown = {
        name
        for name in ENV_NAME.findall(text)
        if name not in valid and not TEST_ONLY_ENV.match(name) and name not in compose_inputs
    }
    assert not unknown, f"docs/deploy.md names settings that do not exist: {sorted(unknown)}"
