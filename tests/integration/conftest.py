"""Fixtures for tests/integration: real Cassandra and Kafka, a fresh keyspace and topic per test.

Owns:

* ``cassandra_contact`` / ``kafka_bootstrap`` (session): ``"host:port"`` of a real server, found or
  started as ``servers.py`` describes (environment, already running, testcontainers, devstack.sh),
  and stopped at session end only if this session started it;
* ``keyspace_name`` / ``topic_name`` (function): a unique name per test. Nothing is created: the
  code under test creates the keyspace or topic. Whatever exists under a handed-out name at
  session end is dropped, so a long-lived dev server does not pile up test schemas;
* the ``integration`` mark on every test collected under this directory;
* the server log tail appended to the report of every failing test that used a devstack server
  (a failed start raises with the tail in the error itself).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from tests.integration.servers import (
    Endpoint,
    Server,
    cassandra_cluster,
    log_tail,
    parse_address,
    resolve,
)

_log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
_FIXTURE_OF: dict[Server, str] = {"cassandra": "cassandra_contact", "kafka": "kafka_bootstrap"}
_ENDPOINTS = pytest.StashKey[dict[Server, Endpoint]]()
_LOG_TAIL_LINES = 60


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A conftest's collection hook sees every item of the session, so filter by path.
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        endpoints = item.config.stash.get(_ENDPOINTS, {})
        for server, endpoint in endpoints.items():
            uses_it = _FIXTURE_OF[server] in getattr(item, "fixturenames", ())
            if uses_it and endpoint.log_path is not None:
                report.sections.append(
                    (
                        f"{server} log, last {_LOG_TAIL_LINES} lines of {endpoint.log_path}",
                        log_tail(endpoint.log_path, _LOG_TAIL_LINES),
                    )
                )
    return report


def _serve(config: pytest.Config, server: Server) -> Iterator[str]:
    endpoint = resolve(server)
    config.stash.setdefault(_ENDPOINTS, {})[server] = endpoint
    try:
        yield endpoint.address
    finally:
        endpoint.close()


@pytest.fixture(scope="session")
def cassandra_contact(pytestconfig: pytest.Config) -> Iterator[str]:
    """``"host:port"`` of a Cassandra 5.0 node's CQL port (datacenter ``datacenter1``)."""
    yield from _serve(pytestconfig, "cassandra")


@pytest.fixture(scope="session")
def kafka_bootstrap(pytestconfig: pytest.Config) -> Iterator[str]:
    """``"host:port"`` for ``bootstrap.servers`` of a single Kafka broker (auto-create off)."""
    yield from _serve(pytestconfig, "kafka")


@pytest.fixture(scope="session")
def handed_out_keyspaces(cassandra_contact: str) -> Iterator[list[str]]:
    """Keyspace names given to tests this session; those that exist are dropped at the end."""
    names: list[str] = []
    yield names
    if not names:
        return
    cluster = cassandra_cluster(*parse_address(cassandra_contact, 9042))
    try:
        session = cluster.connect()
        for name in names:
            session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=60)
    except Exception:
        _log.warning("could not drop test keyspaces %s", names, exc_info=True)
    finally:
        cluster.shutdown()


@pytest.fixture(scope="session")
def handed_out_topics(kafka_bootstrap: str) -> Iterator[list[str]]:
    """Topic names given to tests this session; those that exist are deleted at the end."""
    names: list[str] = []
    yield names
    if not names:
        return
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    try:
        existing = set(admin.list_topics(timeout=10).topics)
        doomed = [name for name in names if name in existing]
        if doomed:
            for future in admin.delete_topics(doomed, operation_timeout=30).values():
                future.result(timeout=60)
    except Exception:
        _log.warning("could not delete test topics %s", names, exc_info=True)


@pytest.fixture
def keyspace_name(handed_out_keyspaces: list[str]) -> str:
    """A keyspace name no other test uses, e.g. ``t_3f2a9c0b1d4e`` (not created)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    handed_out_keyspaces.append(name)
    return name


@pytest.fixture
def topic_name(handed_out_topics: list[str]) -> str:
    """A Kafka topic name no other test uses, e.g. ``t-3f2a9c0b1d4e`` (not created)."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    handed_out_topics.append(name)
    return name
