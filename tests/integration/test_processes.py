"""End to end with the three processes on real Cassandra and Kafka: a miss turns into a hit, a
redelivered job is harmless, KFC crashing mid-batch loses nothing, and a poison URL becomes
FAILED plus a dead letter while other jobs keep flowing."""

from __future__ import annotations

import asyncio
import functools
import http.server
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from confluent_kafka import Consumer

from embark.client import EmbarkClient, make_input
from embark.errors import EmbarkError
from embark.queue.base import Enqueued
from embark.queue.kafka import KafkaConfig, KafkaJobQueue
from embark_api.v1 import jobs_pb2
from tests.integration.processes import ServiceProcess, free_port, fresh_backends

HIT_TIMEOUT_S = 90.0


@dataclass
class Stack:
    embark: ServiceProcess
    kfc: ServiceProcess
    retina: ServiceProcess
    client: EmbarkClient
    kafka: KafkaConfig
    image_base: str
    make_kfc: Callable[[], ServiceProcess]
    make_embark: Callable[[dict[str, str]], ServiceProcess]
    client_target: str


@pytest.fixture(scope="module")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("www")
    Image.fromarray(data.coffee()).save(root / "coffee.png")
    (root / "not-an-image.png").write_text("<html>surprise</html>")
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def stack(
    cassandra_contact: str,
    kafka_bootstrap: str,
    handed_out_keyspaces: list[str],
    handed_out_topics: list[str],
    built_artifacts: Path,
    image_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("logs")
    retina_port, embark_port, kfc_health = free_port(), free_port(), free_port()

    stack_env = fresh_backends(
        "e2e",
        catalog=built_artifacts / "catalog.json",
        cassandra=cassandra_contact,
        kafka=kafka_bootstrap,
        keyspaces=handed_out_keyspaces,
        topics=handed_out_topics,
        retina_port=retina_port,
    )
    backends = stack_env.env
    retina = ServiceProcess(
        "retina",
        ["retina", "serve"],
        {
            "RETINA_ARTIFACTS_DIR": str(built_artifacts),
            "RETINA_PORT": str(retina_port),
            "RETINA_FETCH__ALLOW_PRIVATE": "true",
        },
        retina_port,
        logs,
    ).start()

    def make_embark(extra: dict[str, str]) -> ServiceProcess:
        env = {**backends("EMBARK"), "EMBARK_PORT": str(embark_port), **extra}
        return ServiceProcess("embark", ["embark", "serve"], env, embark_port, logs)

    embark = make_embark({}).start()

    def make_kfc() -> ServiceProcess:
        env = {**backends("KFC"), "KFC_HEALTH_PORT": str(kfc_health)}
        return ServiceProcess("kfc", ["kfc", "run"], env, kfc_health, logs)

    kfc = make_kfc().start()
    client = EmbarkClient(f"127.0.0.1:{embark_port}", timeout_s=10)
    kafka = KafkaConfig(
        bootstrap_servers=kafka_bootstrap,
        jobs_topic=stack_env.jobs_topic,
        dead_letter_topic=stack_env.dead_letter_topic,
    )
    the_stack = Stack(
        embark,
        kfc,
        retina,
        client,
        kafka,
        image_server,
        make_kfc,
        make_embark,
        f"127.0.0.1:{embark_port}",
    )
    try:
        yield the_stack
    finally:
        client.close()
        for proc in (the_stack.kfc, the_stack.embark, retina):
            proc.terminate()


@pytest.fixture(autouse=True)
def _print_logs_on_failure(request: pytest.FixtureRequest, stack: Stack) -> Iterator[None]:
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        for proc in (stack.embark, stack.kfc, stack.retina):
            print(f"----- {proc.name} log -----\n{proc.tail()}")


def wait_for(predicate: Callable[[], bool], timeout_s: float = HIT_TIMEOUT_S) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout_s}s")


def test_miss_becomes_hit_for_text_and_image(stack: Stack) -> None:
    text = f"e2e waterproof hiking boots {uuid.uuid4().hex[:6]}"
    first = stack.client.get("minilm-l6", text=text)
    assert first.status == "PENDING"
    waited = wait_for(lambda: stack.client.get("minilm-l6", text=text).hit)
    hit = stack.client.get("minilm-l6", text=text)
    assert hit.vector != first.vector
    assert abs(float((hit.array() ** 2).sum()) - 1.0) < 1e-3
    print(f"text miss -> HIT in {waited * 1000:.0f} ms")

    url = f"{stack.image_base}/coffee.png?v={uuid.uuid4().hex[:6]}"
    assert stack.client.get("efficientnet-lite0", image_url=url).status == "PENDING"
    wait_for(lambda: stack.client.get("efficientnet-lite0", image_url=url).hit)


def test_read_through_answers_hit_within_deadline(stack: Stack) -> None:
    text = f"e2e read-through ceramic mug {uuid.uuid4().hex[:6]}"
    result = stack.client.get("minilm-l6", text=text, wait_ms=10_000)
    assert result.status == "HIT"
    # Written back: the next plain call is a hit too.
    assert stack.client.get("minilm-l6", text=text).hit


