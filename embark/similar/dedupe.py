"""`embark dedupe`: group a file of inputs into duplicate clusters, the way a catalogue team
cleans a product feed.

Every line is embedded through a running EmbArk (the cache: what is stored is a HIT, the rest is
read through within ``wait_ms`` and asked again until ``timeout_s``), then the lines are
clustered: two lines are duplicates when the cosine of their vectors is at least the threshold,
and clusters are the connected components of that relation (single linkage, union-find). The
pairwise cosines are computed exactly, block by block (n^2 x dim multiply-adds: ~1 minute for
50k lines on two cores); a file is a feed, not the archive (FindSimilar searches the archive).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from embark.client import EmbarkClient, EmbeddingResult, make_input
from embark.errors import InvalidInput
from embark.keys import InputKind
from embark.similar.base import F32, unit_rows

_BLOCK = 1024


@dataclass(frozen=True, slots=True)
class Line:
    number: int  # 1-based, as an editor shows it
    input: str


@dataclass(frozen=True, slots=True)
class Member:
    line: Line
    key: str
    score: float  # cosine with the cluster's first line


@dataclass(frozen=True, slots=True)
class Report:
    model: str
    revision: str
    threshold: float
    clusters: list[list[Member]]  # duplicates only (two lines or more), largest first
    unembedded: list[tuple[Line, str, str]]  # line, status, reason
    lines: int


def read_lines(path: Path) -> list[Line]:
    """Every non-blank line with its number (repeated lines are kept: they are duplicates)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None
    lines = [Line(n, s.strip()) for n, s in enumerate(text.splitlines(), 1) if s.strip()]
    if not lines:
        raise InvalidInput(f"{path}: no inputs")
    return lines


def embed_lines(
    client: EmbarkClient,
    model: str,
    lines: Sequence[Line],
    *,
    kind: InputKind,
    wait_ms: int,
    timeout_s: float,
    batch: int = 256,
    progress: bool = True,
) -> list[EmbeddingResult]:
    """One answer per line: HIT where the vector was found or computed in time; the last
    answer otherwise (PENDING past ``timeout_s``, FAILED...)."""
    field = "text" if kind == "text" else "image_url"
    answers: list[EmbeddingResult | None] = [None] * len(lines)
    todo = list(range(len(lines)))
    deadline = time.monotonic() + timeout_s
    with tqdm(total=len(lines), desc=f"embed {model}", unit="line", disable=not progress) as bar:
        while todo:
            waiting: list[int] = []
            for start in range(0, len(todo), batch):
                chunk = todo[start : start + batch]
                items = [make_input(**{field: lines[i].input}) for i in chunk]
                for i, answer in zip(
                    chunk, client.get_many(model, items, wait_ms=wait_ms), strict=True
                ):
                    answers[i] = answer
                    if answer.status in ("PENDING", "UNAVAILABLE", "DROPPED"):
                        waiting.append(i)
                    else:
                        bar.update(1)
            if not waiting or time.monotonic() >= deadline:
                break
            todo = waiting
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    return [a for a in answers if a is not None]


def clusters_of(units: F32, threshold: float, *, progress: bool = True) -> list[list[int]]:
    """Connected components (of two rows or more) of "cosine >= threshold" over unit rows,
    each sorted by row, largest first."""
    n = len(units)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    with tqdm(total=n, desc="compare", unit="line", disable=not progress) as bar:
        for start in range(0, n, _BLOCK):
            block = units[start : start + _BLOCK] @ units[start:].T
            rows, cols = np.nonzero(block >= threshold)
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
                i, j = start + r, start + c
                if j > i:
                    a, b = root(i), root(j)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
            bar.update(min(_BLOCK, n - start))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    found = [g for g in groups.values() if len(g) > 1]
    return sorted(found, key=lambda g: (-len(g), g[0]))


def dedupe(
    client: EmbarkClient,
    model: str,
    lines: Sequence[Line],
    threshold: float,
    *,
    kind: InputKind = "text",
    wait_ms: int = 10_000,
    timeout_s: float = 120.0,
    progress: bool = True,
) -> Report:
    if not -1 <= threshold <= 1:
        raise InvalidInput(f"threshold {threshold}: a cosine, between -1 and 1")
    answers = embed_lines(
        client, model, lines, kind=kind, wait_ms=wait_ms, timeout_s=timeout_s, progress=progress
    )
    hits = [i for i, a in enumerate(answers) if a.hit]
    unembedded = [(lines[i], a.status, a.reason) for i, a in enumerate(answers) if not a.hit]
    dim = answers[0].dim
    units = unit_rows(
        np.stack([answers[i].array() for i in hits])
        if hits
        else np.zeros((0, dim), dtype=np.float32)
    )
    clusters = [
        [
            Member(lines[hits[r]], answers[hits[r]].key, float(units[group[0]] @ units[r]))
            for r in group
        ]
        for group in clusters_of(units, threshold, progress=progress)
    ]
    return Report(
        model=model,
        revision=answers[0].revision,
        threshold=threshold,
        clusters=clusters,
        unembedded=unembedded,
        lines=len(lines),
    )


def to_csv(report: Report) -> str:
    """One row per line of a duplicate cluster: cluster, line, score (cosine with the cluster's
    first line), key, input."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["cluster", "line", "score", "key", "input"])
    for number, members in enumerate(report.clusters, 1):
        for m in members:
            writer.writerow([number, m.line.number, f"{m.score:.4f}", m.key, m.line.input])
    return out.getvalue()


def to_json(report: Report) -> str:
    return json.dumps(
        {
            "model": report.model,
            "revision": report.revision,
            "threshold": report.threshold,
            "lines": report.lines,
            "clusters": [
                [
                    {
                        "line": m.line.number,
                        "input": m.line.input,
                        "key": m.key,
                        "score": round(m.score, 6),
                    }
                    for m in members
                ]
                for members in report.clusters
            ],
            "unembedded": [
                {"line": line.number, "input": line.input, "status": status, "reason": reason}
                for line, status, reason in report.unembedded
            ],
        },
        indent=1,
        ensure_ascii=False,
    )
