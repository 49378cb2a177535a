"""The OpenAI-compatible front of `embark serve` on real Cassandra and Kafka, with `kfc run` and
`retina serve` as their own processes (EMBARK_HTTP_PORT set, as a deployment sets it), asked
with the real ``openai`` package: the contract in tests/contracts/openai_contract.py. Past the
deadline the misses go through Kafka and KFC into Cassandra, and the SDK's retry reads them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contracts.openai_contract import Front, OpenAIContract
from tests.e2e.dev import serve_images
from tests.integration.processes import ServiceProcess, free_port, fresh_backends


@pytest.fixture(scope="module")
def front(
    cassandra_contact: str,
    kafka_bootstrap: str,
    handed_out_keyspaces: list[str],
    handed_out_topics: list[str],
    built_artifacts: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Front]:
    logs = tmp_path_factory.mktemp("logs")
    retina_port, embark_port, http_port, kfc_health = (free_port() for _ in range(4))

    stack_env = fresh_backends(
        "http",
        catalog=built_artifacts / "catalog.json",
        cassandra=cassandra_contact,
        kafka=kafka_bootstrap,
        keyspaces=handed_out_keyspaces,
        topics=handed_out_topics,
        retina_port=retina_port,
    )
    backends = stack_env.env
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
