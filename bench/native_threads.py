"""How Retina should spend two cores on the native backend: one inference at a time on two
threads (``RETINA_INTRA_OP_THREADS=2``, ``RETINA_MAX_CONCURRENT_INFERENCES=1``: "2x1") or two
side by side on one thread each ("1x2", Retina's default, chosen for onnxruntime, whose text
calls run one item each: bench/retina_threads.py). The native kernel batches, and its threads
split a batch's GEMMs, so the answer may differ.

MiniLM-L6 is built with ``backend = "native"`` as ``retina models build`` builds it (gated),
then served through ``RetinaService`` two ways: 32 concurrent one-text Embed calls (online
callers, which Retina merges into micro-batches), and Embed calls of 32 texts, two in flight
(KFC's encode batches at ``KFC_ENCODE_CONCURRENCY=2``). The settings take turns, alternating
every round. Needs an AMX CPU and a C compiler.

    .venv/bin/python -m bench.native_threads [--rounds 3]

Writes bench/results/native_threads.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stack import machine, table, write_result
from embark_api.v1 import inputs_pb2, retina_pb2
from retina.artifacts.definition import load_definitions
from retina.artifacts.text import PARITY_SENTENCES
from retina.artifacts.text_source import text_builder
from retina.encoders import text
from retina.service import RetinaService
from retina.settings import RetinaSettings

SETTINGS = ((2, 1), (1, 2))  # (threads, concurrent inferences)
# (name, texts a call, calls in flight)
LOADS = (("one-text calls, 32 in flight", 1, 32), ("calls of 32 texts, 2 in flight", 32, 2))
TEXTS = [f"{s} ({i})" for i, s in enumerate(PARITY_SENTENCES * 8)]


def build(out: Path) -> Path:
    entry = load_definitions()["minilm-l6"]
    definition = entry.definition.model_copy(update={"backend": "native"})
    native = entry.model_copy(update={"definition": definition, "name": "minilm-l6-native"})
    text_builder(native).build(out)
    return out


async def served(
    artifact: Path, threads: int, concurrent: int, passes: int, per_call: int, in_flight: int
) -> dict[str, Any]:
    """Texts a second and process CPU milliseconds a text, the median of ``passes`` passes, of
    ``in_flight`` callers sending ``per_call`` texts a call."""
    encoder = text.load(artifact, name="n", revision="bench", intra_op_threads=threads)
    settings = RetinaSettings(
        artifacts_dir=artifact, intra_op_threads=threads, max_concurrent_inferences=concurrent
    )
    service = RetinaService({"n": encoder}, settings)
    pending: list[str] = []

    async def caller() -> None:
        while pending:
            take = [pending.pop() for _ in range(min(per_call, len(pending)))]
            request = retina_pb2.EmbedRequest(
                model="n", inputs=[inputs_pb2.Input(text=t) for t in take]
            )
            await service.embed(request)

    async def one_pass() -> tuple[float, float]:
        pending.extend(TEXTS)
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(in_flight)))
        return len(TEXTS) / (time.perf_counter() - wall), (time.process_time() - cpu) / len(TEXTS)

    try:
        await one_pass()  # warm-up
        runs = [await one_pass() for _ in range(passes)]
    finally:
        await service.close()
    return {
        "texts_per_s": statistics.median(r[0] for r in runs),
        "cpu_ms_per_text": 1000 * statistics.median(r[1] for r in runs),
    }


def _ratio(pairs: list[tuple[dict[str, Any], dict[str, Any]]], field: str) -> float:
    """Median of the first sides' ``field`` over the median of the second sides'."""
    return statistics.median(a[field] for a, _ in pairs) / statistics.median(
        b[field] for _, b in pairs
    )


def report(r: dict[str, Any]) -> str:
    rows = [
        [x["load"], x["setting"], x["round"], f"{x['texts_per_s']:.0f}",
         f"{x['cpu_ms_per_text']:.2f}"]
        for x in r["rows"]
    ]  # fmt: skip
    out = [table(["load", "threads x concurrent", "round", "texts/s", "CPU ms a text"], rows), ""]
    by = {(x["load"], x["setting"], x["round"]): x for x in r["rows"]}
    for load in dict.fromkeys(x["load"] for x in r["rows"]):
        rounds = sorted({x["round"] for x in r["rows"] if x["load"] == load})
        pairs = [(by[load, "2x1", n], by[load, "1x2", n]) for n in rounds]
        ahead = sum(a["texts_per_s"] > b["texts_per_s"] for a, b in pairs)
        out.append(
            f"{load}: 2x1 against 1x2 (medians) texts/s x{_ratio(pairs, 'texts_per_s'):.2f}, "
            f"CPU a text x{_ratio(pairs, 'cpu_ms_per_text'):.2f}; "
            f"2x1 served more in {ahead} of {len(rounds)} rounds."
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=3, help="passes a setting a round")
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "rows": []}
    with tempfile.TemporaryDirectory(prefix="native-threads-") as tmp:
        artifact = build(Path(tmp) / "artifact")
        for r in range(args.rounds):
            order = SETTINGS if r % 2 == 0 else SETTINGS[::-1]
            for load, per_call, in_flight in LOADS:
                for threads, concurrent in order:
                    row = asyncio.run(
                        served(artifact, threads, concurrent, args.passes, per_call, in_flight)
                    )
                    setting = {"threads": threads, "concurrent": concurrent, "round": r + 1}
                    row |= setting | {"load": load, "setting": f"{threads}x{concurrent}"}
                    result["rows"].append(row)
                    print(row, flush=True)
    print(report(result))
    print(f"\nwrote {write_result('native_threads', result)}")


if __name__ == "__main__":
    main()
