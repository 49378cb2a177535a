"""The native hit front (edge/, built with Go) in front of a real `embark serve` on real
Cassandra and Kafka: it answers seeded HITs from its own memory with the bytes EmbArk gave,
forwards everything else unchanged (misses, errors, health, ListModels), stops answering a
model's old revision after a catalog reload, keeps serving what it holds while EmbArk is down,
and requires EmbArk's token where EmbArk does."""

from __future__ import annotations

import json
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.stack import build_edge, scrape, seed
from embark.store.cassandra import CassandraConfig
from embark_api.v1 import embark_pb2, embark_pb2_grpc, inputs_pb2
from tests.integration.processes import Backends, ServiceProcess, free_port, fresh_backends

pytestmark = [pytest.mark.integration]

MODEL = "minilm-l6"
TOKEN = "edge-test-token"
MAX_BATCH = 8  # EmbArk's and the edge's, small enough to pass with the seeded inputs


@pytest.fixture(scope="module")
def backends(
    cassandra_contact: str,
    kafka_bootstrap: str,
    handed_out_keyspaces: list[str],
    handed_out_topics: list[str],
    built_artifacts: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Backends:
    # A catalog of the module's own: one test rewrites a revision in it.
    catalog = tmp_path_factory.mktemp("edge-catalog") / "catalog.json"
    catalog.write_text((built_artifacts / "catalog.json").read_text())
    return fresh_backends(
        "edge",
        catalog=catalog,
        cassandra=cassandra_contact,
        kafka=kafka_bootstrap,
        keyspaces=handed_out_keyspaces,
        topics=handed_out_topics,
        retina_port=free_port(),
    )


@pytest.fixture
async def seeded(backends: Backends) -> list[str]:
    texts = [f"edge seeded title {i} {uuid.uuid4().hex[:6]}" for i in range(12)]
    host, port = backends.cassandra.rsplit(":", 1)
    config = CassandraConfig(
        contact_points=(f"{host}:{port}",),
        keyspace=backends.keyspace,
        replication={"class": "SimpleStrategy", "replication_factor": 1},
    )
    await seed(config, texts, catalog_path=backends.catalog)
    return texts


class Pair:
    """An `embark serve` and an edge in front of it."""

    def __init__(
        self, backends: Backends, log_dir: Path, embark: dict[str, str] | None = None, **env: str
    ) -> None:
        self.port, self.edge_port, self.metrics_port = free_port(), free_port(), free_port()
        self.embark = ServiceProcess(
            "embark",
            ["embark", "serve"],
            {
                **backends.env("EMBARK"),
                "EMBARK_PORT": str(self.port),
                "EMBARK_WORKERS": "1",
                "EMBARK_RETINA_ADDRESS": "",
                "EMBARK_MAX_BATCH": str(MAX_BATCH),
                **(embark or {}),
            },
            self.port,
            log_dir,
        )
        self.edge = ServiceProcess(
            "edge",
            [str(build_edge())],
            {
                "EDGE_LISTEN": f"127.0.0.1:{self.edge_port}",
                "EDGE_UPSTREAM": f"127.0.0.1:{self.port}",
                "EDGE_METRICS_LISTEN": f"127.0.0.1:{self.metrics_port}",
                "EDGE_CATALOG_POLL_S": "0.2",
                "EDGE_MAX_BATCH": str(MAX_BATCH),
                **env,
            },
            self.edge_port,
            log_dir,
        )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.edge_port}")
        self.stub = embark_pb2_grpc.EmbArkStub(self.channel)
        self.direct = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.embark_stub = embark_pb2_grpc.EmbArkStub(self.direct)

    def start(self) -> Pair:
        self.embark.start(timeout_s=180)
        self.edge.start(timeout_s=180)
        self.wait_catalog()
        return self

    def wait_catalog(self) -> None:
        """Until the edge has read EmbArk's catalog (it caches nothing before)."""
        deadline = time.monotonic() + 30
        while self.metric("embark_edge_catalog_models") < 1:
            assert time.monotonic() < deadline, self.edge.tail()
            time.sleep(0.1)

    def metric(self, name: str) -> float:
        return sum(v for k, v in scrape(self.metrics_port).items() if k.startswith(name))

    def answered_by_edge(self, method: str) -> float:
        return scrape(self.metrics_port).get(
            f'embark_edge_calls_total{{answered_by="edge",method="{method}"}}', 0.0
        )

    def stop(self) -> None:
        self.channel.close()
        self.direct.close()
        self.edge.terminate()
        self.embark.terminate()