def test_redelivered_job_is_harmless(stack: Stack) -> None:
    text = f"e2e redelivered wool scarf {uuid.uuid4().hex[:6]}"
    stack.client.get("minilm-l6", text=text)
    wait_for(lambda: stack.client.get("minilm-l6", text=text).hit)
    stored = stack.client.get("minilm-l6", text=text)
    # Produce the very same job again, as a redelivery after a crash would.
    job = jobs_pb2.EmbedJob(
        key=stored.key,
        model=stored.model,
        revision=stored.revision,
        input=make_input(text=text),
        enqueued_at_ms=int(time.time() * 1000),
    )
    producer = KafkaJobQueue(stack.kafka)
    try:
        assert producer.enqueue(job) is Enqueued.QUEUED
        assert asyncio.run(producer.flush(10)) == 0
    finally:
        asyncio.run(producer.close())
    # A later job flows through, so the redelivered one was consumed past; the vector is intact.
    marker = f"e2e marker after redelivery {uuid.uuid4().hex[:6]}"
    stack.client.get("minilm-l6", text=marker)
    wait_for(lambda: stack.client.get("minilm-l6", text=marker).hit)
    assert stack.client.get("minilm-l6", text=text).vector == stored.vector


def test_kfc_killed_mid_batch_loses_nothing(stack: Stack) -> None:
    texts = [f"e2e crash item {i} {uuid.uuid4().hex[:6]}" for i in range(300)]
    inputs = [make_input(text=t) for t in texts]
    answers = stack.client.get_many("minilm-l6", inputs)
    assert {a.status for a in answers} == {"PENDING"}

    def stored() -> int:
        return sum(a.hit for a in stack.client.get_many("minilm-l6", inputs))

    wait_for(lambda: stored() > 0)
    stack.kfc.kill()  # mid-run: some stored, the batch in hand neither written nor committed
    at_kill = stored()
    assert at_kill < len(texts), "KFC finished before it could be killed; raise the job count"
    stack.kfc = stack.make_kfc().start()
    waited = wait_for(lambda: stored() == len(texts), timeout_s=180)
    print(f"killed at {at_kill}/{len(texts)} stored; all stored {waited:.1f}s after restart")


def test_poison_url_fails_with_reason_and_dead_letter(stack: Stack) -> None:
    poison = f"{stack.image_base}/not-an-image.png?v={uuid.uuid4().hex[:6]}"
    missing = f"{stack.image_base}/missing-{uuid.uuid4().hex[:6]}.png"
    good = f"e2e after poison leather wallet {uuid.uuid4().hex[:6]}"
    for url in (poison, missing):
        assert stack.client.get("efficientnet-lite0", image_url=url).status == "PENDING"
    stack.client.get("minilm-l6", text=good)
    wait_for(lambda: stack.client.get("efficientnet-lite0", image_url=poison).status == "FAILED")
    wait_for(lambda: stack.client.get("efficientnet-lite0", image_url=missing).status == "FAILED")
    assert "not_an_image" in stack.client.get("efficientnet-lite0", image_url=poison).reason
    assert "http_404" in stack.client.get("efficientnet-lite0", image_url=missing).reason
    wait_for(lambda: stack.client.get("minilm-l6", text=good).hit)

    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka.bootstrap_servers,
            "group.id": f"dlq-reader-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([stack.kafka.dead_letter_topic])
    reasons: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(reasons) < 2:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            letter = jobs_pb2.DeadLetter.FromString(msg.value())
            reasons[letter.job.input.image_url] = letter.reason
    finally:
        consumer.close()
    assert reasons.get(poison) == "not_an_image"
    assert reasons.get(missing) == "http_404"


# A small labelled set: short shop-style titles in four categories.
_TITLES = {
    "footwear": [
        "leather running shoes",
        "suede ankle boots",
        "canvas sneakers",
        "hiking boots",
        "rubber rain boots",
        "high heel sandals",
        "wool slippers",
        "football cleats",
    ],
    "beverages": [
        "sparkling mineral water",
        "red wine bottle",
        "orange juice carton",
        "craft lager beer",
        "green tea drink",
        "apple cider",
        "cola soft drink",
        "single malt whisky",
    ],
    "electronics": [
        "wireless headphones",
        "usb phone charger",
        "laptop battery pack",
        "bluetooth speaker",
        "hdmi cable",
        "electric kettle",
        "led desk lamp",
        "smartphone screen",
    ],
    "fish": [
        "frozen salmon fillet",
        "smoked mackerel",
        "canned tuna",
        "fresh cod loin",
        "dried anchovies",
        "shrimp cocktail",
        "sardines in oil",
        "live lobster",
    ],
}


def test_categorize_on_cassandra_with_a_head_trained_through_embark(
    stack: Stack, tmp_path: Path
) -> None:
    data = tmp_path / "titles.csv"
    rows = [f"{text},{label}" for label, texts in _TITLES.items() for text in texts]
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    heads = tmp_path / "heads"
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "embark",
            "heads",
            "train",
            "--data",
            str(data),
            "--model",
            "minilm-l6",
            "--name",
            "shop",
            "--heads-dir",
            str(heads),
            "--target",
            stack.client_target,
            "--no-progress",
            "--wait-ms",
            "20000",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    # Training went through EmbArk's read-through: the archive now holds the titles.
    assert stack.client.get("minilm-l6", text="canned tuna").hit

    # Serve the head: EmbArk loads heads at start.
    stack.embark.terminate()
    stack.embark = stack.make_embark({"EMBARK_HEADS_DIR": str(heads)}).start()
    client = stack.client
    hit = client.categorize("shop", text="canned tuna", top_k=3)
    assert hit.status == "HIT"
    assert hit.categories[0][0] == "fish"
    probabilities = [p for _, p in hit.categories]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1.0 + 1e-6

    unseen = f"waterproof trail running shoes {uuid.uuid4().hex[:6]}"
    assert client.categorize("shop", text=unseen).status == "PENDING"
    read_through = client.categorize("shop", text=f"sparkling {unseen}", wait_ms=10_000)
    assert read_through.status == "HIT"
    assert read_through.categories

    with pytest.raises(EmbarkError) as unknown:
        client.categorize("no-such-head", text="canned tuna")
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
