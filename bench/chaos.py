"""Benchmark: the delivery path under poison. The same burst of misses through the real stack
(`embark serve` -> Kafka -> `kfc run` -> `retina serve` -> Cassandra), once clean and once with
about 2% poison mixed in, in one run; the ratio of the good jobs' throughput is the figure.

The poison is what a real deployment meets: image hosts that answer 503 forever, reset the
connection, tarpit, or serve corrupt files (``bench.hostile``), asked through EmbArk like any
miss; and messages produced straight to the jobs topic that KFC must not trust: an input of the
wrong kind for its model, bytes that are no EmbedJob, a key that does not match its input.

    make bench-chaos              # or: .venv/bin/python -m bench.chaos [--jobs 10000]

Prints the table; writes bench/results/chaos.json. ``tests/integration/test_chaos.py`` runs the
same workload once (with poison) and asserts the outcome of every job, not the timings.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, Producer

from bench.hostile import hostile_host
from bench.inputs import titles
from bench.stack import Stack, machine, percentiles, stack, table, write_result
from embark.catalog import Catalog
from embark.client import EmbarkClient, make_input
from embark.keys import canonical_input, derive_key
from embark_api.v1 import inputs_pb2, jobs_pb2

TEXT = "minilm-l3"
IMAGE = "efficientnet-lite0"
BATCH = 1_000  # inputs per BatchGetEmbeddings call
POLL_S = 1.0
# What each poisoned URL must end as (the start of its FAILED reason).
EXPECTED_IMAGE_REASONS = {
    "503": "http_503 after",
    "reset": "connection_failed after",
    "tarpit": "timeout",
    "corrupt": "not_an_image",
}
EXPECTED_LETTERS = ("wrong_kind", "malformed", "key_mismatch")


@dataclass
class Workload:
    texts: list[str]
    good_images: list[str]
    bad_images: dict[str, str]  # url -> expected reason prefix
    produced: list[tuple[bytes, bytes, str]]  # (kafka key, value, expected dead-letter reason)

    @property
    def poison(self) -> int:
        return len(self.bad_images) + len(self.produced)

    @property
    def good(self) -> int:
        return len(self.texts) + len(self.good_images)


@dataclass
class Outcome:
    good_total: int
    good_stored: int = 0
    good_seconds: float = 0.0
    poison_total: int = 0
    failed_as_expected: int = 0
    failed_otherwise: dict[str, str] = field(default_factory=dict)
    # Good inputs that ended FAILED, with the reason: a good image whose fetch from the
    # (starved) hostile host outlasted Retina's fetch timeout.
    good_failed: dict[str, str] = field(default_factory=dict)
    time_to_failed_s: list[float] = field(default_factory=list)
    letters: Counter[str] = field(default_factory=Counter)
    exited: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "good_total": self.good_total,
            "good_stored": self.good_stored,
            "good_seconds": round(self.good_seconds, 2),
            "good_per_s": round(self.good_stored / self.good_seconds, 1)
            if self.good_seconds
            else None,
            "good_failed": self.good_failed,
            "poison_total": self.poison_total,
            "poison_failed_as_expected": self.failed_as_expected,
            "poison_failed_otherwise": self.failed_otherwise,
            "time_to_failed": percentiles(self.time_to_failed_s) if self.time_to_failed_s else None,
            "dead_letters": dict(self.letters),
            "exited": self.exited,
        }


def build(base: str, catalog: Catalog, *, jobs: int, poison_share: float, tag: str) -> Workload:
    """``jobs`` misses of which ``poison_share`` are poison (half bad URLs, half bad messages)."""
    rnd = random.Random(tag)
    poison = round(jobs * poison_share)
    per_kind_url = poison // 2 // len(EXPECTED_IMAGE_REASONS)
    bad_images = {
        f"{base}/{kind}/{tag}-{i}.png": reason
        for kind, reason in EXPECTED_IMAGE_REASONS.items()
        for i in range(per_kind_url)
    }
    produced = _bad_messages(catalog, base, poison - len(bad_images), tag)
    good_images = [f"{base}/good/{tag}-{i}.png" for i in range(min(100, jobs // 100))]
    texts = titles(jobs - poison - len(good_images), prefix=f"chaos {tag}")
    rnd.shuffle(texts)
    return Workload(texts, good_images, bad_images, produced)


def _bad_messages(catalog: Catalog, base: str, n: int, tag: str) -> list[tuple[bytes, bytes, str]]:
    text = catalog.require(TEXT)
    out: list[tuple[bytes, bytes, str]] = []
    for i in range(n):
        match i % 3:
            case 0:  # an image URL sent to a text model, with the key that would go with it
                url = canonical_input("image", f"{base}/good/{tag}-kind-{i}.png")
                key = derive_key(text.name, text.revision, "image", url).digest
                job = jobs_pb2.EmbedJob(
                    key=key,
                    model=text.name,
                    revision=text.revision,
                    input=inputs_pb2.Input(image_url=url),
                )
                out.append((key.encode(), job.SerializeToString(), "wrong_kind"))
            case 1:  # not an EmbedJob at all
                out.append((f"junk-{i}".encode(), b"\xff\xfe not protobuf " * 3, "malformed"))
            case _:  # a key that belongs to another input
                other = derive_key(text.name, text.revision, "text", f"chaos {tag} other {i}")
                job = jobs_pb2.EmbedJob(
                    key=other.digest,
                    model=text.name,
                    revision=text.revision,
                    input=inputs_pb2.Input(text=f"chaos {tag} forged {i}"),
                )
                out.append((other.digest.encode(), job.SerializeToString(), "key_mismatch"))
    return out


def start(s: Stack) -> None:
    """The three services, Retina allowed to fetch from loopback (the hostile host is there)."""
    s.start_retina((TEXT, IMAGE), RETINA_FETCH__ALLOW_PRIVATE="true")
    s.start_embark()
    s.start_kfc()


def run(s: Stack, work: Workload, *, deadline_s: float) -> Outcome:
    """Send the workload, then watch until every good job is stored (or has failed) and every
    bad URL has failed (or ``deadline_s`` passes); read the dead letters; note any process that
    exited."""
    embark = next(p for p in s.procs if p.name == "embark")
    outcome = Outcome(good_total=work.good, poison_total=work.poison)
    with EmbarkClient(f"127.0.0.1:{embark.health_port}", timeout_s=30) as client:
        started = time.monotonic()
        _produce(s, work.produced)
        pending_good = {**dict.fromkeys(work.texts, TEXT), **dict.fromkeys(work.good_images, IMAGE)}
        pending_bad = dict(work.bad_images)
        submitted: dict[str, float] = {}
        for model, chunk in _interleaved(work):
            _ask(client, model, chunk)
            submitted.update(dict.fromkeys(chunk, time.monotonic() - started))
        while (pending_good or pending_bad) and time.monotonic() - started < deadline_s:
            time.sleep(POLL_S)
            now = time.monotonic() - started
            for raw, result in _ask_all(client, pending_good):
                if result.status == "HIT":
                    del pending_good[raw]
                    outcome.good_stored += 1
                    outcome.good_seconds = now
                elif result.status == "FAILED":  # final for its failure TTL: stop waiting
                    del pending_good[raw]
                    outcome.good_failed[raw] = result.reason
            for raw, result in _ask_all(client, dict.fromkeys(pending_bad, IMAGE)):
                if result.status != "FAILED":
                    continue
                expected = pending_bad.pop(raw)
                outcome.time_to_failed_s.append(now - submitted[raw])
                if result.reason.startswith(expected):
                    outcome.failed_as_expected += 1
                else:
                    outcome.failed_otherwise[raw] = result.reason
    outcome.letters = _read_letters(s, expected=work.poison)
    outcome.exited = [p.name for p in s.procs if p.proc is not None and p.proc.poll() is not None]
    return outcome


def _interleaved(work: Workload) -> list[tuple[str, list[str]]]:
    """The misses as a caller would send them: text batches with the images spread among
    them, so poison sits throughout the stream rather than at its end."""
    images = [*work.good_images, *work.bad_images]
    random.Random(0).shuffle(images)
    rounds = max(1, -(-len(work.texts) // BATCH))
    per_round = -(-len(images) // rounds)
    plan: list[tuple[str, list[str]]] = []
    for r in range(rounds):
        plan.append((TEXT, work.texts[r * BATCH : (r + 1) * BATCH]))
        if chunk := images[r * per_round : (r + 1) * per_round]:
            plan.append((IMAGE, chunk))
    return [(model, chunk) for model, chunk in plan if chunk]


def _ask(client: EmbarkClient, model: str, raws: list[str]) -> list[Any]:
    kind = "image_url" if model == IMAGE else "text"
    return client.get_many(model, [make_input(**{kind: raw}) for raw in raws])


def _ask_all(client: EmbarkClient, pending: dict[str, str]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for model in (TEXT, IMAGE):
        raws = [raw for raw, m in pending.items() if m == model]
        for i in range(0, len(raws), BATCH):
            chunk = raws[i : i + BATCH]
            out.extend(zip(chunk, _ask(client, model, chunk), strict=True))
    return out


def _produce(s: Stack, messages: list[tuple[bytes, bytes, str]]) -> None:
    producer = Producer({"bootstrap.servers": s.kafka})
    for key, value, _ in messages:
        producer.produce(s.jobs_topic, key=key, value=value)
    assert producer.flush(30) == 0, "the poison messages were not all delivered"


def _read_letters(s: Stack, *, expected: int, timeout_s: float = 60.0) -> Counter[str]:
    consumer = Consumer(
        {
            "bootstrap.servers": s.kafka,
            "group.id": f"chaos-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([f"{s.jobs_topic}.dlq"])
    reasons: Counter[str] = Counter()
    deadline = time.monotonic() + timeout_s
    try:
        while sum(reasons.values()) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=1.0):
                if msg.error() is None:
                    letter = jobs_pb2.DeadLetter.FromString(msg.value() or b"")
                    reasons[letter.reason.split(" ", 1)[0]] += 1
    finally:
        consumer.close()
    return reasons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--poison", type=float, default=0.02)
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "jobs": args.jobs, "poison": args.poison}
    with hostile_host() as base:
        for name, share in (("clean", 0.0), ("chaos", args.poison)):
            with stack(f"chaos_{name}") as s:
                start(s)
                catalog = Catalog.load(s.catalog_path)
                tag = uuid.uuid4().hex[:6]
                work = build(base, catalog, jobs=args.jobs, poison_share=share, tag=tag)
                results[name] = run(s, work, deadline_s=900).summary()
    clean, chaos = results["clean"], results["chaos"]
    results["good_throughput_ratio"] = round(chaos["good_per_s"] / clean["good_per_s"], 3)
    write_result("chaos", results)
    ttf = chaos["time_to_failed"] or {}
    print(
        table(
            ["run", "good stored", "good/s", "poison", "failed as expected", "letters", "exited"],
            [
                [
                    n,
                    f"{r['good_stored']}/{r['good_total']}",
                    r["good_per_s"],
                    r["poison_total"],
                    r["poison_failed_as_expected"],
                    sum(r["dead_letters"].values()),
                    r["exited"],
                ]
                for n, r in (("clean", clean), ("chaos", chaos))
            ],
        )
    )
    print(f"good throughput with poison / clean: {results['good_throughput_ratio']:.2f}x")
    p50, worst = ttf.get("p50_ms", 0) / 1000, ttf.get("max_ms", 0) / 1000
    print(f"time to FAILED after the miss was asked (s): p50 {p50:.1f}, max {worst:.1f}")


if __name__ == "__main__":
    main()
