"""Bulk tools over a running EmbArk: fill the archive from a file of inputs (backfill), and
export vectors with their inputs as NPZ for training elsewhere (export).

Both go through the public gRPC API, batch by batch, so they work against any deployment;
backfill streams its file, skips (and reports) lines the server refuses, and can resume. An
export of everything a model revision has stored reads the archive directly (``scan``):
Cassandra or a SQLite file, as the EMBARK_STORE__* settings name it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from embark.client import EmbarkClient, make_input
from embark.errors import InvalidInput
from embark.keys import InputKind
from embark.settings import StoreSettings


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


@dataclass
class BackfillReport:
    """What a backfill did: answers by status, the lines refused (line number, why), and the
    line a resumed run started after."""

    statuses: Counter[str] = field(default_factory=Counter)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    resumed_after: int = 0
    asked: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "asked": self.asked,
            "statuses": dict(self.statuses),
            "skipped": [{"line": line, "error": message} for line, message in self.skipped],
            "resumed_after_line": self.resumed_after,
        }


def numbered_lines(path: Path, after: int = 0) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of each non-blank line past line ``after``, read lazily:
    a file of any size streams through in constant memory."""
    try:
        with path.open(encoding="utf-8", errors="strict") as lines:
            for number, line in enumerate(lines, start=1):
                if number > after and line.strip():
                    yield number, line.strip()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path} is not UTF-8 text: {exc}") from None


def backfill(
    client: EmbarkClient,
    model: str,
    path: Path,
    *,
    kind: InputKind = "text",
    wait_ms: int = 0,
    batch: int = 256,
    state: Path | None = None,
    progress: bool = True,
) -> BackfillReport:
    """Ask for every line of ``path`` once, ``batch`` lines a call: plain calls queue the
    misses (PENDING), ``wait_ms`` computes them within the call (read-through). A line the
    server refuses (empty after normalisation, too long, a bad URL) is skipped and reported,
    never fatal: its batch is asked again item by item. With ``state``, the last line done is
    written there after each batch, and a rerun resumes after it."""
    report = BackfillReport(resumed_after=_read_state(state))
    lines = numbered_lines(path, report.resumed_after)
    with tqdm(desc=f"backfill {model}", unit="input", disable=not progress) as bar:
        while chunk := list(itertools.islice(lines, batch)):
            items = [make_input(**{_field(kind): value}) for _, value in chunk]
            try:
                answers = client.get_many(model, items, wait_ms=wait_ms)
            except InvalidInput:
                answers = []
                for (number, _), item in zip(chunk, items, strict=True):
                    try:
                        answers.extend(client.get_many(model, [item], wait_ms=wait_ms))
                    except InvalidInput as exc:
                        # The line number says which input; the status name adds nothing.
                        why = exc.message.removeprefix("INVALID_ARGUMENT: ")
                        report.skipped.append((number, why.removeprefix("input 0: ")))
            report.statuses.update(a.status for a in answers)
            report.asked += len(chunk)
            _write_state(state, chunk[-1][0])
            bar.update(len(chunk))
    if report.asked == 0 and not report.resumed_after:
        raise InvalidInput(f"{path}: no inputs")
    return report


def _read_state(state: Path | None) -> int:
    if state is None or not state.exists():
        return 0
    try:
        return int(state.read_text().strip() or 0)
    except ValueError:
        raise InvalidInput(f"{state}: not a backfill state file (expected a line number)") from None


def _write_state(state: Path | None, line: int) -> None:
    if state is not None:
        # Written whole then renamed: a crash never leaves half a number behind.
        partial = state.with_suffix(state.suffix + ".tmp")
        partial.write_text(f"{line}\n")
        partial.replace(state)


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


def export_all(store: StoreSettings, model: str, revision: str, dim: int, out: Path) -> int:
    """Every vector of ``model@revision`` in the archive ``store`` names (Cassandra or a SQLite
    file), to ``out``; returns the count. Reads the store directly: no EmbArk needs to run."""
    from embark import vectors
    from embark.backends import open_store

    async def scan() -> list[tuple[str, bytes]]:
        opened = await open_store(store)
        try:
            return [(row.input, row.vector) for row in await opened.scan(model, revision)]
        finally:
            await opened.close()

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
