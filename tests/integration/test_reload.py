"""Adding a model without downtime: `retina serve` and `embark serve` (its queue on real Kafka)
run on a catalog with one model; a second model is defined and built into the same catalog;
SIGHUP makes both processes serve it, while the first keeps answering from the same processes
(never restarted)."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from embark.client import EmbarkClient
from embark.errors import EmbarkError
from retina.artifacts.build import build_all, registry_from
from retina.artifacts.definition import load_definitions
from tests.integration.processes import ServiceProcess, free_port
from tests.unit.retina.tiny_models import write_tiny_bert

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODELS = """
[models.tiny-mean]
kind = "text"
source = "bert"
precision = "fp32"

[models.tiny-cls]
kind = "text"
source = "bert"
pooling = "cls"
precision = "fp32"
"""


def test_sighup_serves_a_new_model_without_a_restart(
    tmp_path: Path, kafka_bootstrap: str, handed_out_topics: list[str]
) -> None:
    suffix = uuid.uuid4().hex[:10]
    jobs, dlq = f"reload-jobs-{suffix}", f"reload-dlq-{suffix}"
    handed_out_topics.extend([jobs, dlq])
    write_tiny_bert(tmp_path / "bert")
    (tmp_path / "models.toml").write_text(MODELS)
    registry = registry_from(load_definitions([tmp_path / "models.toml"]))
    artifacts = tmp_path / "artifacts"
    build_all(artifacts, ["tiny-mean"], registry=registry)

    retina_port, embark_port = free_port(), free_port()
    retina = ServiceProcess(
        "retina",
        ["retina", "serve"],
        {"RETINA_ARTIFACTS_DIR": str(artifacts), "RETINA_PORT": str(retina_port)},
        retina_port,
        tmp_path,
    ).start()
    embark = ServiceProcess(
        "embark",
        ["embark", "serve"],
        {
            "EMBARK_CATALOG": str(artifacts / "catalog.json"),
            "EMBARK_PORT": str(embark_port),
            "EMBARK_STORE__SQLITE__PATH": str(tmp_path / "archive.sqlite3"),
            "EMBARK_RETINA_ADDRESS": f"127.0.0.1:{retina_port}",
            "EMBARK_QUEUE__BACKEND": "kafka",
            "EMBARK_QUEUE__KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            "EMBARK_QUEUE__KAFKA__JOBS_TOPIC": jobs,
            "EMBARK_QUEUE__KAFKA__DEAD_LETTER_TOPIC": dlq,
        },
        embark_port,
        tmp_path,
    ).start()
    try:
        with EmbarkClient(f"127.0.0.1:{embark_port}", timeout_s=10) as client:
            before = client.get("tiny-mean", text="wool scarf", wait_ms=8000)
            assert before.status == "HIT"
            with pytest.raises(EmbarkError, match="defined but not built"):
                client.get("tiny-cls", text="wool scarf")

            build_all(artifacts, ["tiny-cls"], registry=registry)
            assert retina.proc is not None
            assert embark.proc is not None
            pids = (retina.proc.pid, embark.proc.pid)
            retina.proc.send_signal(signal.SIGHUP)
            embark.proc.send_signal(signal.SIGHUP)

            deadline = time.monotonic() + 60
            while True:
                try:
                    new = client.get("tiny-cls", text="wool scarf", wait_ms=8000)
                    if new.status == "HIT":
                        break
                except EmbarkError:
                    pass  # EmbArk or Retina not reloaded yet
                assert time.monotonic() < deadline, f"{retina.tail()}\n{embark.tail()}"
                time.sleep(0.2)
            # The first model kept its revision and its stored vector; the new one is another
            # model (CLS pooling), with its own revision.
            again = client.get("tiny-mean", text="wool scarf")
            assert again.status == "HIT"
            assert again.revision == before.revision
            assert again.vector == before.vector
            assert new.revision != before.revision
            assert new.vector != before.vector
            assert (retina.proc.pid, embark.proc.pid) == pids
            assert retina.proc.poll() is None
            assert embark.proc.poll() is None
            assert "reloaded" in retina.tail()
            assert "catalog reloaded" in embark.tail()
    finally:
        embark.terminate()
        retina.terminate()
