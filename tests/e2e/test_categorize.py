"""Categorize end to end, as a user runs it: `embark dev` on a fresh embedded archive, a head
trained with `embark heads train` on a CN2023 subset THROUGH that EmbArk (read-through fills
the archive), then `embark dev` restarted on the same archive and heads directory serves it:
HIT with sensible top-k, unknown head NOT_FOUND, a head of another revision refused
(FAILED_PRECONDITION), an unseen input PENDING without wait_ms, empty input INVALID_ARGUMENT.

The CN2023 wheel is downloaded once (pip) into the user cache, outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from embark.cli import main
from embark.client import EmbarkClient
from embark.errors import EmbarkError
from embark.heads.dataset import load_examples, select

pytestmark = pytest.mark.e2e

LABELS = "01,03,22,64,85"  # animals, fish, beverages, footwear, electrical machinery


@contextmanager
def embark_dev(artifacts: Path, data_dir: Path, heads_dir: Path) -> Iterator[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "embark",
            "dev",
            "--port",
            "0",
            "--artifacts",
            str(artifacts),
            "--data-dir",
            str(data_dir),
            "--heads-dir",
            str(heads_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("embark dev listening on"):
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"embark dev did not start: {line!r}\n{err[-3000:]}")
        yield line.split()[-1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_train_then_categorize(
    built_artifacts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir, heads_dir = tmp_path / "data", tmp_path / "heads"
    subset = select(load_examples("cn2023"), labels=LABELS, limit=200)
    seen = next(e for e in subset if e.label == "01")  # trained on, so in the archive
    with embark_dev(built_artifacts, data_dir, heads_dir) as target:
        code = main(
            ["heads", "train", "--data", "cn2023", "--labels", LABELS, "--limit", "200",
             "--no-augment", "--model", "minilm-l6", "--name", "cn", "--target", target,
             "--heads-dir", str(heads_dir), "--no-progress"]
        )  # fmt: skip
        assert code == 0, capsys.readouterr().err
        assert "head cn v1: 5 labels" in capsys.readouterr().out
    meta = json.loads((heads_dir / "cn" / "1.json").read_text())
    catalog = json.loads((built_artifacts / "catalog.json").read_text())
    [minilm] = [m for m in catalog["models"] if m["name"] == "minilm-l6"]
    assert meta["revision"] == minilm["revision"]
    # A head of another revision of the same model: refused at load and at call time.
    stale = heads_dir / "stale"
    stale.mkdir()
    shutil.copy(heads_dir / "cn" / "1.npz", stale / "1.npz")
    (stale / "1.json").write_text(json.dumps({**meta, "name": "stale", "revision": "r-old"}))

    with embark_dev(built_artifacts, data_dir, heads_dir) as target:
        with EmbarkClient(target, timeout_s=30) as client:
            # Trained through EmbArk, so the archive has it: a HIT without waiting.
            result = client.categorize("cn", text=seen.text, top_k=3)
            assert result.status == "HIT", result
            assert result.revision == minilm["revision"]
            assert len(result.categories) == 3
            probabilities = [p for _, p in result.categories]
            assert probabilities == sorted(probabilities, reverse=True)
            assert 0.0 < sum(probabilities) <= 1.0 + 1e-5
            assert result.categories[0][0] == seen.label

            unseen = client.categorize("cn", text="waterproof hiking boots for men, size 44")
            assert (unseen.status, unseen.categories) == ("PENDING", [])
            shoes = client.categorize(
                "cn", text="leather sneakers with rubber soles", wait_ms=20_000
            )
            assert shoes.status == "HIT"
            assert shoes.categories[0][0] == "64", shoes
            assert shoes.section is not None, shoes
            assert shoes.section[0] == "XII", shoes
            # BatchCategorize: one call, answers in order, as one call each answers
            batch = client.categorize_many("cn", [seen.text, "leather sneakers with rubber soles"])
            assert [r.status for r in batch] == ["HIT", "HIT"]
            for one, text in zip(
                batch, [seen.text, "leather sneakers with rubber soles"], strict=True
            ):
                alone = client.categorize("cn", text=text).categories
                assert [c for c, _ in one.categories] == [c for c, _ in alone]
                # the batch's mat-muls (regression and prototypes, float32) may round
                # differently from one row's, in the last bits of the logits
                assert [p for _, p in one.categories] == pytest.approx(
                    [p for _, p in alone], rel=1e-5, abs=1e-7
                )
            # Abstain: above the best probability -> UNCERTAIN with the same candidates
            best = shoes.categories[0][1]
            if best < 0.999:
                unsure = client.categorize(
                    "cn", text="leather sneakers with rubber soles", min_probability=best + 0.001
                )
                assert unsure.status == "UNCERTAIN", unsure
                assert [c for c, _ in unsure.categories] == [c for c, _ in shoes.categories]

            for head, text, code in (
                ("nope", "horses", grpc.StatusCode.NOT_FOUND),
                ("stale", "horses", grpc.StatusCode.FAILED_PRECONDITION),
                ("cn", "   ", grpc.StatusCode.INVALID_ARGUMENT),
                ("cn", "x" * 100_000, grpc.StatusCode.INVALID_ARGUMENT),
            ):
                with pytest.raises(EmbarkError) as raised:
                    client.categorize(head, text=text)
                assert raised.value.code == code, raised.value.message
            with pytest.raises(EmbarkError, match="r-old"):
                client.categorize("stale", text="horses")

        assert main(["categorize", "--head", "cn", "--text", "Live asses", "--target", target,
                     "--wait-ms", "20000", "--json"]) == 0  # fmt: skip
        answer = json.loads(capsys.readouterr().out)
        assert answer["status"] == "HIT"
        assert answer["categories"][0]["label"] == "01"
