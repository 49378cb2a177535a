"""A user's own models on the real stack: `retina serve`, `embark serve` and `kfc run` as
processes on real Cassandra and Kafka, serving the two models that were defined only in a
models.toml (tests/conftest.py ``own_models``). A miss turns into a HIT through Kafka, KFC,
Retina and Cassandra; ListModels says what is served."""

from __future__ import annotations

import functools
import http.server
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from embark.client import EmbarkClient
from embark_api.v1 import embark_pb2, embark_pb2_grpc
from tests.integration.processes import ServiceProcess, free_port, fresh_backends

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def image_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("www")
    Image.fromarray(data.coffee()).save(root / "coffee.png")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def stack(
    cassandra_contact: str,
    kafka_bootstrap: str,
    handed_out_keyspaces: list[str],
    handed_out_topics: list[str],
    own_models: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EmbarkClient, str, list[ServiceProcess]]]:
    artifacts, _ = own_models
    logs = tmp_path_factory.mktemp("logs")
    retina_port, embark_port, kfc_health = free_port(), free_port(), free_port()

    stack_env = fresh_backends(
        "own",
        catalog=artifacts / "catalog.json",
        cassandra=cassandra_contact,
        kafka=kafka_bootstrap,
        keyspaces=handed_out_keyspaces,
        topics=handed_out_topics,
        retina_port=retina_port,
    )
    backends = stack_env.env
    procs: list[ServiceProcess] = []
    try:
        procs.append(
            ServiceProcess(
                "retina",
                ["retina", "serve"],
                {
                    "RETINA_ARTIFACTS_DIR": str(artifacts),
                    "RETINA_PORT": str(retina_port),
                    "RETINA_FETCH__ALLOW_PRIVATE": "true",
                },
                retina_port,
                logs,
            ).start(timeout_s=180)
        )
        embark_env = {**backends("EMBARK"), "EMBARK_PORT": str(embark_port)}
        procs.append(ServiceProcess("embark", ["embark", "serve"], embark_env, embark_port, logs))
        procs[-1].start()
        kfc_env = {**backends("KFC"), "KFC_HEALTH_PORT": str(kfc_health)}
        procs.append(ServiceProcess("kfc", ["kfc", "run"], kfc_env, kfc_health, logs).start())
        with EmbarkClient(f"127.0.0.1:{embark_port}", timeout_s=10) as client:
            yield client, f"127.0.0.1:{embark_port}", procs
    except BaseException:
        for proc in procs:
            print(f"----- {proc.name} log -----\n{proc.tail()}")
        raise
    finally:
        for proc in reversed(procs):
            proc.terminate()


def wait_hit(client: EmbarkClient, model: str, **what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < 120:
        if client.get(model, **what).hit:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{model}: no HIT within 120 s")


def test_own_models_miss_then_hit_on_cassandra_and_kafka(
    stack: tuple[EmbarkClient, str, list[ServiceProcess]], image_base: str
) -> None:
    client, _, procs = stack
    try:
        text = f"stack waterproof hiking boots {uuid.uuid4().hex[:6]}"
        first = client.get("my-minilm", text=text)
        assert first.status == "PENDING"
        waited = wait_hit(client, "my-minilm", text=text)
        hit = client.get("my-minilm", text=text)
        assert hit.dim == 384
        assert hit.vector != first.vector
        np.testing.assert_allclose(np.linalg.norm(hit.array()), 1.0, atol=1e-3)
        print(f"my-minilm miss -> HIT via Kafka/KFC/Cassandra in {waited * 1000:.0f} ms")

        url = f"{image_base}/coffee.png?v={uuid.uuid4().hex[:6]}"
        assert client.get("nsfw-resnet", image_url=url).status == "PENDING"
        waited = wait_hit(client, "nsfw-resnet", image_url=url)
        assert client.get("nsfw-resnet", image_url=url).dim == 1024
        print(f"nsfw-resnet miss -> HIT via Kafka/KFC/Cassandra in {waited * 1000:.0f} ms")
    except BaseException:
        for proc in procs:
            print(f"----- {proc.name} log -----\n{proc.tail()}")
        raise


def test_list_models_on_the_stack(stack: tuple[EmbarkClient, str, list[ServiceProcess]]) -> None:
    _, target, _ = stack
    with grpc.insecure_channel(target) as channel:
        reply = embark_pb2_grpc.EmbArkStub(channel).ListModels(
            embark_pb2.ListModelsRequest(), timeout=10
        )
    models = {m.name: m for m in reply.models}
    assert (models["my-minilm"].kind, models["my-minilm"].dim) == ("text", 384)
    assert models["my-minilm"].fold_case  # its tokenizer lowercases
    assert (models["nsfw-resnet"].kind, models["nsfw-resnet"].dim) == ("image", 1024)
    assert not models["nsfw-resnet"].fold_case
    assert models["nsfw-resnet"].parity > 0.98
    assert models["nsfw-resnet"].read_through  # EMBARK_RETINA_ADDRESS is set
    assert not models["minilm-l6"].built  # defined, not built into this directory
