"""The Apache Cassandra implementation of ``EmbeddingStore``: the archive in production.

Owns the Cassandra schema (``apply_schema``, called by ``embark schema apply``), the connection
(``open_cassandra_store``) and the translation between the store's rows and CQL. Targets
Cassandra 5.0 with the DataStax ``cassandra-driver``.

Tables (one keyspace, created by ``apply_schema``):

    embeddings              key PRIMARY KEY -> model, revision, kind, input, vector, dim, created_at
    embeddings_by_revision  ((model, revision, bucket), key): the keys of one model revision
    failures                key PRIMARY KEY -> model, revision, reason, message, failed_at

Every lookup is by key, so ``embeddings`` is partitioned by key: one single-row partition per
vector, spread evenly over the ring, read with one token-aware request. ``scan`` needs the
opposite (every row of one model revision), which a key-partitioned table cannot answer without
a full-table scan; ``embeddings_by_revision`` is that index, written beside each vector with the
same TTL. It holds keys only (a vector is stored once) and splits each revision over
``SCAN_BUCKETS`` partitions so that a revision of millions of rows never becomes one huge
partition. A secondary index or SAI on (model, revision) would avoid the second write but fans
every scan out to the whole cluster over a low-cardinality column; the explicit table keeps
scans partition-bounded and works the same on every Cassandra version.

A stored vector wins over a failure record of the same key: ``get_many`` reads ``embeddings``
first and asks ``failures`` only for the keys it did not find. A vector write therefore never
has to delete the failure record (which would leave a tombstone per written vector); the
record simply expires by its TTL.

Concurrency: the driver's ``execute_async`` returns a ``ResponseFuture`` whose callbacks run on
the driver's IO thread; ``_Request`` hands each page to the event loop with
``call_soon_threadsafe``, so no request ever blocks the loop and no executor thread is held per
request (``execute_concurrent_with_args`` in an executor would pin a thread for the whole batch
and block it on the slowest row). A batch runs through at most ``max_concurrent_requests``
workers. Only ``connect`` and ``shutdown``, which block by design, go to an executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal, TypeVar, cast

from cassandra import (
    ConsistencyLevel,
    InvalidRequest,
    OperationTimedOut,
    ReadFailure,
    ReadTimeout,
    Unavailable,
    WriteFailure,
    WriteTimeout,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.connection import ConnectionException
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)
from cassandra.query import BoundStatement, tuple_factory
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    field_validator,
    model_validator,
)

from embark import vectors
from embark.errors import BackendUnavailable, EmbarkError
from embark.keys import InputKind
from embark.store.base import FailureRecord, Lookup, StoredVector

__all__ = [
    "SCAN_BUCKETS",
    "CassandraConfig",
    "CassandraStore",
    "apply_schema",
    "open_cassandra_store",
]

# Part of the data layout, not a tuning knob: a key's bucket is crc32(key) % SCAN_BUCKETS, so
# changing this orphans the index rows already written. 64 keeps a 10-million-row revision at
# about 160k index rows (a few MB) per partition, while a scan of a small revision costs only
# 64 cheap partition reads.
SCAN_BUCKETS: Final = 64

# Cassandra refuses TTLs above 20 years.
_MAX_TTL_S: Final = 20 * 365 * 24 * 3600
# DDL waits for schema agreement, which takes seconds on a small or busy cluster; the request
# timeout meant for point reads would fail a schema apply that is merely slow.
_SCHEMA_TIMEOUT_S: Final = 60.0
# Errors that mean "the cluster did not answer in time or has too few replicas up": the caller
# may retry later. Anything else (InvalidRequest, SyntaxException...) is a bug and propagates.
_UNAVAILABLE: Final = (
    NoHostAvailable,
    OperationTimedOut,
    Unavailable,
    ReadTimeout,
    WriteTimeout,
    ReadFailure,
    WriteFailure,
    ConnectionException,
)
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,47}")
_REPLICATION_WORD = re.compile(r"[A-Za-z0-9_.\-]+")
_KINDS: Final[Mapping[str, InputKind]] = {"text": "text", "image": "image"}

Consistency = Literal[
    "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE"
]
Row = tuple[Any, ...]
_T = TypeVar("_T")
_R = TypeVar("_R")


def _default_replication() -> dict[str, str | int]:
    return {"class": "NetworkTopologyStrategy", "replication_factor": 1}


class CassandraConfig(BaseModel):
    """Where the archive lives and how it is read and written. Built by the service's settings
    (which read the environment) and passed down; nothing here reads the environment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # "host:port" (IPv6 as "[::1]:9042"). Two or three nodes per DC are enough: the driver
    # discovers the rest of the ring from the first one that answers.
    contact_points: tuple[str, ...] = Field(default=("127.0.0.1:9042",), min_length=1)
    # One keyspace per deployment; lower-case so CQL's case folding never surprises.
    keyspace: str = "embark"
    # Only used by apply_schema when it creates the keyspace. NetworkTopologyStrategy with a
    # plain replication_factor (Cassandra 4.0+) applies it to every DC, so one default serves a
    # single-node dev server and, with 3, a real cluster. Changing it later is an operator's
    # ALTER KEYSPACE plus repair, never automatic.
    replication: dict[str, str | int] = Field(default_factory=_default_replication)
    # The DC this process runs in: requests stay in it (DCAwareRoundRobinPolicy), and the
    # LOCAL_* consistency levels below count replicas there. "datacenter1" is what a stock
    # single-DC Cassandra reports.
    local_dc: str = "datacenter1"
    # 90 days. A model revision's keys are never read again once it is replaced, so its rows
    # must age out by themselves; 90 days outlives any normal rollout and rollback window.
    vector_ttl_s: int = Field(default=90 * 24 * 3600, gt=0, le=_MAX_TTL_S)
    # 1 hour: a permanent failure (404, not an image) is remembered long enough to stop a
    # retry storm, and short enough that a fixed URL or a transient misclassification heals.
    failure_ttl_s: int = Field(default=3600, gt=0, le=_MAX_TTL_S)
    # LOCAL_ONE: vectors of a key never change, so any replica that has the row has the right
    # one; a replica that missed the write only turns a hit into a harmless miss (OOV +
    # re-enqueue, which KFC skips as already stored). One replica keeps hit latency lowest.
    read_consistency: Consistency = "LOCAL_ONE"
    # LOCAL_QUORUM: KFC commits its Kafka offsets only after the write is acknowledged, so the
    # acknowledgement must survive the loss of one replica; staying local keeps it cross-DC-free.
    write_consistency: Consistency = "LOCAL_QUORUM"
    # Secrets: kept out of reprs and logs; both or neither.
    username: SecretStr | None = None
    password: SecretStr | None = None
    # 2 s per request: a lookup that slow is better answered OOV (the caller's deadline is
    # shorter), and a write that slow is retried by KFC with backoff.
    request_timeout_s: float = Field(default=2.0, gt=0)
    # 5 s to open a connection: enough for a cross-AZ TLS handshake; readiness fails fast.
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # Requests in flight per batch call. 64 saturates a small cluster's coordinator without
    # queueing thousands of requests in the driver when KFC writes a large batch.
    max_concurrent_requests: int = Field(default=64, ge=1, le=2048)
    # Rows per page when scanning a revision's index partitions (keys only, so pages are small).
    scan_page_size: int = Field(default=1000, ge=1)
    # Keys per read request in get_many. Keys are grouped by the replicas that own them and
    # each group is read with `key IN (...)` routed to one of those replicas, so the request
    # costs the driver (and the loop) once per group instead of once per key, and no read
    # takes an extra coordinator hop. 32-64 measured best on a single node (7.5x the
    # key-at-a-time rate for 1,024-key batches; 128 and more only ~4x, as fewer, larger
    # requests overlap less), by bench/read_batch.py; 1 restores one request a key.
    read_batch_keys: int = Field(default=64, ge=1, le=500)
    # The longest wait between attempts to reconnect to a node that went down. The driver's
    # default policy grows to 10 minutes, which would keep a restarted node (the archive back
    # from a 30 s outage) unused for minutes; probing a down node every few seconds is cheap.
    reconnect_max_s: float = Field(default=4.0, gt=0)
    # TLS to the nodes (client_encryption_options on the server). ssl_ca_file on: the nodes'
    # certificates must chain to it, and their names (the contact addresses) are checked unless
    # ssl_check_hostname is false. ssl_cert_file/ssl_key_file: a client certificate, for
    # clusters that require one (require_client_auth).
    ssl_ca_file: FilePath | None = None
    ssl_cert_file: FilePath | None = None
    ssl_key_file: FilePath | None = None
    ssl_check_hostname: bool = True
    # Protocol v5 (Cassandra 4.0+, so 5.0): checksummed framing. Pinned rather than negotiated
    # so that a misconfigured older server fails at connect instead of silently downgrading.
    protocol_version: int = Field(default=5, ge=3, le=5)

    @field_validator("contact_points")
    @classmethod
    def _check_contact_points(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for point in value:
            _split_host_port(point)
        return value

    @field_validator("keyspace")
    @classmethod
    def _check_keyspace(cls, value: str) -> str:
        if not _IDENTIFIER.fullmatch(value):
            raise ValueError(
                "keyspace must be 1-48 characters of a-z, 0-9 and _, starting with a letter"
            )
        return value

    @field_validator("replication")
    @classmethod
    def _check_replication(cls, value: dict[str, str | int]) -> dict[str, str | int]:
        # The map is written into DDL, so nothing that could close a CQL string may pass.
        if "class" not in value:
            raise ValueError("replication needs a 'class'")
        for key, item in value.items():
            if not _REPLICATION_WORD.fullmatch(key) or not _REPLICATION_WORD.fullmatch(str(item)):
                raise ValueError(f"replication entry {key!r}: {item!r} is not a plain word")
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> CassandraConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("ssl_cert_file and ssl_key_file go together")
        if self.ssl_cert_file is not None and self.ssl_ca_file is None:
            raise ValueError("a client certificate (ssl_cert_file) needs ssl_ca_file")
        return self


def _split_host_port(point: str) -> tuple[str, int]:
    host, sep, port = point.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"contact point {point!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _bucket(key: str) -> int:
    # crc32, not hash(): the bucket must be the same in every process and on every run.
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % SCAN_BUCKETS


def _replication_cql(replication: Mapping[str, str | int]) -> str:
    return "{" + ", ".join(f"'{key}': '{item}'" for key, item in replication.items()) + "}"


def _unavailable(operation: str, exc: BaseException) -> BackendUnavailable:
    # The message reaches gRPC clients: name the failure, never hosts or addresses (those stay
    # in the chained driver exception, for the logs).
    return BackendUnavailable(f"Cassandra unavailable during {operation}: {type(exc).__name__}")


def _schema_missing(exc: InvalidRequest) -> BackendUnavailable | None:
    """A request naming a keyspace or table that the coordinator does not have: a backend fault
    (a node that lost or has not yet received the schema, e.g. after a crash), not a bad
    request, so callers answer UNAVAILABLE and retry, never INTERNAL."""
    text = str(exc)
    if "does not exist" in text or "unconfigured table" in text:
        return BackendUnavailable(
            "Cassandra is missing the keyspace or a table on a node: run `embark schema apply`"
        )
    return None


def _ssl_context(config: CassandraConfig) -> ssl.SSLContext | None:
    if config.ssl_ca_file is None:
        return None
    context = ssl.create_default_context(cafile=str(config.ssl_ca_file))
    context.check_hostname = config.ssl_check_hostname
    if config.ssl_cert_file is not None and config.ssl_key_file is not None:
        context.load_cert_chain(str(config.ssl_cert_file), str(config.ssl_key_file))
    return context


def _cluster(config: CassandraConfig) -> Cluster:
    points = [_split_host_port(point) for point in config.contact_points]
    profile = ExecutionProfile(
        # Token-aware: each single-key request goes straight to a replica of its key (no extra
        # coordinator hop); DC-aware: never leave the local DC.
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=config.local_dc)),
        request_timeout=config.request_timeout_s,
        # Plain tuples: named_tuple_factory builds a namedtuple class per response.
        row_factory=tuple_factory,
    )
    auth = None
    if config.username is not None and config.password is not None:
        auth = PlainTextAuthProvider(
            username=config.username.get_secret_value(),
            password=config.password.get_secret_value(),
        )
    return Cluster(
        contact_points=points,
        port=points[0][1],
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        reconnection_policy=ExponentialReconnectionPolicy(
            base_delay=min(0.5, config.reconnect_max_s), max_delay=config.reconnect_max_s
        ),
        ssl_context=_ssl_context(config),
        protocol_version=config.protocol_version,
        auth_provider=auth,
        connect_timeout=config.connect_timeout_s,
        control_connection_timeout=config.connect_timeout_s,
    )