@pytest.fixture
def pair(backends: Backends, seeded: list[str], tmp_path: Path) -> Iterator[Pair]:
    p = Pair(backends, tmp_path).start()
    yield p
    p.stop()


def get(text: str, **extra: object) -> embark_pb2.GetEmbeddingRequest:
    return embark_pb2.GetEmbeddingRequest(model=MODEL, input=inputs_pb2.Input(text=text), **extra)


def test_a_hit_is_answered_from_memory_with_the_bytes_embark_gave(
    pair: Pair, seeded: list[str]
) -> None:
    request = get(seeded[0])
    direct = pair.embark_stub.GetEmbedding(request, timeout=30)
    assert direct.embedding.status == embark_pb2.HIT
    first = pair.stub.GetEmbedding(request, timeout=30)  # forwarded, then remembered
    assert pair.answered_by_edge("GetEmbedding") == 0
    again = [pair.stub.GetEmbedding(get(seeded[0], wait_ms=w), timeout=30) for w in (0, 250)]
    assert pair.answered_by_edge("GetEmbedding") == 2  # wait_ms does not change a HIT
    for reply in (first, *again):
        assert reply.SerializeToString() == direct.SerializeToString()
    # The dtype is part of the answer, so of the key: float16 is EmbArk's, then remembered.
    half = get(seeded[0], dtype=embark_pb2.DTYPE_FLOAT16)
    assert pair.stub.GetEmbedding(half, timeout=30) == pair.embark_stub.GetEmbedding(half)
    assert pair.answered_by_edge("GetEmbedding") == 2
    assert pair.stub.GetEmbedding(half, timeout=30).embedding.dtype == embark_pb2.DTYPE_FLOAT16
    assert pair.answered_by_edge("GetEmbedding") == 3


def test_a_batch_is_answered_whole_from_memory_or_forwarded_whole(
    pair: Pair, seeded: list[str]
) -> None:
    inputs = [inputs_pb2.Input(text=t) for t in seeded[:6]]
    request = embark_pb2.BatchGetEmbeddingsRequest(model=MODEL, inputs=inputs)
    direct = pair.embark_stub.BatchGetEmbeddings(request, timeout=30)
    assert [e.status for e in direct.embeddings] == [embark_pb2.HIT] * 6
    assert pair.stub.BatchGetEmbeddings(request, timeout=30) == direct
    assert pair.answered_by_edge("BatchGetEmbeddings") == 0
    assert pair.stub.BatchGetEmbeddings(request, timeout=30) == direct
    assert pair.answered_by_edge("BatchGetEmbeddings") == 1
    # A batch's items and single calls share the memory: each seeded input is now a hit.
    assert pair.stub.GetEmbedding(get(seeded[3]), timeout=30).embedding == direct.embeddings[3]
    assert pair.answered_by_edge("GetEmbedding") == 1
    # One new input in the batch: forwarded whole; the miss is PENDING, the rest as before.
    new = f"edge new title {uuid.uuid4().hex}"
    mixed = embark_pb2.BatchGetEmbeddingsRequest(
        model=MODEL, inputs=[*inputs, inputs_pb2.Input(text=new)]
    )
    reply = pair.stub.BatchGetEmbeddings(mixed, timeout=30)
    assert list(reply.embeddings[:6]) == list(direct.embeddings)
    assert reply.embeddings[6].status == embark_pb2.PENDING
    assert pair.answered_by_edge("BatchGetEmbeddings") == 1


