"""The Grafana dashboard and the Prometheus alert rules in deploy/ parse, and every metric they
query is one EmbArk exports (names from the real ``EmbarkMetrics`` registry, with the suffixes
Prometheus adds), with the label names it has: a renamed metric fails here, not on a dark
dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from embark.metrics import EmbarkMetrics

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "deploy" / "grafana" / "embark.json"
ALERTS = REPO / "deploy" / "prometheus" / "embark-alerts.yml"
BUILTIN = {"up"}
_METRIC = re.compile(r"\b(embark_[a-z_]+)\b")
_SELECTOR = re.compile(r"\b(embark_[a-z_]+)\{([^}]*)\}")
_BY = re.compile(r"\bby \(([^)]*)\)")


def exported() -> dict[str, set[str]]:
    """Series name -> label names, as Prometheus scrapes them from EmbarkMetrics."""
    metrics = EmbarkMetrics()
    metrics.watch_delivery_failures(lambda: 0)
    metrics.watch_buffered(lambda: 0)
    # The label names of each metric object EmbarkMetrics holds (prometheus_client keeps them
    # on the object, keyed by the metric's base name).
    declared = {
        m._name: set(m._labelnames) for m in vars(metrics).values() if hasattr(m, "_labelnames")
    }
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_count", "_sum"],
        }.get(family.type, [""])
        labels = declared.get(family.name, set())
        for suffix in suffixes:
            names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    names["embark_hit_ratio"] = {"model"}
    return names


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = yaml.safe_load(ALERTS.read_text())
    exprs += [str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]]
    return exprs


def test_the_files_parse_and_have_content() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "embark"
    assert len(dashboard["panels"]) >= 8
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
    assert "EmbarkErrorBudgetBurn" in alerts
    assert "EmbarkLatencyHigh" in alerts


def test_every_queried_metric_and_label_exists() -> None:
    names = exported()
    for expr in expressions():
        for metric in _METRIC.findall(expr):
            assert metric in names or metric in BUILTIN, f"{metric} is not exported: {expr}"
        for metric, selector in _SELECTOR.findall(expr):
            for label in re.findall(r"(\w+)\s*=~?", selector):
                assert label in names[metric], f"{metric} has no label {label}: {expr}"
        grouped = {label.strip() for group in _BY.findall(expr) for label in group.split(",")}
        used = set(_METRIC.findall(expr))
        for label in grouped:
            assert any(label in names.get(m, set()) for m in used), f"no metric has {label}"
