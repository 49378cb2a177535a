"""Embeddings for training and evaluation, fetched THROUGH EmbArk: batched read-through calls,
so every text a head is trained on lands in the archive (the transfer-learning use), and a
second training run on the same data is all hits.

Misses that the deadline did not cover come back PENDING; they are asked again (KFC or the next
read-through computes them) for a bounded number of rounds. FAILED inputs are dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from embark.client import EmbarkClient, make_input
from embark.errors import EmbarkError

log = logging.getLogger(__name__)


class EmbeddingFetchError(EmbarkError):
    """Some inputs never became HIT within the allowed rounds."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """Vectors (rows in input order; zero rows where ``ok`` is False), with model and revision."""

    vectors: npt.NDArray[np.float32]
    ok: npt.NDArray[np.bool_]
    model: str
    revision: str
    statuses: dict[str, int]  # first-answer statuses: how much of the set the archive had


def fetch_embeddings(
    client: EmbarkClient,
    model: str,
    texts: Sequence[str],
    *,
    batch: int = 64,
    wait_ms: int = 30_000,
    rounds: int = 5,
    progress: bool = True,
    desc: str = "embeddings",
) -> Fetched:
    """Embed ``texts`` with ``model`` through EmbArk. Duplicates are asked once."""
    unique = list(dict.fromkeys(texts))
    index = {t: i for i, t in enumerate(unique)}
    dim = 0
    revision = ""
    rows: dict[int, npt.NDArray[np.float32]] = {}
    failed: set[int] = set()
    statuses: dict[str, int] = {}
    todo = list(range(len(unique)))
    with tqdm(total=len(unique), desc=desc, unit="text", disable=not progress) as bar:
        for attempt in range(rounds):
            again: list[int] = []
            for start in range(0, len(todo), batch):
                chunk = todo[start : start + batch]
                answers = client.get_many(
                    model, [make_input(text=unique[i]) for i in chunk], wait_ms=wait_ms
                )
                for i, answer in zip(chunk, answers, strict=True):
                    if attempt == 0:
                        statuses[answer.status] = statuses.get(answer.status, 0) + 1
                    if revision and answer.revision != revision:
                        raise EmbeddingFetchError(
                            f"model {model} changed revision during the fetch "
                            f"({revision} -> {answer.revision}); start again"
                        )
                    revision, dim = answer.revision, answer.dim
                    if answer.hit:
                        rows[i] = answer.array()
                        bar.update(1)
                    elif answer.status == "FAILED":
                        log.warning("dropping %r: %s", unique[i][:60], answer.reason)
                        failed.add(i)
                        bar.update(1)
                    else:
                        again.append(i)
            todo = again
            if not todo:
                break
            time.sleep(min(2.0 * (attempt + 1), 5.0))
    if todo:
        raise EmbeddingFetchError(
            f"{len(todo)} of {len(unique)} inputs were not embedded after {rounds} rounds "
            f"(first: {unique[todo[0]][:60]!r}); is read-through (Retina) reachable?"
        )
    table = np.zeros((len(unique), dim), dtype=np.float32)
    for i, row in rows.items():
        table[i] = row
    have = np.array([i in rows for i in range(len(unique))], dtype=bool)
    order = np.array([index[t] for t in texts], dtype=np.int64)
    return Fetched(table[order], have[order], model, revision, statuses)