def apply_schema(config: CassandraConfig, extra: Sequence[str] = ()) -> None:
    """Create the keyspace and tables if absent (idempotent; blocking, for the CLI), then run
    the ``extra`` statements (the similarity index's tables, embark/similar/cassandra.py).

    An existing keyspace keeps its replication: changing that is an operator's decision."""
    ks = config.keyspace
    statements = [
        f"CREATE KEYSPACE IF NOT EXISTS {ks} "
        f"WITH replication = {_replication_cql(config.replication)}",
        f"CREATE TABLE IF NOT EXISTS {ks}.embeddings ("
        " key text PRIMARY KEY, model text, revision text, kind text, input text,"
        " vector blob, dim int, created_at timestamp)",
        f"CREATE TABLE IF NOT EXISTS {ks}.embeddings_by_revision ("
        " model text, revision text, bucket int, key text,"
        " PRIMARY KEY ((model, revision, bucket), key))",
        # A short gc_grace is safe here: a failure record resurrected by a missed tombstone is
        # harmless (it expires, and a stored vector wins over it anyway).
        f"CREATE TABLE IF NOT EXISTS {ks}.failures ("
        " key text PRIMARY KEY, model text, revision text, reason text, message text,"
        " failed_at timestamp) WITH gc_grace_seconds = 10800",
        *extra,
    ]
    cluster = _cluster(config)
    try:
        session = cluster.connect()
        for statement in statements:
            session.execute(statement, timeout=_SCHEMA_TIMEOUT_S)
    except _UNAVAILABLE as exc:
        raise _unavailable("schema apply", exc) from exc
    finally:
        cluster.shutdown()


