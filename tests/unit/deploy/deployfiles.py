"""Readers for the deployment files (Dockerfile, docker-compose.yml, deploy/nomad/*.hcl) and
the one source of truth they are checked against: the pydantic settings classes.

``settings_env_names`` derives every environment variable a settings class reads, nested
``__`` paths included, from the class itself, so a renamed or removed field fails the
deployment tests instead of being silently ignored at run time (EmbarkSettings and KfcSettings
ignore unknown variables; RetinaSettings ignores unknown top-level ones).
"""

from __future__ import annotations

import functools
import json
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from embark.settings import EmbarkSettings
from kfc.settings import KfcSettings
from retina.settings import RetinaSettings

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
NOMAD_DIR = REPO / "deploy" / "nomad"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
HEALTHCHECK = REPO / "deploy" / "healthcheck.py"
DOCS = REPO / "docs" / "deploy.md"

SETTINGS: Mapping[str, type[BaseSettings]] = {
    "EMBARK_": EmbarkSettings,
    "KFC_": KfcSettings,
    "RETINA_": RetinaSettings,
}
# The service each process's settings belong to: command -> prefix.
COMMANDS: Mapping[tuple[str, ...], str] = {
    ("embark", "serve"): "EMBARK_",
    ("embark", "schema", "apply"): "EMBARK_",
    ("kfc", "run"): "KFC_",
    ("retina", "serve"): "RETINA_",
}
ENV_NAME = re.compile(r"\b(?:EMBARK|KFC|RETINA)_[A-Z0-9_]*[A-Z0-9]\b")
# Variables in the same namespace that configure the tests, not a service.
TEST_ONLY_ENV = re.compile(r"^(?:EMBARK|KFC|RETINA)_TEST_")


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside ``annotation`` (through Optional/Annotated), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _nested_model(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _nested_model(arg)
            if found is not None:
                return found
    return None


def settings_env_names(cls: type[BaseSettings]) -> frozenset[str]:
    """Every variable ``cls`` reads: ``PREFIX_FIELD`` and, for nested models, each
    ``PREFIX_FIELD__SUB`` path down to the leaves (a nested model may also be given whole, as
    JSON, so its own name counts too)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    delimiter = cls.model_config.get("env_nested_delimiter")
    names: set[str] = set()

    def walk(model: type[BaseModel], path: tuple[str, ...]) -> None:
        for name, info in model.model_fields.items():
            key = (*path, (info.alias or name).upper())
            names.add(prefix + "__".join(key))
            nested = _nested_model(info.annotation)
            if nested is not None and delimiter:
                walk(nested, key)

    walk(cls, ())
    return frozenset(names)


def settings_for(name: str) -> type[BaseSettings]:
    """The settings class whose prefix starts ``name``."""
    for prefix, cls in SETTINGS.items():
        if name.startswith(prefix):
            return cls
    raise KeyError(name)


def build_settings(prefix: str, env: Mapping[str, str], monkeypatch: Any) -> BaseSettings:
    """Instantiate the settings of ``prefix`` from exactly ``env`` (the process environment's
    own EMBARK_/KFC_/RETINA_ variables are removed first)."""
    for name in list(os.environ):
        if ENV_NAME.fullmatch(name):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return SETTINGS[prefix]()


# ---------------------------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------------------------

_COMPOSE_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def compose_interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """Compose's ``${NAME}`` / ``${NAME:-default}`` interpolation, from ``env`` (default: none
    set, as on a fresh machine)."""
    env = env or {}
    return _COMPOSE_VAR.sub(lambda m: env.get(m["name"]) or (m["default"] or ""), value)


def load_compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def compose_env(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as strings, interpolated with defaults."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)

    def text(value: Any) -> str:
        if value is None:
            return ""
        return str(value).lower() if isinstance(value, bool) else str(value)

    return {str(k): compose_interpolate(text(v)) for k, v in raw.items()}


# ---------------------------------------------------------------------------------------------
# Nomad (HCL2 through python-hcl2, normalised)
# ---------------------------------------------------------------------------------------------


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        if inner.startswith("<<"):  # heredoc: <<-EOT\n...\nEOT
            return inner.split("\n", 1)[1].rsplit("\n", 1)[0]
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return inner
        return str(decoded)
    return value


def _normalise(node: Any) -> Any:
    if isinstance(node, dict):
        return {_unquote(k): _normalise(v) for k, v in node.items() if not str(k).startswith("__")}
    if isinstance(node, list):
        return [_normalise(v) for v in node]
    if isinstance(node, str):
        return _unquote(node)
    return node


@functools.cache
def load_hcl(path: Path) -> dict[str, Any]:
    """One parse per file per test session (python-hcl2 is slow); callers must not mutate."""
    with path.open() as f:
        doc = _normalise(hcl2.load(f))
    assert isinstance(doc, dict)
    return doc


def labelled(blocks: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """``[{"label": {...}}, ...]`` (python-hcl2's shape for labelled blocks) as one dict."""
    out: dict[str, dict[str, Any]] = {}
    for block in blocks or []:
        for label, body in block.items():
            out[label] = body
    return out


def first(blocks: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The single unlabelled block of a kind (``update``, ``network``, ...)."""
    assert blocks, "block missing"
    assert len(blocks) == 1, f"expected one block, got {len(blocks)}"
    return blocks[0]


@dataclass
class NomadTask:
    name: str
    body: dict[str, Any]
    group: dict[str, Any]

    @property
    def env(self) -> dict[str, Any]:
        return dict(first(self.body["env"])) if self.body.get("env") else {}

    @property
    def templates(self) -> list[dict[str, Any]]:
        return list(self.body.get("template") or [])

    def template_env_names(self) -> set[str]:
        names: set[str] = set()
        for template in self.templates:
            names.update(re.findall(r"^\s*([A-Z][A-Z0-9_]*)=", template["data"], re.MULTILINE))
        return names


@dataclass
class NomadJob:
    path: Path
    name: str
    body: dict[str, Any]
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def groups(self) -> dict[str, dict[str, Any]]:
        return labelled(self.body.get("group"))

    def tasks(self) -> Iterator[NomadTask]:
        for group in self.groups.values():
            for name, body in labelled(group.get("task")).items():
                yield NomadTask(name, body, group)

    def resolve(self, value: Any, runtime: Mapping[str, str] | None = None) -> str:
        """``value`` with ``${var.x}`` replaced by variable defaults and ``${NOMAD_*}`` by
        ``runtime`` (what the Nomad client would interpolate)."""
        runtime = runtime or {}
        text = value if isinstance(value, str) else json.dumps(value)

        def sub(match: re.Match[str]) -> str:
            expr = match[1].strip()
            if expr.startswith("var."):
                default = self.variables[expr[4:]]["default"]
                return default if isinstance(default, str) else json.dumps(default)
            return runtime[expr]

        return re.sub(r"\$\{([^}]+)\}", sub, text)


def load_nomad_job(path: Path) -> NomadJob:
    doc = load_hcl(path)
    jobs = labelled(doc.get("job"))
    assert len(jobs) == 1, f"{path.name}: one job per file"
    ((name, body),) = jobs.items()
    return NomadJob(path, name, body, labelled(doc.get("variable")))


def nomad_job_files() -> list[Path]:
    return sorted(NOMAD_DIR.rglob("*.nomad.hcl"))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def duration_s(text: str) -> float:
    """Nomad/Go durations ("30s", "1m30s", "500ms") in seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = _DURATION.findall(text)
    assert parts, f"bad duration {text!r}"
    assert "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# ---------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: str


def dockerfile_instructions() -> list[Instruction]:
    """Instructions with line continuations joined, comments dropped, each tagged with the
    stage (``FROM ... AS name``) it belongs to."""
    logical: list[str] = []
    buffer = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    out: list[Instruction] = []
    stage = ""
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)
            stage = match[1] if match else args
        out.append(Instruction(keyword, args.strip(), stage))
    return out


def dockerfile_env(instructions: list[Instruction], stage: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV" and ins.stage == stage:
            for name, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", ins.args):
                env[name] = value
    return env
