"""Bulk tools over a running EmbArk: fill the archive from a file of inputs (backfill), and
export vectors with their inputs as NPZ for training elsewhere (export).

Both go through the public gRPC API, batch by batch, so they work against any deployment; an
export of everything a model revision has stored reads the store directly (``scan``), which
needs a local SQLite archive path.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from embark.client import EmbarkClient, make_input
from embark.errors import InvalidInput
from embark.keys import InputKind


def read_inputs(path: Path) -> list[str]:
    """One input per line; blank lines are skipped, duplicates kept once (first wins)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None
    inputs = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not inputs:
        raise InvalidInput(f"{path}: no inputs")
    return inputs


def backfill(
    client: EmbarkClient,
    model: str,
    inputs: Sequence[str],
    *,
    kind: InputKind = "text",
    wait_ms: int = 0,
    batch: int = 256,
    progress: bool = True,
) -> Counter[str]:
    """Ask for every input once: plain calls queue the misses (PENDING), ``wait_ms`` computes
    them within the call (read-through). Returns how many answers had each status."""
    statuses: Counter[str] = Counter()
    with tqdm(
        total=len(inputs), desc=f"backfill {model}", unit="input", disable=not progress
    ) as bar:
        for start in range(0, len(inputs), batch):
            chunk = inputs[start : start + batch]
            items = [make_input(**{_field(kind): value}) for value in chunk]
            answers = client.get_many(model, items, wait_ms=wait_ms)
            statuses.update(a.status for a in answers)
            bar.update(len(chunk))
    return statuses


def export(
    client: EmbarkClient,
    model: str,
    inputs: Sequence[str],
    out: Path,
    *,
    kind: InputKind = "text",
    wait_ms: int = 0,
    batch: int = 256,
    progress: bool = True,
) -> Counter[str]:
    """Write ``out`` (NPZ): ``vectors`` (n x dim float32) and ``inputs`` of the inputs that are
    HIT (``wait_ms`` computes misses first), plus ``model`` and ``revision``."""
    statuses: Counter[str] = Counter()
    rows: list[np.ndarray] = []
    kept: list[str] = []
    revision, dim = "", 0
    with tqdm(total=len(inputs), desc=f"export {model}", unit="input", disable=not progress) as bar:
        for start in range(0, len(inputs), batch):
            chunk = inputs[start : start + batch]
            items = [make_input(**{_field(kind): value}) for value in chunk]
            for value, answer in zip(
                chunk, client.get_many(model, items, wait_ms=wait_ms), strict=True
            ):
                statuses[answer.status] += 1
                revision, dim = answer.revision, answer.dim
                if answer.hit:
                    rows.append(answer.array())
                    kept.append(value)
            bar.update(len(chunk))
    write_npz(out, model, revision, kept, rows, dim)
    return statuses


def export_all(store_path: Path, model: str, revision: str, dim: int, out: Path) -> int:
    """Every vector of ``model@revision`` in a local SQLite archive, to ``out``; returns the
    count. Reads the store directly (it is a file), so no server needs to run."""
    from embark import vectors
    from embark.store.sqlite import SqliteConfig, open_sqlite_store

    async def scan() -> list[tuple[str, bytes]]:
        store = await open_sqlite_store(SqliteConfig(path=store_path))
        try:
            return [(row.input, row.vector) for row in await store.scan(model, revision)]
        finally:
            await store.close()

    found = asyncio.run(scan())
    write_npz(
        out,
        model,
        revision,
        [text for text, _ in found],
        [vectors.from_bytes(blob, dim) for _, blob in found],
        dim,
    )
    return len(found)


def write_npz(
    out: Path,
    model: str,
    revision: str,
    inputs: Sequence[str],
    rows: Sequence[np.ndarray],
    dim: int,
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    matrix = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), dtype=np.float32)
    np.savez_compressed(
        out,
        allow_pickle=False,
        vectors=matrix,
        inputs=np.array(list(inputs), dtype=np.str_),
        model=np.array(model),
        revision=np.array(revision),
    )


def _field(kind: InputKind) -> str:
    return "text" if kind == "text" else "image_url"