async def open_cassandra_store(config: CassandraConfig) -> CassandraStore:
    """Connect and prepare the statements. Raises BackendUnavailable when no node answers."""
    # Connecting resolves names, handshakes and prepares synchronously: keep it off the loop.
    return await asyncio.to_thread(CassandraStore.connect, config)


class _Request:
    """One driver request bridged to asyncio, page by page.

    The driver calls back on its IO thread (and synchronously when the result is already
    there); ``call_soon_threadsafe`` moves each page onto the loop. Callbacks stay registered
    across pages, so the same pair serves every ``start_fetching_next_page``."""

    __slots__ = ("_loop", "_response", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, response: Any) -> None:
        self._loop = loop
        self._response = response
        self._waiter: asyncio.Future[list[Row]] = loop.create_future()
        response.add_callbacks(self._on_rows, self._on_error)

    def _on_rows(self, rows: list[Row]) -> None:
        self._hand_over(rows, None)

    def _on_error(self, exc: BaseException) -> None:
        self._hand_over(None, exc)

    def _hand_over(self, rows: list[Row] | None, exc: BaseException | None) -> None:
        # RuntimeError: the loop is closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._settle, rows, exc)

    def _settle(self, rows: list[Row] | None, exc: BaseException | None) -> None:
        if self._waiter.done():  # the awaiting task was cancelled
            return
        if exc is not None:
            self._waiter.set_exception(exc)
        else:
            self._waiter.set_result(rows or [])

    async def page(self) -> list[Row]:
        return await self._waiter

    def fetch_next(self) -> bool:
        """Start fetching the next page; False when there is none."""
        if not self._response.has_more_pages:
            return False
        self._waiter = self._loop.create_future()
        self._response.start_fetching_next_page()
        return True


