"""Fixtures for tests/docker: the images are built once per session through
deploy/images/build.sh on a locally made Debian base (tests never pull from Docker Hub), and
every test here skips with the reason when no Docker engine answers (.ci/run starts one).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.docker import engine


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    reason = engine.engine_missing()
    if reason is not None:
        pytest.skip(reason)
    yield
    engine.write_figures()


@pytest.fixture(scope="session")
def embark_image(docker_engine: None) -> engine.Built:
    """The EmbArk image from ./Dockerfile on embark-local/python:3.11 (cache reused)."""
    seconds = engine.build("embark")
    engine.record("image_build_s", seconds)
    engine.record("image_mb", engine.image_bytes(engine.EMBARK_IMAGE) / 1e6)
    return engine.Built(engine.EMBARK_IMAGE, seconds)


@pytest.fixture(scope="session")
def server_images(docker_engine: None) -> float:
    """Cassandra and Kafka from devstack's Maven Central jars on embark-local/jre:17."""
    seconds = engine.build("cassandra", "kafka")
    engine.record("server_images_build_s", seconds)
    return seconds


@pytest.fixture(scope="session")
def compose_cli(docker_engine: None) -> list[str]:
    cli = engine.compose_cli()
    if cli is None:
        pytest.skip("no compose tool (`docker compose` or docker-compose; .ci/run installs it)")
    return cli
