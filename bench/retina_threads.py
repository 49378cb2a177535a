"""How Retina should spend its cores: threads inside one inference (``RETINA_INTRA_OP_THREADS``)
or inferences side by side (``RETINA_MAX_CONCURRENT_INFERENCES``), in one run.

For each setting ("threads x concurrent", default 2x1 and 1x2: two cores either way) a Retina
serving the text model answers, in turns that alternate every round:

- one text at a time (``--single`` calls): the latency a lone caller sees;
- ``--jobs`` texts in Embed calls of 32 (KFC's encode batch) with ``--in-flight`` calls at once:
  texts/s, and Retina's CPU milliseconds per text;
- image inference alone (``--image-batches`` batches of 16 preprocessed photos, as many at
  once as the setting's concurrent inferences, in this process while Retina idles): images/s
  and CPU milliseconds per image.

    .venv/bin/python -m bench.retina_threads [--rounds 2] [--settings 2x1 1x2]

Writes bench/results/retina_threads.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.hostile import coffee_png
from bench.kfc_retina import retina_alone
from bench.pipeline import retina_single
from bench.stack import ARTIFACTS, IMAGE_MODEL, TEXT_MODEL, machine, stack, table, write_result

IMAGE_BATCH = 16


def image_inference(threads: int, concurrent: int, batches: int) -> dict[str, Any]:
    """Images a second through the image encoder alone (preprocessed photos, no fetch: the
    loopback host would be the bottleneck): ``batches`` batches of 16, ``concurrent`` at once,
    each on a session of ``threads`` intra-op threads."""
    from retina.artifacts.build import load_encoders
    from retina.settings import RetinaSettings

    settings = RetinaSettings(
        artifacts_dir=ARTIFACTS, models=(IMAGE_MODEL,), intra_op_threads=threads
    )
    encoder = load_encoders(ARTIFACTS, settings)[IMAGE_MODEL]
    photo = coffee_png()
    batch = [encoder.preprocess(photo) for _ in range(IMAGE_BATCH)]
    encoder.infer(batch)  # warm-up
    before = time.process_time()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrent) as pool:
        list(pool.map(lambda _: encoder.infer(batch), range(batches)))
    seconds = time.perf_counter() - started
    images = batches * IMAGE_BATCH
    return {
        "images_per_s": images / seconds,
        "cpu_ms_per_image": 1000 * (time.process_time() - before) / images,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=["2x1", "1x2"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1500)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--single", type=int, default=200)
    parser.add_argument("--image-batches", type=int, default=40)
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "runs": []}
    with stack("retina_threads") as s:
        for n in range(args.rounds):
            for setting in args.settings if n % 2 == 0 else args.settings[::-1]:
                threads, concurrent = setting.split("x")
                retina = s.start_retina(
                    (TEXT_MODEL,),
                    RETINA_INTRA_OP_THREADS=threads,
                    RETINA_MAX_CONCURRENT_INFERENCES=concurrent,
                )
                target = f"127.0.0.1:{s.retina_port}"
                try:
                    print(f"round {n + 1}: {setting}", flush=True)
                    retina_alone(target, args.jobs // 4, args.in_flight, retina.pid)  # warm-up
                    single = asyncio.run(retina_single(target, args.single))
                    burst = retina_alone(target, args.jobs, args.in_flight, retina.pid)
                    images = image_inference(int(threads), int(concurrent), args.image_batches)
                finally:
                    retina.stop()
                    s.procs.remove(retina)
                result["runs"].append(
                    {
                        "setting": setting,
                        "round": n + 1,
                        "single": single,
                        "burst": burst,
                        "images": images,
                    }
                )
    result["summary"] = {
        setting: {
            "single_p50_ms": statistics.median(
                r["single"]["p50_ms"] for r in result["runs"] if r["setting"] == setting
            ),
            "texts_per_s": statistics.median(
                r["burst"]["texts_per_s"] for r in result["runs"] if r["setting"] == setting
            ),
            "images_per_s": statistics.median(
                r["images"]["images_per_s"] for r in result["runs"] if r["setting"] == setting
            ),
        }
        for setting in args.settings
    }
    print(report(result))
    print(f"\nwrote {write_result('retina_threads', result)}")


def report(r: dict[str, Any]) -> str:
    return table(
        ["threads x concurrent inferences", "round", "one text p50 ms", "p99 ms",
         "texts/s (calls of 32)", "Retina CPU ms a text", "images/s (batches of 16)",
         "CPU ms an image"],
        [
            [x["setting"], x["round"], x["single"]["p50_ms"], x["single"]["p99_ms"],
             x["burst"]["texts_per_s"], x["burst"]["cpu_ms_per_text"]["retina"],
             x["images"]["images_per_s"], x["images"]["cpu_ms_per_image"]]
            for x in r["runs"]
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