def test_a_batch_over_embarks_limit_gets_embarks_error_though_every_input_is_held(
    pair: Pair, seeded: list[str]
) -> None:
    over = [inputs_pb2.Input(text=t) for t in seeded[: MAX_BATCH + 1]]
    for i in over:  # each one remembered by the edge
        pair.stub.GetEmbedding(embark_pb2.GetEmbeddingRequest(model=MODEL, input=i), timeout=30)
    request = embark_pb2.BatchGetEmbeddingsRequest(model=MODEL, inputs=over)
    with pytest.raises(grpc.RpcError) as via_edge:
        pair.stub.BatchGetEmbeddings(request, timeout=30)
    with pytest.raises(grpc.RpcError) as direct:
        pair.embark_stub.BatchGetEmbeddings(request, timeout=30)
    assert via_edge.value.code() == direct.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert via_edge.value.details() == direct.value.details()
    # At the limit, the same inputs are answered from memory.
    at_limit = embark_pb2.BatchGetEmbeddingsRequest(model=MODEL, inputs=over[:MAX_BATCH])
    assert pair.stub.BatchGetEmbeddings(at_limit, timeout=30).embeddings[0].status == (
        embark_pb2.HIT
    )
    assert pair.answered_by_edge("BatchGetEmbeddings") == 1


def test_a_miss_is_never_remembered(pair: Pair) -> None:
    request = get(f"edge miss {uuid.uuid4().hex}")
    for _ in range(3):
        assert pair.stub.GetEmbedding(request, timeout=30).embedding.status == embark_pb2.PENDING
    assert pair.answered_by_edge("GetEmbedding") == 0


