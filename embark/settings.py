"""EmbArk's settings: one frozen pydantic-settings class, env prefix ``EMBARK_``, nested fields
with ``__`` (``EMBARK_STORE__BACKEND=cassandra``). Built once in ``main()`` and passed down;
nothing reads the environment at import time.

The store and queue sections are shared with KFC (``kfc.settings``), which reads the same
archive and the other end of the same queue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from embark.queue.kafka import KafkaConfig
from embark.store.cassandra import CassandraConfig
from embark.store.sqlite import SqliteConfig
from embark_core.tls import ClientTls, ServerTls

# The event loops a serving process can run on (embark.server.loop).
EventLoop = Literal["uvloop", "asyncio"]


class StoreSettings(BaseModel):
    """Which archive, and how to reach it."""

    model_config = ConfigDict(frozen=True)

    # SQLite is the zero-setup default; production runs Cassandra.
    backend: Literal["sqlite", "cassandra"] = "sqlite"
    sqlite: SqliteConfig = SqliteConfig()
    cassandra: CassandraConfig = CassandraConfig()
    # FindSimilar (docs/similarity.md). SQLite searches its own table, at no write cost, so
    # this only matters for Cassandra: on, every vector is also written to its model
    # revision's vector table with an SAI ANN index (`embark schema apply` creates them),
    # which costs Cassandra CPU on every write. Off by default: a cache that nobody searches
    # should not pay for it. EmbArk and KFC must agree (KFC_STORE__SIMILARITY_SEARCH).
    similarity_search: bool = False
    # How vectors are written to the archive: float16 halves the bytes on disk and on the
    # wire from the archive, at a cosine >= 0.9999 to the float32 vector (embark/store/half.py,
    # measured in docs/performance.md). Readers always get float32 and read rows of either
    # form, so the switch needs no migration. float32 by default: exact, as encoded.
    vector_dtype: Literal["float32", "float16"] = "float32"


class QueueSettings(BaseModel):
    """Which job queue, and how to reach it."""

    model_config = ConfigDict(frozen=True)

    # The in-process queue needs no server but lives and dies with the process.
    backend: Literal["local", "kafka"] = "local"
    # Bound on jobs buffered in process; beyond it misses are DROPPED (and counted), never
    # allowed to grow memory without limit.
    local_max_buffered: int = Field(default=100_000, gt=0)
    kafka: KafkaConfig = KafkaConfig()


class EmbarkSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EMBARK_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    # Written by `retina models build`; the one file naming models, revisions and OOV vectors.
    catalog: Path = Path("artifacts/catalog.json")
    # Loopback by default: exposing the port is a deployment decision, not a default.
    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    # Prometheus scrape port; 0 disables it.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    store: StoreSettings = StoreSettings()
    # The in-process LRU in front of the store (embark/store/cached.py), in bytes; 0 disables
    # it. 256 MiB holds ~150k 384-d text vectors (1.5 KiB + ~0.5 KiB bookkeeping each): the
    # hot set of a large catalogue, at a size any EmbArk container can spare. Vectors of a
    # revision never change, so nothing cached is ever stale.
    cache_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    queue: QueueSettings = QueueSettings()
    # Retina for read-through (wait_ms > 0). Empty disables read-through: misses stay PENDING.
    retina_address: str = "127.0.0.1:50052"
    # Upper bound on one read-through encode call, whatever wait_ms asks for.
    retina_timeout_s: float = Field(default=10.0, gt=0)
    # Requests are refused above these rather than queued: a bound on per-call memory and time.
    max_batch: int = Field(default=1024, gt=0)
    # Retina's own limit (RETINA_MAX_TEXT_CHARS): longer text is refused here, at once, rather
    # than failing permanently in KFC later. The encoder reads 256 tokens at most anyway.
    max_text_chars: int = Field(default=4096, gt=0)
    max_url_chars: int = Field(default=2048, gt=0)
    # The store read's share of a request. Past it the answer is OOV + UNAVAILABLE, so callers
    # on a ranking path get an answer within their own deadline even with the archive down.
    lookup_timeout_ms: int = Field(default=250, gt=0)
    # A key queued within this window is not queued again (misses repeat in bursts).
    pending_window_s: float = Field(default=60.0, ge=0)
    pending_window_size: int = Field(default=100_000, gt=0)
    # `embark serve` worker processes sharing the port (SO_REUSEPORT), each with its own event
    # loop and LRU: grpc.aio serves one core per process at most, and the hit path shares
    # nothing but its cache, so it scales with processes (docs/performance.md, "workers").
    # 0 = one per CPU core the process may use (its affinity, capped by a cgroup v2 CPU quota;
    # Nomad's cpu is a share, so its job sets this); 1 = a single process, no multiprocess
    # metrics. cache_bytes is split evenly between the workers, so the memory bound holds for
    # the whole group.
    workers: int = Field(default=0, ge=0)
    # The event loop each serving process runs: uvloop (libuv, in C) served the same LRU hits
    # at 1.25x the calls per CPU-second of asyncio's own loop, with 0.69x its p50, on a quiet
    # box (bench/event_loop.py, docs/performance.md); "asyncio" is the standard library's, for a
    # platform without uvloop (Windows) or to rule the loop out when debugging.
    event_loop: EventLoop = "uvloop"
    # Shorter than the orchestrator's kill timeout (Nomad kill_timeout 30 s in deploy/).
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # A batch of 1024 384-d vectors is ~1.6 MB; 16 MiB leaves room for big image models.
    max_message_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    # Optional bearer token required on every RPC except health and reflection.
    token: SecretStr | None = None
    # Categorizer heads (`embark heads train` writes <name>/<version>.{npz,json} here), loaded
    # at start and checked against the catalog's revisions. Relative, like `catalog`: the
    # working directory of a deployment is its root; a missing directory means no heads.
    heads_dir: Path = Path("heads")
    # Calls worked on at once; beyond it a call is refused at once with RESOURCE_EXHAUSTED
    # (counted in embark_rejected) rather than queued: queued calls only grow memory and
    # latency while their callers' deadlines run out. Calls in flight are the call rate times
    # the latency (Little's law): at the rates and latencies docs/performance.md measures
    # (a), a few to a few tens; 256 is reached only by a real overload.
    max_in_flight: int = Field(default=256, gt=0)
    # The HTTP front (OpenAI-compatible /v1/embeddings, native /embed, /health, /ready) in the
    # same process, on the same host, token and TLS as gRPC. Unset: no HTTP port (gRPC is the
    # native API; exposing a second port is a deployment decision). 0: any free port.
    http_port: int | None = Field(default=None, ge=0, le=65535)
    # /v1/embeddings reads through within this deadline and answers 503 + Retry-After past it
    # (never an OOV vector). 5 s covers a full batch of short texts encoded on two cores; a
    # client may ask for less with the X-EmbArk-Wait-Ms header, never for more.
    http_wait_ms: int = Field(default=5000, ge=0)
    # Retry-After on a 503: by then KFC has usually stored what the deadline missed (a miss
    # is stored in well under a second at idle, docs/performance.md).
    http_retry_after_s: float = Field(default=1.0, gt=0, le=60)
    # TLS for the gRPC port (EMBARK_TLS__CERT_FILE, __KEY_FILE; __CLIENT_CA_FILE requires
    # client certificates: mutual TLS). Off by default: the default bind address is loopback.
    tls: ServerTls = ServerTls()
    # TLS for the read-through channel to Retina (EMBARK_RETINA_TLS__CA_FILE, __CERT_FILE and
    # __KEY_FILE when Retina requires mutual TLS, __SERVER_NAME to override the checked name).
    retina_tls: ClientTls = ClientTls()
