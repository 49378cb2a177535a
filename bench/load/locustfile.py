"""Locust users for EmbArk's gRPC API: mostly repeated inputs (hits), some new ones (misses).

Run headless through ``bench/load/run.py`` (which starts the real stack, seeds the hot set and
parses the results), or by hand against a running EmbArk:

    .venv/bin/locust -f bench/load/locustfile.py --headless -u 1000 -r 40 -t 75s \
        --host 127.0.0.1:50051

Environment: EMBARK_LOAD_HOT_KEYS (size of the seeded hot set, default 20000; the runner seeds
exactly these titles), EMBARK_LOAD_MISS_PERCENT (default 2: new inputs per 100 calls),
EMBARK_LOAD_WAIT_S (default "1,3": seconds between one user's calls).
A call fails when gRPC fails or the answer says the service could not do its job
(UNAVAILABLE: the archive did not answer; DROPPED: the queue was full); HIT, PENDING and
FAILED are all correct answers.
"""

from __future__ import annotations

import os
import random
import time
import uuid

import grpc
import grpc.experimental.gevent as grpc_gevent  # type: ignore[import-not-found]
from locust import User, between, task

from bench.inputs import titles
from embark_api.v1 import embark_pb2, embark_pb2_grpc, inputs_pb2

# gRPC's core must cooperate with gevent, which Locust runs its users on.
grpc_gevent.init_gevent()

MODEL = "minilm-l6"
HOT = titles(int(os.environ.get("EMBARK_LOAD_HOT_KEYS", "20000")), prefix="load")
MISS_PERCENT = int(os.environ.get("EMBARK_LOAD_MISS_PERCENT", "2"))
# Seconds between a user's calls, "min,max". 1-3 s: 1,000 users offer ~500 calls/s, what this
# 2-core box serves with Locust itself on one of the cores; "0.5,1.5" offers ~1,000 (overload).
_WAIT = [float(v) for v in os.environ.get("EMBARK_LOAD_WAIT_S", "1,3").split(",")]
_BAD = {embark_pb2.UNAVAILABLE: "UNAVAILABLE", embark_pb2.DROPPED: "DROPPED"}
# One channel per worker process: 1,000 users share a few HTTP/2 connections, as a service's
# replicas would, instead of opening 1,000.
_stubs: dict[str, embark_pb2_grpc.EmbArkStub] = {}


def _stub(host: str) -> embark_pb2_grpc.EmbArkStub:
    if host not in _stubs:
        _stubs[host] = embark_pb2_grpc.EmbArkStub(grpc.insecure_channel(host))
    return _stubs[host]


class StatusError(Exception):
    """The call succeeded but its answer reports a service failure."""


class EmbarkUser(User):
    """One caller: a GetEmbedding every EMBARK_LOAD_WAIT_S seconds."""

    wait_time = between(_WAIT[0], _WAIT[-1])

    def on_start(self) -> None:
        assert self.host, "pass --host 127.0.0.1:PORT"
        self.stub = _stub(self.host)

    def _call(self, name: str, text: str) -> None:
        request = embark_pb2.GetEmbeddingRequest(model=MODEL, input=inputs_pb2.Input(text=text))
        started = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            reply = self.stub.GetEmbedding(request, timeout=10)
            length = reply.ByteSize()
            if reply.embedding.status in _BAD:
                exception = StatusError(_BAD[reply.embedding.status])
        except grpc.RpcError as exc:
            exception = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )

    @task(100 - MISS_PERCENT)
    def repeated_input(self) -> None:
        self._call("GetEmbedding repeated input", random.choice(HOT))

    @task(MISS_PERCENT)
    def new_input(self) -> None:
        self._call("GetEmbedding new input", f"load new {uuid.uuid4().hex} blue kettle")