def test_errors_health_and_other_methods_pass_through_unchanged(pair: Pair) -> None:
    cases = [
        embark_pb2.GetEmbeddingRequest(model="no-such-model", input=inputs_pb2.Input(text="x")),
        embark_pb2.GetEmbeddingRequest(model=MODEL),  # no input
        embark_pb2.GetEmbeddingRequest(model=MODEL, input=inputs_pb2.Input(text="")),
    ]
    for request in cases:
        with pytest.raises(grpc.RpcError) as via_edge:
            pair.stub.GetEmbedding(request, timeout=30)
        with pytest.raises(grpc.RpcError) as direct:
            pair.embark_stub.GetEmbedding(request, timeout=30)
        assert via_edge.value.code() == direct.value.code() != grpc.StatusCode.OK
        assert via_edge.value.details() == direct.value.details()
    # Bytes that are no GetEmbeddingRequest reach EmbArk, which says so.
    garbage = pair.channel.unary_unary("/embark.v1.EmbArk/GetEmbedding")
    with pytest.raises(grpc.RpcError) as bad:
        garbage(b"\xff\xff\xff", timeout=30)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Unary methods the edge does not read, and health, are EmbArk's answers.
    assert pair.stub.ListModels(embark_pb2.ListModelsRequest(), timeout=30) == (
        pair.embark_stub.ListModels(embark_pb2.ListModelsRequest(), timeout=30)
    )
    health = health_pb2_grpc.HealthStub(pair.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=30
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    # A server-streaming method (health's Watch) is relayed frame by frame.
    watch = health_pb2_grpc.HealthStub(pair.channel).Watch(
        health_pb2.HealthCheckRequest(), timeout=30
    )
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    # A method nobody serves is EmbArk's UNIMPLEMENTED.
    nobody = pair.channel.unary_unary("/embark.v1.EmbArk/NoSuchMethod")
    with pytest.raises(grpc.RpcError) as unknown:
        nobody(b"", timeout=30)
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_callers_deadline_reaches_embark(
    backends: Backends, seeded: list[str], tmp_path: Path
) -> None:
    # A Retina that accepts connections and never answers: a read-through waits until EmbArk
    # gives up, which it does within the caller's deadline only if that deadline reached it
    # (it keeps a fifth of what remains for the answer). Without it EmbArk would wait
    # wait_ms or its own Retina timeout, and the call would end DEADLINE_EXCEEDED.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        p = Pair(backends, tmp_path, {"EMBARK_RETINA_ADDRESS": address}).start()
        try:
            request = get(f"edge deadline {uuid.uuid4().hex}", wait_ms=20_000)
            started = time.monotonic()
            reply = p.stub.GetEmbedding(request, timeout=2.0)
            assert reply.embedding.status == embark_pb2.PENDING
            assert time.monotonic() - started < 2.0
        finally:
            p.stop()


def test_a_catalog_reload_retires_the_old_revisions_answers(
    pair: Pair, seeded: list[str], backends: Backends
) -> None:
    request = get(seeded[5])
    pair.stub.GetEmbedding(request, timeout=30)
    assert pair.stub.GetEmbedding(request, timeout=30).embedding.status == embark_pb2.HIT
    assert pair.answered_by_edge("GetEmbedding") == 1
    original = backends.catalog.read_text()
    doc = json.loads(original)
    [spec] = [m for m in doc["models"] if m["name"] == MODEL]
    spec["revision"] = "r-edgetest" + uuid.uuid4().hex[:6]
    try:
        backends.catalog.write_text(json.dumps(doc))
        assert pair.embark.proc is not None
        pair.embark.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while (
            pair.embark_stub.GetEmbedding(request, timeout=30).embedding.revision
            != (spec["revision"])
        ):
            assert time.monotonic() < deadline, pair.embark.tail()
            time.sleep(0.1)
        time.sleep(1.0)  # five of the edge's catalog polls
        # The new revision has no vector for this input yet: EmbArk's PENDING, not the old HIT.
        reply = pair.stub.GetEmbedding(request, timeout=30)
        assert reply.embedding.status == embark_pb2.PENDING
        assert reply.embedding.revision == spec["revision"]
        assert pair.answered_by_edge("GetEmbedding") == 1
    finally:
        backends.catalog.write_text(original)


def test_the_edge_answers_what_it_holds_while_embark_is_down(pair: Pair, seeded: list[str]) -> None:
    held, other = get(seeded[7]), get(seeded[8])
    expected = pair.stub.GetEmbedding(held, timeout=30)
    pair.embark.kill()
    assert pair.stub.GetEmbedding(held, timeout=30) == expected
    with pytest.raises(grpc.RpcError) as down:
        pair.stub.GetEmbedding(other, timeout=10)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert pair.edge.proc is not None
    assert pair.edge.proc.poll() is None


def test_the_edge_requires_embarks_token(
    backends: Backends, seeded: list[str], tmp_path: Path
) -> None:
    p = Pair(backends, tmp_path, {"EMBARK_TOKEN": TOKEN}, EDGE_TOKEN=TOKEN).start()
    try:
        auth = (("authorization", f"Bearer {TOKEN}"),)
        request = get(seeded[9])
        p.stub.GetEmbedding(request, timeout=30, metadata=auth)
        assert p.stub.GetEmbedding(request, timeout=30, metadata=auth).embedding.status == (
            embark_pb2.HIT
        )
        assert p.answered_by_edge("GetEmbedding") == 1
        for wrong in ((), (("authorization", "Bearer nope"),)):
            with pytest.raises(grpc.RpcError) as refused:
                p.stub.GetEmbedding(request, timeout=30, metadata=wrong)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert p.answered_by_edge("GetEmbedding") == 1
    finally:
        p.stop()


def test_without_embarks_token_the_edge_remembers_nothing(
    backends: Backends, seeded: list[str], tmp_path: Path
) -> None:
    # EmbArk requires a token the edge was not given: the edge cannot check callers, so it
    # must not answer from memory; every call reaches EmbArk, which checks them.
    p = Pair(backends, tmp_path, {"EMBARK_TOKEN": TOKEN})
    p.embark.start(timeout_s=180)
    p.edge.start(timeout_s=60)
    try:
        auth = (("authorization", f"Bearer {TOKEN}"),)
        request = get(seeded[10])
        for _ in range(3):
            assert p.stub.GetEmbedding(request, timeout=30, metadata=auth).embedding.status == (
                embark_pb2.HIT
            )
        with pytest.raises(grpc.RpcError) as refused:
            p.stub.GetEmbedding(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert p.answered_by_edge("GetEmbedding") == 0
        assert p.metric("embark_edge_catalog_models") == 0
        assert "set EDGE_TOKEN" in p.edge.tail()
    finally:
        p.stop()
