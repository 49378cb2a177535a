"""`devstack/cluster.sh env` prints the settings docs/cluster.md recommends for a cluster: they
must parse into the real settings classes (EmbArk's, and KFC's with the KFC_ prefix) with the
replication and consistency they claim. Runs the script (it starts nothing for `env`)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from embark.settings import EmbarkSettings
from kfc.settings import KfcSettings

CLUSTER_SH = Path(__file__).resolve().parents[3] / "devstack" / "cluster.sh"


def _printed_env() -> dict[str, str]:
    out = subprocess.run(
        [str(CLUSTER_SH), "env"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    env: dict[str, str] = {}
    for line in out.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = shlex.split(value)[0]
    return env


def test_cluster_env_parses_into_the_settings_it_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _printed_env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
        monkeypatch.setenv(name.replace("EMBARK_", "KFC_", 1), value)
    for settings in (EmbarkSettings(), KfcSettings()):
        cassandra, kafka = settings.store.cassandra, settings.queue.kafka
        assert len(cassandra.contact_points) == 3
        assert cassandra.replication == {"class": "NetworkTopologyStrategy", "datacenter1": 3}
        assert cassandra.read_consistency == cassandra.write_consistency == "LOCAL_QUORUM"
        assert len(kafka.bootstrap_servers.split(",")) == 3
        assert (kafka.replication_factor, kafka.min_insync_replicas) == (3, 2)
