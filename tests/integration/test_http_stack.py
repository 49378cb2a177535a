"""The OpenAI-compatible front of `embark serve` on real Cassandra and Kafka, with `kfc run` and
`retina serve` as their own processes (EMBARK_HTTP_PORT set, as a deployment sets it), asked
with the real ``openai`` package: the contract in tests/contracts/openai_contract.py. Past the
deadline the misses go through Kafka and KFC into Cassandra, and the SDK's retry reads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contracts.openai_contract import Front, OpenAIContract
from tests.e2e.dev import serve_images
from tests.integration.processes import ServiceProcess, free_port


@pytest.fixture(scope="module")
def front(
    cassandra_contact: str,
    kafka_bootstrap: str,
    handed_out_keyspaces: list[str],
    handed_out_topics: list[str],
    built_artifacts: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Front]:
    suffix = uuid.uuid4().hex[:10]
    keyspace, jobs, dlq = f"http_{suffix}", f"jobs-{suffix}", f"dlq-{suffix}"
    handed_out_keyspaces.append(keyspace)
    handed_out_topics.extend([jobs, dlq])
    logs = tmp_path_factory.mktemp("logs")
    retina_port, embark_port, http_port, kfc_health = (free_port() for _ in range(4))

    def backends(prefix: str) -> dict[str, str]:
        return {
            f"{prefix}_CATALOG": str(built_artifacts / "catalog.json"),
            f"{prefix}_STORE__BACKEND": "cassandra",
            f"{prefix}_STORE__CASSANDRA__CONTACT_POINTS": json.dumps([cassandra_contact]),
            f"{prefix}_STORE__CASSANDRA__KEYSPACE": keyspace,
            f"{prefix}_STORE__CASSANDRA__REPLICATION": json.dumps(
                {"class": "SimpleStrategy", "replication_factor": 1}
            ),
            f"{prefix}_QUEUE__BACKEND": "kafka",
            f"{prefix}_QUEUE__KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            f"{prefix}_QUEUE__KAFKA__JOBS_TOPIC": jobs,
            f"{prefix}_QUEUE__KAFKA__DEAD_LETTER_TOPIC": dlq,
            f"{prefix}_QUEUE__KAFKA__GROUP_ID": f"kfc-{suffix}",
            f"{prefix}_RETINA_ADDRESS": f"127.0.0.1:{retina_port}",
        }

    schema = subprocess.run(
        [sys.executable, "-m", "embark", "schema", "apply"],
        env={**os.environ, **backends("EMBARK")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert schema.returncode == 0, schema.stderr
    processes = [
        ServiceProcess(
            "retina",
            ["retina", "serve"],
            {
                "RETINA_ARTIFACTS_DIR": str(built_artifacts),
                "RETINA_PORT": str(retina_port),
                "RETINA_FETCH__ALLOW_PRIVATE": "true",
            },
            retina_port,
            logs,
        ),
        ServiceProcess(
            "embark",
            ["embark", "serve"],
            {
                **backends("EMBARK"),
                "EMBARK_PORT": str(embark_port),
                "EMBARK_HTTP_PORT": str(http_port),
            },
            embark_port,
            logs,
        ),
        ServiceProcess(
            "kfc",
            ["kfc", "run"],
            {**backends("KFC"), "KFC_HEALTH_PORT": str(kfc_health)},
            kfc_health,
            logs,
        ),
    ]
    try:
        for process in processes:
            process.start()
        embark_log = processes[1].log_path.read_text()
        assert f"embark http on http://127.0.0.1:{http_port}" in embark_log, embark_log
        with serve_images(tmp_path_factory.mktemp("www")) as images:
            yield Front(
                http=f"http://127.0.0.1:{http_port}",
                grpc=f"127.0.0.1:{embark_port}",
                images=images,
            )
    except BaseException:
        for process in processes:
            print(f"----- {process.name} log -----\n{process.tail()}")
        raise
    finally:
        for process in reversed(processes):
            process.terminate()


class TestEmbarkServeOnCassandraAndKafka(OpenAIContract):
    pass
