"""The client commands of `embark` against the real gRPC server on loopback (SQLite archive,
the fake encoder for read-through): EMBARK_TARGET, --version, --json on every command that
prints results, exit code 3 when answers are FAILED (or lines skipped), and backfill that
streams, skips and reports bad lines, and resumes from its state file; export --all."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from embark import vectors
from embark.catalog import Catalog, ModelSpec, model_entry
from embark.cli import main
from embark.clientargs import tls_from
from embark.metrics import EmbarkMetrics
from embark.queue.local import LocalBroker, LocalJobQueue
from embark.server.app import Running, start
from embark.service import EmbarkService, Limits
from embark.store.sqlite import SqliteConfig, SqliteStore, open_sqlite_store
from tests.fakes.encoding import FakeEncoding

TEXT = ModelSpec(
    name="minilm", kind="text", dim=4, revision="rev-1", oov=vectors.to_bytes([0.5] * 4, 4)
)


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "archive.sqlite3"))
    yield store
    await store.close()


@pytest.fixture
async def target(sqlite: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    service = EmbarkService(
        catalog=Catalog({TEXT.name: TEXT}),
        store=sqlite,
        queue=LocalJobQueue(LocalBroker(1000)),
        encoding=FakeEncoding(dim=TEXT.dim),
        limits=Limits(16, 40, 100, 0.5, 60.0, 1000),
        metrics=EmbarkMetrics(),
    )
    running: Running = await start(host="127.0.0.1", port=0, max_message_bytes=1 << 20)
    running.servicer.attach(service)
    address = f"127.0.0.1:{running.port}"
    monkeypatch.setenv("EMBARK_TARGET", address)  # no --target anywhere below
    yield address
    await running.server.stop(None)


async def embark(*argv: str) -> int:
    # The CLI is blocking; the server runs on this event loop.
    return await asyncio.to_thread(main, list(argv))


def last_json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("embark ")


async def test_get_exit_codes_and_json(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await embark("get", "--model", "minilm", "--text", "fresh", "--json") == 0
    doc = last_json(capsys)
    assert isinstance(doc, dict)
    assert doc["status"] == "PENDING"
    assert await embark("get", "--model", "minilm", "--text", "a FAIL", "--wait-ms", "2000") == 3
    assert "FAILED" in capsys.readouterr().out
    assert await embark("get", "--model", "nope", "--text", "x") == 2


async def test_backfill_skips_reports_and_resumes(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = ["first", "", "x" * 41, "second", "   ", "third", "fourth"]  # line 3 is too long
    data = tmp_path / "inputs.txt"
    data.write_text("\n".join(lines) + "\n")
    state = tmp_path / "state"
    argv = ["backfill", str(data), "--model", "minilm", "--batch", "2", "--no-progress"]
    assert await embark(*argv, "--state", str(state), "--json") == 3  # a line was skipped
    report = last_json(capsys)
    assert report == {
        "asked": 5,
        "statuses": {"PENDING": 4},
        "skipped": [{"line": 3, "error": "41 characters; at most 40"}],
        "resumed_after_line": 0,
    }
    assert state.read_text().strip() == "7"
    # Two more lines appended: a rerun asks only for them.
    data.write_text("\n".join([*lines, "fifth", "sixth"]) + "\n")
    assert await embark(*argv, "--state", str(state), "--json", "--wait-ms", "2000") == 0
    report = last_json(capsys)
    assert isinstance(report, dict)
    assert (report["asked"], report["resumed_after_line"]) == (2, 7)
    assert report["statuses"] == {"HIT": 2}


async def test_export_all_from_the_archive(
    target: str, tmp_path: Path, sqlite: SqliteStore, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "inputs.txt"
    data.write_text("alpha\nbeta\n")
    argv = ["backfill", str(data), "--model", "minilm", "--wait-ms", "2000", "--no-progress"]
    assert await embark(*argv) == 0
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"format": 1, "models": [model_entry(TEXT)]}))
    out = tmp_path / "all.npz"
    code = await embark(
        "export", "--all", "--sqlite", str(tmp_path / "archive.sqlite3"), "--model", "minilm",
        "--catalog", str(catalog), "--out", str(out), "--json",
    )  # fmt: skip
    assert code == 0
    assert last_json(capsys) == {
        "written": 2, "out": str(out), "model": "minilm", "revision": "rev-1", "store": "sqlite"
    }  # fmt: skip
    with np.load(out) as npz:
        assert sorted(npz["inputs"].tolist()) == ["alpha", "beta"]
        assert npz["vectors"].shape == (2, 4)


async def test_heads_list_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await embark("heads", "list", "--heads-dir", str(tmp_path), "--json") == 0
    assert last_json(capsys) == []


def test_tls_flags_build_the_client_tls(tmp_path: Path) -> None:
    from embark.cli import _parser

    plain = _parser().parse_args(["get", "--model", "m", "--text", "t"])
    assert tls_from(plain) is None
    ca = tmp_path / "ca.pem"
    args = _parser().parse_args(
        ["get", "--model", "m", "--text", "t", "--ca-file", str(ca), "--server-name", "embark"]
    )
    tls = tls_from(args)
    assert tls is not None
    assert (tls.ca_file, tls.server_name, tls.on) == (ca, "embark", True)
