"""KFC's settings: one frozen pydantic-settings class, env prefix ``KFC_``, nested with ``__``.
The store and queue sections are the same types EmbArk uses (it is the other end of the queue
and writes to the same archive). Built in ``main()``; nothing reads the environment at import.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from embark.retry import Backoff
from embark.settings import QueueSettings, StoreSettings
from embark_core.tls import ClientTls, ServerTls
from kfc.worker import BatchConfig


class KfcSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KFC_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    # The same catalog EmbArk serves: jobs for models or revisions not in it are dead-lettered.
    catalog: Path = Path("artifacts/catalog.json")
    store: StoreSettings = StoreSettings()
    # KFC only makes sense on a shared queue; the local one exists inside `embark dev`.
    queue: QueueSettings = QueueSettings(backend="kafka")
    retina_address: str = "127.0.0.1:50052"
    # TLS for the channel to Retina (KFC_RETINA_TLS__CA_FILE; __CERT_FILE/__KEY_FILE when
    # Retina requires mutual TLS). Plaintext by default: the default Retina is on loopback.
    retina_tls: ClientTls = ClientTls()
    # TLS for the health port (KFC_TLS__CERT_FILE, __KEY_FILE, __CLIENT_CA_FILE).
    tls: ServerTls = ServerTls()
    # Encoding is the slow step: a call may queue behind others in Retina's batcher.
    retina_timeout_s: float = Field(default=30.0, gt=0)
    # Large polls amortise commits and store round trips; misses are rare, so batches fill
    # slowly and poll_timeout_s bounds the extra latency a lone miss waits.
    max_batch: int = Field(default=256, gt=0)
    poll_timeout_s: float = Field(default=0.05, gt=0)
    # Inputs per Retina call: the encoder's efficient batch size on a 2-core box.
    encode_batch: int = Field(default=32, gt=0)
    # Embed calls in flight at once: enough to overlap one call's tokenising and image
    # fetching with another's inference in Retina, few enough not to queue behind its batcher.
    encode_concurrency: int = Field(default=4, gt=0)
    # Polled batches worked on at once. One batch waiting on a slow input (an image host that
    # tarpits holds its fetch for Retina's whole fetch timeout) must not delay the next poll;
    # three batches behind it keep misses flowing, while Retina's load stays bounded by
    # encode_concurrency above.
    max_batches: int = Field(default=4, gt=0)
    # Backend faults (Retina, the store or Kafka unavailable): the whole batch waits, jittered,
    # from about backoff_initial_s up to backoff_max_s between tries, until the fault passes.
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    # An item whose fault may pass (its image host answered 503, reset, ...): retried on its
    # own, jittered from item_retry_initial_s up to item_retry_max_s, at most item_max_attempts
    # tries in all and item_retry_deadline_s after the first retry; then it is FAILED
    # ("http_503 after 5 attempts") until the failure record's TTL. Five tries over about a
    # minute ride out a host's restart without letting a dead host hold a slot for long.
    item_max_attempts: int = Field(default=5, ge=1)
    item_retry_initial_s: float = Field(default=1.0, gt=0)
    item_retry_max_s: float = Field(default=20.0, gt=0)
    item_retry_deadline_s: float = Field(default=60.0, gt=0)
    # Items in retry at once: each holds its partition's committed position back and a little
    # memory. Past the bound a transient fault is final at once (FAILED, retried after the TTL).
    max_retrying: int = Field(default=10_000, gt=0)
    # Prometheus scrape port; 0 disables it.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Health endpoint for orchestrators (gRPC health); 0 disables it.
    health_port: int = Field(default=50053, ge=0, le=65535)
    host: str = "127.0.0.1"

    def batch_config(self) -> BatchConfig:
        return BatchConfig(
            max_batch=self.max_batch,
            poll_timeout_s=self.poll_timeout_s,
            encode_batch=self.encode_batch,
            encode_concurrency=self.encode_concurrency,
            max_batches=self.max_batches,
            backoff=Backoff(initial_s=self.backoff_initial_s, max_s=self.backoff_max_s),
            item_retry=Backoff(
                initial_s=self.item_retry_initial_s,
                max_s=self.item_retry_max_s,
                attempts=self.item_max_attempts,  # the batch's own try is the first
                deadline_s=self.item_retry_deadline_s,
            ),
            max_retrying=self.max_retrying,
        )
