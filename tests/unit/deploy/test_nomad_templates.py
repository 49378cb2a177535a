"""The Nomad jobs' secret templates, rendered by Go's text/template (the engine Nomad's
consul-template runs, with its missingkey=zero option) through tests/unit/deploy/nomadvar:
a Nomad Variable that lacks keys (the docs' `nomad var put ... cassandra_username=...
cassandra_password=...`, no Kafka keys, no token) renders only the keys it has, and what renders
is accepted by the settings classes. Skipped when no Go toolchain is installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.unit.deploy.deployfiles import NOMAD_DIR, build_settings, load_nomad_job

RENDERER = Path(__file__).parent / "nomadvar" / "main.go"
GO = shutil.which("go") or (
    "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
)
JOBS = {"embark": "EMBARK_", "kfc": "KFC_", "embark-schema": "EMBARK_"}
# What the Nomad client interpolates at run time, for parsing the env block's values.
RUNTIME = {
    "NOMAD_UPSTREAM_ADDR_retina": "127.0.0.1:50052",
    "NOMAD_ALLOC_INDEX": "0",
    "NOMAD_TASK_DIR": "/local",
}

pytestmark = pytest.mark.skipif(GO is None, reason="no Go toolchain to run text/template")


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("nomadvar") / "nomadvar"
    assert GO is not None
    # GOPATH mode: one standard-library-only file, nothing fetched; the build cache is reused.
    subprocess.run(
        [GO, "build", "-o", str(binary), str(RENDERER)],
        check=True,
        timeout=300,
        env={**os.environ, "GO111MODULE": "off"},
    )
    return binary


def render(renderer: Path, data: str, path: str, items: dict[str, str] | None) -> str:
    raw = "-" if items is None else json.dumps(items)
    result = subprocess.run(
        [str(renderer), path, raw], input=data, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _secret_template(job: str) -> tuple[dict[str, str], str]:
    parsed = load_nomad_job(NOMAD_DIR / f"{job}.nomad.hcl")
    ((task),) = list(parsed.tasks())
    env = {k: parsed.resolve(v, RUNTIME) for k, v in task.env.items()}
    (data,) = [t["data"] for t in task.templates if "nomadVar" in t["data"]]
    return env, data


def _assignments(rendered: str) -> dict[str, str]:
    lines = [line.strip() for line in rendered.splitlines() if line.strip()]
    return dict(line.split("=", 1) for line in lines)


@pytest.mark.parametrize("job", sorted(JOBS))
def test_a_variable_without_kafka_keys_renders_only_its_keys(
    renderer: Path, job: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, data = _secret_template(job)
    items = {"cassandra_username": "embark", "cassandra_password": "s3cret"}
    rendered = _assignments(render(renderer, data, f"nomad/jobs/{job}", items))
    prefix = JOBS[job]
    assert rendered == {
        f"{prefix}STORE__CASSANDRA__USERNAME": "embark",
        f"{prefix}STORE__CASSANDRA__PASSWORD": "s3cret",
    }
    settings: Any = build_settings(prefix, {**env, **rendered}, monkeypatch)
    assert settings.store.cassandra.username.get_secret_value() == "embark"


@pytest.mark.parametrize("job", sorted(JOBS))
def test_no_variable_and_a_full_variable(renderer: Path, job: str) -> None:
    _, data = _secret_template(job)
    assert _assignments(render(renderer, data, f"nomad/jobs/{job}", None)) == {}
    keys = set(re.findall(r"with \.(\w+)\.Value", data))
    full = {k: f"v-{k}" for k in keys}
    rendered = _assignments(render(renderer, data, f"nomad/jobs/{job}", full))
    assert len(rendered) == len(keys), rendered
    assert all(v.startswith("v-") for v in rendered.values())


def test_the_old_form_would_render_empty_settings(renderer: Path) -> None:
    """The regression this guards: `with .key` on an item is always true (the item is a struct),
    so a missing key rendered `NAME=` and the empty value failed settings validation."""
    old = '{{ with nomadVar "p" }}{{- with .kafka_sasl_mechanism }}SASL={{ . }}{{- end }}{{ end }}'
    assert _assignments(render(renderer, old, "p", {"cassandra_username": "u"})) == {"SASL": ""}
