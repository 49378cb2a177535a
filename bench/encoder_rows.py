"""The rows ``bench/encoders.py`` measures and how they are shown: the ``Row`` record, the
console table, the chart and issue 18's goal checks (split from bench/encoders.py, which owns
the measuring)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SEQ_LEN = 64
TEXT_BATCH = 32
IMAGE_BATCH = 16
# The issue's reference point: a distilled + dynamically quantized ONNX transformer, 8 vCPUs.
REFERENCE_MS = 4.63
# Issue 18's goal for MiniLM-L6 int8 at batch 1 / 64 tokens on 2 threads.
GOAL_MS = 2.0
# The row of the MiniLM-L6 that Retina serves by default (onnxruntime's dynamic int8).
ORT_SERVED = "L6 ONNX int8 served (SmoothQuant)"


@dataclass
class Row:
    """One variant: what it is, how fast, how faithful."""

    group: str
    variant: str
    ms_b1: float | None = None
    batch: int = 0
    items_per_s: float | None = None
    size_mb: float | None = None
    cos_min: float | None = None
    cos_mean: float | None = None
    vs: str = ""
    note: str = ""
    # Median thread CPU ms at batch 1 on one intra-op thread (robust to a loaded machine).
    cpu_ms_b1: float | None = None
    # Items per CPU second at the batch size, one thread (padded, or one by one if coupled).
    cpu_items_per_s: float | None = None
    # Runs padded batches one item at a time (dynamic per-tensor activation scales).
    coupled: bool | None = None
    # Filled after timing: speed-up over the group's baseline (PyTorch fp32).
    speedup_b1: float | None = None
    speedup_batch: float | None = None
    speedup_cpu: float | None = None
    speedup_cpu_batch: float | None = None
    samples_b1: list[float] = field(default_factory=list, repr=False)
    samples_batch: list[float] = field(default_factory=list, repr=False)


# --- output ----------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render(rows: Sequence[Row]) -> str:
    headers = (
        "variant",
        "x b1",
        "x batch",
        "x cpu",
        "x cpu batch",
        "b1 ms",
        "batch items/s",
        "cpu ms 1t",
        "cpu items/s 1t",
        "MB",
        "cos min / mean",
        "batch gain",
        "one by one",
        "note",
    )
    lines = [headers]
    lines += [
        (
            r.variant,
            _fmt(r.speedup_b1, ".2f"),
            _fmt(r.speedup_batch, ".2f"),
            _fmt(r.speedup_cpu, ".2f"),
            _fmt(r.speedup_cpu_batch, ".2f"),
            _fmt(r.ms_b1, ".2f"),
            f"{_fmt(r.items_per_s, '.0f')} (b{r.batch})",
            _fmt(r.cpu_ms_b1, ".2f"),
            _fmt(r.cpu_items_per_s, ".0f"),
            _fmt(r.size_mb, ".1f"),
            f"{_fmt(r.cos_min, '.4f')} / {_fmt(r.cos_mean, '.4f')}",
            _fmt(r.items_per_s * r.ms_b1 / 1e3 if r.items_per_s and r.ms_b1 else None, ".2f"),
            "-" if r.coupled is None else ("yes" if r.coupled else "no"),
            r.note,
        )
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def chart(rows: Sequence[Row], path: Path) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, group in zip(axes, ("text", "image"), strict=True):
        rs = [r for r in rows if r.group == group and r.ms_b1]
        names = [r.variant.replace(" (", "\n(") for r in rs]
        ms = [r.ms_b1 or 0.0 for r in rs]
        bars = ax.barh(
            names, ms, color=["#888888" if "fp32" in r.variant else "#2a9d8f" for r in rs]
        )
        for bar, r in zip(bars, rs, strict=True):
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {r.ms_b1:.1f} ms ({_fmt(r.speedup_b1, '.1f')}x)",
                va="center",
                fontsize=8,
            )
        ax.invert_yaxis()
        if group == "text":
            ax.axvline(REFERENCE_MS, color="#e76f51", linestyle="--", linewidth=1)
            label = f" {REFERENCE_MS} ms reference (8 vCPUs)"
            ax.text(REFERENCE_MS, -0.6, label, color="#e76f51", fontsize=7)
        ax.set_xlabel("batch-1 latency, ms (lower is better)")
        ax.set_title(
            f"{group}: batch 1" + (f", {SEQ_LEN} tokens" if group == "text" else ", 224x224")
        )
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def goals(label: str, r: Row, base: Row) -> dict[str, bool]:
    """Issue 18's goals for one L6 int8 row against the baseline row."""
    return {
        f"{label} b1/seq{SEQ_LEN} <= {GOAL_MS} ms": (r.ms_b1 or 1e9) <= GOAL_MS,
        f"{label} >= 4x {base.variant} (b1)": (r.speedup_b1 or 0) >= 4,
        f"{label} >= 4x {base.variant} (b1, CPU time)": (r.speedup_cpu or 0) >= 4,
        f"{label} >= 3x {base.variant} (b{TEXT_BATCH})": (r.speedup_batch or 0) >= 3,
        f"{label} >= 3x {base.variant} (b{TEXT_BATCH}, CPU time)": (r.speedup_cpu_batch or 0) >= 3,
        f"{label} cosine mean >= 0.995, min >= 0.99": (r.cos_mean or 0) >= 0.995
        and (r.cos_min or 0) >= 0.99,
    }
