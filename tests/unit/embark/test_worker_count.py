"""How many `embark serve` workers start by default: the cores this process may use, capped by
its cgroup's CPU quota (a container's --cpus), unless EMBARK_WORKERS says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from embark.server.workers import worker_count
from embark.settings import EmbarkSettings

CORES = len(os.sched_getaffinity(0))


def _cpu_max(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpu.max"
    path.write_text(text)
    return path


def test_explicit_setting_wins(tmp_path: Path) -> None:
    settings = EmbarkSettings(workers=3)
    assert worker_count(settings, _cpu_max(tmp_path, "100000 100000\n")) == 3


def test_no_quota_is_the_affinity(tmp_path: Path) -> None:
    assert worker_count(EmbarkSettings(), _cpu_max(tmp_path, "max 100000\n")) == CORES


def test_no_cgroup_file_is_the_affinity(tmp_path: Path) -> None:
    assert worker_count(EmbarkSettings(), tmp_path / "absent") == CORES


QUOTAS = [("100000 100000", 1), ("50000 100000", 1), ("150000 100000", 2), ("800000 100000", 8)]


@pytest.mark.parametrize(("text", "quota_cpus"), QUOTAS)
def test_a_quota_caps_the_workers(tmp_path: Path, text: str, quota_cpus: int) -> None:
    assert worker_count(EmbarkSettings(), _cpu_max(tmp_path, text)) == min(CORES, quota_cpus)


def test_an_unreadable_quota_is_ignored(tmp_path: Path) -> None:
    assert worker_count(EmbarkSettings(), _cpu_max(tmp_path, "garbage")) == CORES
