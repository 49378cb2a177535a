"""The Dockerfile, read as text (no engine here to build it): multi-stage from the lock, models
built at image build time, slim non-root runtime, a gRPC health check, and ports and env names
that agree with the settings classes, docker-compose.yml and the Nomad jobs."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from typing import Any

import pytest

from embark.settings import EmbarkSettings
from kfc.settings import KfcSettings
from retina.settings import RetinaSettings
from tests.unit.deploy.deployfiles import (
    DOCKERIGNORE,
    ENV_NAME,
    REPO,
    Instruction,
    compose_env,
    dockerfile_env,
    dockerfile_instructions,
    first,
    labelled,
    load_compose,
    load_nomad_job,
    nomad_job_files,
    settings_env_names,
    settings_for,
)


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return dockerfile_instructions()


def _final_stage(instructions: list[Instruction]) -> str:
    return [i for i in instructions if i.keyword == "FROM"][-1].stage


def _of(instructions: list[Instruction], keyword: str, stage: str | None = None) -> list[str]:
    return [i.args for i in instructions if i.keyword == keyword and stage in (None, i.stage)]


def test_multi_stage_on_a_slim_python(instructions: list[Instruction]) -> None:
    froms = _of(instructions, "FROM")
    assert len(froms) >= 3, "build, models, runtime"
    args = dict(
        re.findall(r"ARG (\w+)=(\S+)", "\n".join(f"ARG {a}" for a in _of(instructions, "ARG")))
    )
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    runtime = froms[-1]
    assert runtime.startswith("${PYTHON_IMAGE}")
    assert runtime.endswith("AS runtime")


def test_the_lock_is_installed_frozen(instructions: list[Instruction]) -> None:
    runs = " ".join(_of(instructions, "RUN", "build"))
    assert "uv sync --frozen" in runs
    assert "--no-dev" in runs
    assert "--no-editable" in runs, "the runtime venv must not point back at /app sources"
    assert "--reinstall-package embark" in runs, "uv's cache must not ship stale sources"
    assert "--extra" not in runs, "the serving venv is lean"
    assert "--all-extras" not in runs, "the serving venv is lean"
    lock_copy = next(a for a in _of(instructions, "COPY", "deps") if "uv.lock" in a)
    assert "pyproject.toml" in lock_copy


def test_no_frontend_image_and_an_optional_extra_ca(instructions: list[Instruction]) -> None:
    """A `# syntax=` line makes BuildKit pull a frontend image (no Docker Hub here); the extra
    CA is a BuildKit secret on every RUN that reaches a registry, never a layer."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert not re.search(r"(?m)^#\s*syntax\s*=", text)
    for run in _of(instructions, "RUN"):
        if "uv sync" in run or "pip install" in run:
            assert "--mount=type=secret,id=extra_ca" in run, run
            assert "with-extra-ca" in run, run


