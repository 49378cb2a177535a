"""Retina's configuration: one frozen settings class, read from ``RETINA_*`` environment variables.

``retina.cli.main`` builds it once and passes it down; nothing in the package reads the
environment at import time. Every field says why its default is what it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from embark_core.tls import ServerTls
from retina.fetch import FetchConfig


class RetinaSettings(BaseSettings):
    """The Retina server's settings. ``RETINA_MODELS=minilm-l6,efficientnet-lite0`` style lists
    are comma-separated."""

    model_config = SettingsConfigDict(
        env_prefix="RETINA_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    # --- models ---------------------------------------------------------------------------
    artifacts_dir: Path = Field(
        default=Path("./artifacts"),
        description="Where `retina models build` wrote the artifacts and catalog.json. Relative "
        "by default so the quickstart (`retina models build && retina serve`) needs no "
        "configuration; containers set an absolute path.",
    )
    models: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Catalog models to serve; empty serves every model in the catalog, which "
        "is what one Retina per host wants. Split per model (e.g. a text-only Retina) when one "
        "model's traffic should not share cores with another's.",
    )

    # --- gRPC -----------------------------------------------------------------------------
    host: str = Field(
        default="127.0.0.1",
        description="Bind address. Loopback by default: Retina has no authentication of its "
        "own and fetches URLs on a caller's behalf, so exposing it is an explicit decision "
        "(0.0.0.0 in the container, behind the cluster network).",
    )
    port: int = Field(
        default=50052,
        ge=0,
        le=65535,
        description="gRPC port; 50051 is EmbArk's, so both run side by side in development.",
    )
    max_message_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="gRPC receive/send limit. Sized to the largest valid request: "
        "max_batch_items x max_text_chars x 4 bytes of UTF-8 is 4 MiB, doubled for URLs and "
        "framing; the largest response (256 x 1280 float32) is 1.3 MiB. gRPC's own default "
        "(4 MiB) would reject a valid full batch of long texts.",
    )
    tls: ServerTls = Field(
        default_factory=ServerTls,
        description="TLS for the gRPC port (RETINA_TLS__CERT_FILE, __KEY_FILE; __CLIENT_CA_FILE "
        "makes it mutual TLS, so only EmbArk and KFC holding a certificate from that CA may "
        "call). Off by default because the default bind address is loopback; set it whenever "
        "Retina listens on a network.",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Prometheus scrape port (batch sizes, embed and inference latency, items "
        "by outcome), served on `host`; 0 disables it, as for EmbArk and KFC, so two Retinas "
        "on one host never fight over a default port.",
    )
    shutdown_grace_s: float = Field(
        default=10.0,
        ge=0,
        description="On SIGTERM, in-flight calls get this long to finish before they are "
        "cancelled. It must stay below the Nomad job's kill_timeout (30s in deploy/nomad; "
        "Nomad's own default of 5s is too short) so Retina ends before the SIGKILL. 10s "
        "covers a call's image fetches (5s budget) plus a full batch's inference.",
    )

    # --- inference ------------------------------------------------------------------------
    intra_op_threads: int = Field(
        default=1,
        ge=1,
        description="onnxruntime (or OpenVINO) threads per inference. 1, with two inferences "
        "side by side (max_concurrent_inferences): text runs one item per session call, where "
        "a second thread inside the call is mostly synchronisation, and 1x2 served 1.7x the "
        "texts/s of 2x1 at 0.55x the CPU per text, for 0.9x the images/s of batches of 16 "
        "and 0.7 ms more for one lone text (bench/retina_threads.py). Image-heavy or "
        "latency-bound hosts may prefer 2x1, and so may a native model serving online callers "
        "(docs/models.md, bench/native_threads.py). More threads than cores "
        "only adds contention (onnxruntime's default, one per *host* core, oversubscribes in a "
        "container).",
    )
    max_concurrent_inferences: int = Field(
        default=2,
        ge=1,
        description="Batches inferred at once, each on intra_op_threads threads: 2 for the "
        "2 cores the target hosts give Retina (see intra_op_threads). Requests still overlap "
        "beyond it: fetching and preprocessing of the next batch run while these infer.",
    )
    preprocess_threads: int = Field(
        default=2,
        ge=1,
        description="Threads for tokenising and image decoding, one per core: Pillow and "
        "tokenizers release the GIL, so these run in parallel with each other and with "
        "inference.",
    )
    max_pending_calls: int = Field(
        default=64,
        ge=1,
        description="Embed calls in progress at once (fetching, waiting or inferring) before "
        "new ones are refused with RESOURCE_EXHAUSTED. Refusing rather than queueing without "
        "bound keeps latency predictable and lets callers (KFC) back off and retry.",
    )
    infer_chunk_items: int = Field(
        default=32,
        ge=1,
        description="The micro-batch size: most items handed to one onnxruntime run. Items of "
        "concurrent Embed calls are merged into batches of up to this many (a large call is "
        "split). Throughput on 2 cores stops growing by ~16-32 items, while activation memory "
        "grows linearly (256 padded texts of 256 tokens need ~1 GB of attention scores per "
        "layer).",
    )
    batch_max_wait_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="How long the first queued item waits for batch-mates from other calls "
        "before its batch runs anyway (0: never wait). 2 ms is below one int8 MiniLM run "
        "(~5 ms at 64 tokens), so an idle server adds at most that much latency, while "
        "concurrent read-through calls arriving together share a run. Under load no wait is "
        "needed: items queue while the inference slots are busy and leave as one batch.",
    )
    max_batch_items: int = Field(
        default=256,
        ge=1,
        description="Inputs per Embed call; more is INVALID_ARGUMENT. KFC sends batches of up "
        "to this many; beyond it one call holds the inference slot long enough to starve "
        "EmbArk's latency-sensitive read-through calls.",
    )
    max_text_chars: int = Field(
        default=4096,
        ge=1,
        description="Longer texts fail alone with `too_large`. The text model truncates at "
        "256 tokens (~1,000-1,500 characters), so 4,096 loses nothing the model would read "
        "while bounding the tokeniser's work per item.",
    )
    max_text_tokens: int = Field(
        default=256,
        gt=2,
        le=512,
        description="Token truncation of the text model: sentence-transformers' max_seq_length "
        "for all-MiniLM-L6-v2. Changing it changes embeddings, so keep it at the default.",
    )

    # --- image fetching -------------------------------------------------------------------
    max_image_pixels: int = Field(
        default=40_000_000,
        ge=1,
        description="Decoded-pixel cap checked against the image header before decoding: 40 MP "
        "covers any camera photo, while a decompression bomb (a tiny file claiming 1e9 "
        "pixels) fails alone with `too_many_pixels` instead of exhausting memory.",
    )
    fetch: FetchConfig = Field(
        default_factory=FetchConfig,
        description="Image fetching: size cap, time budget, redirects, concurrency and the "
        "private-address refusal (`RETINA_FETCH__ALLOW_PRIVATE=true` is for tests and local "
        "development only: Retina fetches client-supplied URLs, and following them into the "
        "internal network is server-side request forgery). retina.fetch documents each "
        "default.",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        # Environment variables are strings: "a,b" rather than JSON, as an operator writes it.
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value