async def _bounded(items: Iterable[_T], fn: Callable[[_T], Awaitable[_R]], limit: int) -> list[_R]:
    """``fn`` over ``items`` with at most ``limit`` in flight, results in input order.

    Workers pull from one iterator rather than one task per item, so a batch of a million keys
    costs ``limit`` tasks, not a million. The first error cancels the rest and is re-raised
    as itself."""
    pending = list(enumerate(items))
    results: list[_R | None] = [None] * len(pending)
    feed = iter(pending)

    async def worker() -> None:
        for index, item in feed:
            results[index] = await fn(item)

    workers = [asyncio.create_task(worker()) for _ in range(min(limit, len(pending)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        # gather leaves the siblings running on an error; a half-done batch must stop now.
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    return cast("list[_R]", results)  # every slot was filled, or we raised


class _RoutedRead(BoundStatement):  # type: ignore[misc]
    """A bound ``key IN ?`` read routed like its first key. The driver computes no routing key
    for an IN (it cannot), which would send it to any node; every key of the group shares the
    first key's replicas, so routing by it keeps the read token-aware."""

    @property
    def routing_key(self) -> bytes | None:
        return cast("bytes | None", self._routing_key)


def _routed(statement: Any, keys: list[str]) -> _RoutedRead:
    bound = _RoutedRead(statement)
    bound.bind((keys,))
    bound._routing_key = keys[0].encode("utf-8")  # the slot the driver reads it from
    return bound


class CassandraStore:
    """``EmbeddingStore`` on Cassandra. Build it with ``open_cassandra_store``.

    Each instance prepares its own statements on its own session: prepared statements belong
    to a session, so a class-level cache would leak them across clusters and keyspaces."""

    def __init__(self, config: CassandraConfig, cluster: Any, session: Any) -> None:
        self._config = config
        self._cluster = cluster
        self._session = session
        self._closed = False
        # Tables are named with their keyspace and the session has none: Cassandra 5 warns that
        # a session keyspace (USE) makes prepared statements ambiguous.
        read = ConsistencyLevel.name_to_value[config.read_consistency]
        write = ConsistencyLevel.name_to_value[config.write_consistency]
        prepare = self._prepare

        # toUnixTimestamp: the exact milliseconds; the driver's datetime round trip goes
        # through a float and can lose one.
        self._select_vector = prepare(
            "SELECT key, model, revision, kind, input, vector, dim,"
            " toUnixTimestamp(created_at) FROM {ks}.embeddings WHERE key = ?",
            read,
        )
        self._select_failure = prepare(
            "SELECT key, model, revision, reason, message, toUnixTimestamp(failed_at)"
            " FROM {ks}.failures WHERE key = ?",
            read,
        )
        self._select_vectors_in = prepare(
            "SELECT key, model, revision, kind, input, vector, dim,"
            " toUnixTimestamp(created_at) FROM {ks}.embeddings WHERE key IN ?",
            read,
        )
        self._select_failures_in = prepare(
            "SELECT key, model, revision, reason, message, toUnixTimestamp(failed_at)"
            " FROM {ks}.failures WHERE key IN ?",
            read,
        )
        self._select_revision_keys = prepare(
            "SELECT key FROM {ks}.embeddings_by_revision"
            " WHERE model = ? AND revision = ? AND bucket = ?",
            read,
        )
        self._select_revision_keys.fetch_size = config.scan_page_size
        self._insert_vector = prepare(
            "INSERT INTO {ks}.embeddings"
            " (key, model, revision, kind, input, vector, dim, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
            write,
        )
        self._insert_revision_key = prepare(
            "INSERT INTO {ks}.embeddings_by_revision (model, revision, bucket, key)"
            " VALUES (?, ?, ?, ?) USING TTL ?",
            write,
        )
        self._insert_failure = prepare(
            "INSERT INTO {ks}.failures (key, model, revision, reason, message, failed_at)"
            " VALUES (?, ?, ?, ?, ?, ?) USING TTL ?",
            write,
        )
        self._select_version = prepare("SELECT release_version FROM system.local", read)

    def _prepare(self, template: str, consistency: int) -> Any:
        # {ks} is the validated keyspace identifier; every value is a bind marker.
        statement = self._session.prepare(template.format(ks=self._config.keyspace))
        statement.consistency_level = consistency
        # Every statement here is safe to repeat (same key, same row), which lets the
        # driver retry it on another node after a timeout.
        statement.is_idempotent = True
        return statement

    # -- for companions on this connection (embark/similar/cassandra.py) ----------------------

    @property
    def config(self) -> CassandraConfig:
        return self._config

    def prepare(self, template: str, *, write: bool) -> Any:
        """Blocking: prepare ``template`` (``{ks}`` is this store's keyspace) at the store's
        read or write consistency. Raises InvalidRequest for a missing table."""
        level = self._config.write_consistency if write else self._config.read_consistency
        return self._prepare(template, ConsistencyLevel.name_to_value[level])

    async def execute(self, statement: Any, params: tuple[Any, ...], operation: str) -> list[Row]:
        """One request on this store's session, its first page; BackendUnavailable if down."""
        return await self._execute(statement, params, operation)

    async def write(self, writes: Sequence[tuple[Any, tuple[Any, ...]]], operation: str) -> None:
        """Statements with their parameters, ``max_concurrent_requests`` in flight."""
        await self._write(writes, operation)

    @classmethod
    def connect(cls, config: CassandraConfig) -> CassandraStore:
        """Blocking: connect, then prepare. ``open_cassandra_store`` runs it in an executor."""
        cluster = _cluster(config)
        try:
            session = cluster.connect()
            return cls(config, cluster, session)
        except _UNAVAILABLE as exc:
            cluster.shutdown()
            raise _unavailable("connect", exc) from exc
        except InvalidRequest as exc:
            # Preparing against a keyspace or table that does not exist.
            cluster.shutdown()
            raise EmbarkError(
                f"Cassandra keyspace {config.keyspace!r} is missing or incomplete:"
                " run `embark schema apply`"
            ) from exc
        except BaseException:
            cluster.shutdown()
            raise

    # -- the Protocol ---------------------------------------------------------------------

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Lookup]:
        unique = list(dict.fromkeys(keys))
        found: dict[str, Lookup] = dict(await self._get_vectors(unique))
        missing = [key for key in unique if key not in found]
        rows = await self._read_keys(self._select_failure, self._select_failures_in, missing)
        for page in rows:
            for key, model, revision, reason, message, failed_at_ms in page:
                found[key] = FailureRecord(key, model, revision, reason, message, failed_at_ms)
        return found

    async def put_many(self, rows: Sequence[StoredVector]) -> None:
        # Check everything before writing anything: a bad row fails the batch untouched.
        for row in rows:
            vectors.check_stored(row.vector, row.dim)
            if row.kind not in _KINDS:
                raise EmbarkError(f"unknown input kind {row.kind!r} for key {row.key}")
        ttl = self._config.vector_ttl_s
        writes: list[tuple[Any, tuple[Any, ...]]] = []
        for row in rows:
            writes.append(
                (
                    self._insert_vector,
                    (row.key, row.model, row.revision, row.kind, row.input, row.vector,
                     row.dim, row.created_at_ms, ttl),
                )
            )  # fmt: skip
            writes.append(
                (
                    self._insert_revision_key,
                    (row.model, row.revision, _bucket(row.key), row.key, ttl),
                )
            )
        await self._write(writes, "put_many")

    async def put_failures(self, rows: Sequence[FailureRecord]) -> None:
        ttl = self._config.failure_ttl_s
        await self._write(
            [
                (
                    self._insert_failure,
                    (row.key, row.model, row.revision, row.reason, row.message,
                     row.failed_at_ms, ttl),
                )
                for row in rows
            ],
            "put_failures",
        )  # fmt: skip

    async def scan(self, model: str, revision: str) -> Sequence[StoredVector]:
        async def bucket_keys(bucket: int) -> list[str]:
            return [
                key
                async for page in self._pages(
                    self._select_revision_keys, (model, revision, bucket), "scan"
                )
                for (key,) in page
            ]

        buckets = await _bounded(
            range(SCAN_BUCKETS), bucket_keys, self._config.max_concurrent_requests
        )
        found = await self._get_vectors([key for keys in buckets for key in keys])
        # An index row may outlive or predate its vector by a moment (separate writes, separate
        # expiry), and must never smuggle in another revision's row.
        return sorted(
            (row for row in found.values() if row.model == model and row.revision == revision),
            key=lambda row: row.key,
        )

    async def ping(self) -> None:
        await self._execute(self._select_version, (), "ping")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # shutdown() joins the driver's threads: blocking, so off the loop.
        await asyncio.to_thread(self._cluster.shutdown)

    # -- internals ------------------------------------------------------------------------

    async def _read_keys(self, one: Any, many: Any, keys: Sequence[str]) -> list[list[Row]]:
        """Rows of ``keys``: one request per replica group of up to ``read_batch_keys`` keys
        (``many``, a ``key IN ?`` statement), or per key (``one``) when batching is off."""
        limit = self._config.max_concurrent_requests
        if self._config.read_batch_keys == 1 or len(keys) == 1:
            return await _bounded(keys, lambda key: self._execute(one, (key,), "get_many"), limit)
        return await _bounded(
            self._replica_groups(keys),
            lambda group: self._execute(_routed(many, group), None, "get_many"),
            limit,
        )

    def _replica_groups(self, keys: Sequence[str]) -> list[list[str]]:
        """``keys`` split into chunks of at most ``read_batch_keys`` whose keys share their
        replicas (so the request's coordinator owns every row it reads)."""
        metadata = self._cluster.metadata
        ks = self._config.keyspace
        groups: dict[frozenset[Any], list[str]] = {}
        for key in keys:
            owners = frozenset(metadata.get_replicas(ks, key.encode("utf-8")))
            groups.setdefault(owners, []).append(key)
        size = self._config.read_batch_keys
        return [
            group[i : i + size] for group in groups.values() for i in range(0, len(group), size)
        ]

    async def _get_vectors(self, keys: Sequence[str]) -> dict[str, StoredVector]:
        pages = await self._read_keys(self._select_vector, self._select_vectors_in, keys)
        found: dict[str, StoredVector] = {}
        for page in pages:
            for key, model, revision, kind, input_, vector, dim, created_at_ms in page:
                # Checked on read too: a corrupt or mixed row must fail loudly, not be served.
                vectors.check_stored(vector, dim)
                if kind not in _KINDS:
                    raise EmbarkError(f"stored row {key} has unknown input kind {kind!r}")
                found[key] = StoredVector(
                    key,
                    model,
                    revision,
                    _KINDS[kind],
                    input_,
                    vectors.widen(vector, dim),  # float16 rows: read as float32
                    dim,
                    created_at_ms,
                )
        return found

    async def _write(self, writes: Sequence[tuple[Any, tuple[Any, ...]]], operation: str) -> None:
        # Writes are idempotent, so a partial failure is repaired by the caller's retry (KFC
        # does not commit its offsets until this returns).
        await _bounded(
            writes,
            lambda write: self._execute(write[0], write[1], operation),
            self._config.max_concurrent_requests,
        )

    async def _execute(
        self, statement: Any, params: tuple[Any, ...] | None, operation: str
    ) -> list[Row]:
        """One request, first page only (every point query fits in one page)."""
        request = self._start(statement, params, operation)
        try:
            return await request.page()
        except _UNAVAILABLE as exc:
            raise _unavailable(operation, exc) from exc
        except InvalidRequest as exc:
            raise _schema_missing(exc) or exc from exc

    async def _pages(
        self, statement: Any, params: tuple[Any, ...], operation: str
    ) -> AsyncIterator[list[Row]]:
        """Every page of one request, fetched one at a time as the caller consumes them."""
        request = self._start(statement, params, operation)
        try:
            while True:
                yield await request.page()
                if not request.fetch_next():
                    return
        except _UNAVAILABLE as exc:
            raise _unavailable(operation, exc) from exc
        except InvalidRequest as exc:
            raise _schema_missing(exc) or exc from exc

    def _start(self, statement: Any, params: tuple[Any, ...] | None, operation: str) -> _Request:
        if self._closed:
            raise RuntimeError("the Cassandra store is closed")
        try:
            return _Request(
                asyncio.get_running_loop(), self._session.execute_async(statement, params)
            )
        except _UNAVAILABLE as exc:
            raise _unavailable(operation, exc) from exc