def test_models_are_built_at_image_build_time(instructions: list[Instruction]) -> None:
    final = _final_stage(instructions)
    builds = [i for i in instructions if i.keyword == "RUN" and " models build " in i.args]
    assert builds, "retina models build must run during docker build"
    assert "from retina.cli import main" in builds[0].args
    assert all(i.stage != final for i in builds), "in a build stage, not the runtime"
    copies = _of(instructions, "COPY", final)
    assert any(c.startswith("--from=models ") and "/app/artifacts" in c for c in copies)
    assert "FROM models-${MODELS} AS models" in (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert any(c.startswith("--from=build ") and "/app/.venv" in c for c in copies)
    env = dockerfile_env(instructions, final)
    assert env["HF_HUB_OFFLINE"] == "1", "no model hub at start"


def test_runtime_is_non_root_and_has_no_downloads(instructions: list[Instruction]) -> None:
    final = _final_stage(instructions)
    users = _of(instructions, "USER", final)
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    for ins in instructions:
        if ins.keyword == "RUN":
            assert not re.search(r"\b(curl|wget)\b|github\.com|releases/download", ins.args), (
                f"no downloads outside the package registries: {ins.args}"
            )
            assert "huggingface" not in ins.args


def test_healthcheck_uses_grpc_health(instructions: list[Instruction]) -> None:
    (check,) = _of(instructions, "HEALTHCHECK")
    assert "/app/deploy/healthcheck.py" in check
    assert "CMD" in check
    copies = _of(instructions, "COPY", _final_stage(instructions))
    assert any("deploy/healthcheck.py" in c for c in copies)


def test_default_command_is_the_single_container_trial(instructions: list[Instruction]) -> None:
    """`docker run -p 50051:50051 IMAGE` must serve: `embark dev` on all interfaces, with the
    data and heads directories that are the image's volumes."""
    (cmd,) = _of(instructions, "CMD")
    argv = json.loads(cmd)
    assert argv[:4] == ["embark", "dev", "--host", "0.0.0.0"]
    assert argv[argv.index("--data-dir") + 1] == "/app/data"
    assert argv[argv.index("--heads-dir") + 1] == "/app/heads"
    (volumes,) = _of(instructions, "VOLUME")
    assert set(json.loads(volumes)) == {"/app/data", "/app/heads"}


def test_exposed_ports_are_the_settings_ports(instructions: list[Instruction]) -> None:
    exposed = {int(p) for a in _of(instructions, "EXPOSE") for p in a.split()}
    assert exposed == {
        EmbarkSettings.model_fields["port"].default,
        RetinaSettings.model_fields["port"].default,
        KfcSettings.model_fields["health_port"].default,
    }


def test_env_names_are_settings_fields(instructions: list[Instruction]) -> None:
    env = dockerfile_env(instructions, _final_stage(instructions))
    ours = [name for name in env if ENV_NAME.fullmatch(name)]
    assert ours, "the image sets the container bind addresses"
    for name in ours:
        assert name in settings_env_names(settings_for(name)), f"{name} is not a settings field"
    # Containers are reached over their network: bind all interfaces.
    for prefix in ("EMBARK_", "KFC_", "RETINA_"):
        assert env[f"{prefix}HOST"] == "0.0.0.0"


def test_catalog_path_agrees_everywhere(instructions: list[Instruction]) -> None:
    """The image, compose and Nomad all point the processes at the artifacts built into it."""
    env = dockerfile_env(instructions, _final_stage(instructions))
    catalog = env["EMBARK_CATALOG"]
    assert env["KFC_CATALOG"] == catalog
    assert catalog == f"{env['RETINA_ARTIFACTS_DIR']}/catalog.json"
    seen: list[str] = []
    for service in load_compose()["services"].values():
        for name, value in compose_env(service).items():
            if name.endswith("_CATALOG") or name == "RETINA_ARTIFACTS_DIR":
                seen.append(value)
    for path in nomad_job_files():
        for group in load_nomad_job(path).groups.values():
            for task in labelled(group.get("task")).values():
                for name, value in (first(task["env"]) if task.get("env") else {}).items():
                    if name.endswith("_CATALOG") or name == "RETINA_ARTIFACTS_DIR":
                        seen.append(value)
    assert seen
    assert set(seen) <= {catalog, env["RETINA_ARTIFACTS_DIR"]}


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for our file: last match wins, ! negates."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.removeprefix("**/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) for p in prefixes) or fnmatch.fnmatch(parts[-1], pat):
            ignored = not negate
    return ignored


def test_copied_sources_exist_and_are_in_the_build_context(
    instructions: list[Instruction],
) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources: list[str] = []
    for args in _of(instructions, "COPY"):
        words = shlex.split(args)
        if any(w.startswith("--from=") for w in words):
            continue
        sources.extend(w for w in words[:-1] if not w.startswith("--"))
    assert "uv.lock" in sources
    assert "deploy/healthcheck.py" in sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not _ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    for heavy in (".venv", "artifacts", ".devstack", "data", ".git"):
        assert _ignored(heavy, patterns), f"{heavy} must stay out of the build context"


def test_every_package_of_the_wheel_is_copied(instructions: list[Instruction]) -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    packages: Any = re.search(r"packages = \[([^\]]*)\]", pyproject)
    assert packages
    wanted = set(re.findall(r'"([^"]+)"', packages[1]))
    copied = {shlex.split(a)[0] for a in _of(instructions, "COPY", "build")}
    assert wanted <= copied, f"hatch builds {wanted}; COPY is missing {wanted - copied}"
