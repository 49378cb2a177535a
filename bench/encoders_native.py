"""The native kernel's variants of MiniLM-L6 for ``bench/encoders.py`` (issue 18's hand-written
route): ``retina/native/bert_int8.c`` on AMX and on AVX-512 VNNI, built by the build's own code
(``retina.artifacts.text_native``) from the registry safetensors and the same calibration
text, and loaded as the ``TextEncoder`` Retina serves (``retina.encoders.text_native``): what is
timed is the served path, tokens to vector.

    .venv/bin/python -m bench.encoders --only openvino   # these rows, OpenVINO's, PyTorch, ORT

Variants, kept or not, with the reason in the note:

- Per-token int8 activations, per-channel weights, SmoothQuant 0.7: the recipe
  ``backend = "native"`` builds.
- The same without SmoothQuant: per-token scales alone do not hold the FFN activations.
- The same kernel compiled to run a whole batch as one group of tokens (``GROUP_TOKENS``):
  what the 256-token groups of the recipe are measured against.
- The recipe on the kernel's VNNI path (``path="vnni"``), which CPUs without AMX run: measured on
  this AMX CPU, so it shows the path's cost beside the tiles, not another CPU's speed.

The kernel computes on the calling thread and helpers it starts per call, so the process's CPU
time is its work (``bench.encoders.cpu_time`` measures every row that way).
"""

from __future__ import annotations

import ctypes
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench import encoders_openvino
from bench.encoder_rows import ORT_SERVED
from bench.stack import RESULTS, table
from retina.artifacts import text_native as native_build
from retina.encoders import text as text_encoder
from retina.encoders import text_native
from retina.errors import ArtifactError

Make = Callable[[int], text_encoder.TextEncoder]
# The recipe's row: bench.encoders checks the goals against it.
KEPT = "L6 native int8 AMX, per-token, SQ 0.7"
# The same model on the kernel's path for CPUs without AMX (AVX-512 VNNI), on this CPU.
VNNI = "L6 native int8 VNNI (no AMX), per-token, SQ 0.7"


def available() -> tuple[bool, str]:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError as exc:
        return False, f"cannot read the CPU's flags: {exc}"
    if "avx512_vnni" not in flags:
        return False, "this CPU has neither AMX nor AVX-512 VNNI"
    try:
        native_build.compiler()
    except ArtifactError as exc:
        return False, exc.message
    return True, ""


def native_variants(
    safetensors: Path,
    tokenizer: Path,
    feeds: Sequence[Mapping[str, npt.NDArray[np.int64]]],
    work: Path,
) -> list[tuple[str, str, Make]]:
    """``(name, note, make)`` of each variant this CPU runs (the AMX rows need AMX);
    ``make(threads)`` loads it with that many."""
    calibration = [feed["input_ids"][0] for feed in feeds]

    def build(name: str, smooth_alpha: float | None, group_tokens: int | None = None) -> Path:
        out = work / f"native-{name}"
        native_build.quantize(
            safetensors,
            out,
            calibration,
            num_heads=12,
            eps=1e-12,
            pooling="mean",
            smooth_alpha=smooth_alpha,
        )
        if group_tokens is not None:
            native_build.compile_kernel(
                out / text_native.KERNEL_FILE, defines={"GROUP_TOKENS": group_tokens}
            )
        shutil.copyfile(tokenizer, out / text_encoder.TOKENIZER_FILE)
        return out

    def load(out: Path, path: text_native.KernelPath) -> Make:
        return lambda threads: text_native.load(
            out, name=f"l6-native-{out.name}", revision="bench", intra_op_threads=threads, path=path
        )

    recipe = build("recipe", 0.7)
    vnni = (VNNI, 'backend = "native" where the CPU has no AMX', load(recipe, "vnni"))
    if "amx" not in native_build.offered_paths(recipe):
        return [vnni]
    return [
        (KEPT, 'backend = "native": per-token scales, batches', load(recipe, "amx")),
        vnni,
        (
            "L6 native int8 AMX, per-token, no smoothing",
            "not kept: cosine min below 0.99",
            load(build("plain", None), "amx"),
        ),
        (
            "L6 native int8 AMX, SQ 0.7, batch as one token group",
            "not kept: the recipe runs a batch in groups of 256 tokens",
            load(build("one-group", 0.7, group_tokens=1 << 30), "amx"),
        ),
    ]


def kernel_id() -> str:
    """The first 12 hex digits of the kernel sources' SHA-256: which kernel a run measured."""
    return native_build.kernel_sha256()[:12]


# --- where one text's time goes ----------------------------------------------------------

STEPS = (
    "embeddings + LayerNorm",
    "QKV GEMM",
    "attention (bf16 operands)",
    "quantize attention output",
    "attention out GEMM + residual",
    "LayerNorm 1 + quantize",
    "FFN up GEMM + GELU",
    "quantize FFN inner",
    "FFN down GEMM + residual",
    "LayerNorm 2 + quantize",
)


def step_profile(
    artifact: Path, ids: Sequence[int], threads: Sequence[int], calls: int = 300
) -> list[dict[str, Any]]:
    """The recipe's kernel recompiled with ``-DBERT_PROFILE`` (per-step timers on thread 0,
    barrier waits included) over ``artifact``'s weights; ms a call of each step at batch 1,
    for each code path this CPU offers and each thread count."""
    profiled = artifact.parent / f"{artifact.name}-profiled"
    shutil.copytree(artifact, profiled)
    native_build.compile_kernel(profiled / text_native.KERNEL_FILE, defines={"BERT_PROFILE": 1})
    return [
        entry
        for path in native_build.offered_paths(profiled)
        for entry in _profile_path(profiled, path, ids, threads, calls)
    ]


def _profile_path(
    profiled: Path,
    path: text_native.KernelPath,
    ids: Sequence[int],
    threads: Sequence[int],
    calls: int,
) -> list[dict[str, Any]]:
    model = text_native.open_model(profiled, path=path)
    seconds = (ctypes.c_double * len(STEPS)).in_dll(model._kernel, "bert_profile_seconds")
    seq = [np.asarray(ids, dtype=np.int64)]
    out = []
    for n in threads:
        for _ in range(30):
            model.embed(seq, n)
        for i in range(len(STEPS)):
            seconds[i] = 0.0
        start = time.perf_counter()
        for _ in range(calls):
            model.embed(seq, n)
        wall = (time.perf_counter() - start) / calls
        rows = [{"step": name, "ms": seconds[i] / calls * 1e3} for i, name in enumerate(STEPS)]
        out.append(
            {"threads": n, "path": path, "calls": calls, "rows": rows, "wall_ms": wall * 1e3}
        )
    return out


def profile_report(latest: dict[str, Any]) -> str:
    """The per-step table of every committed run that has one (``encoders_native-run*.json``,
    else the latest run) on two threads, the issue's setting, side by side (docs/performance.md,
    bench.report's "native-profile"): the AMX path, and the VNNI path where a run has it ("VNNI"
    columns); the one-thread figures stay in the JSON."""
    columns = [
        (name if p.get("path", "amx") == "amx" else f"{name} VNNI", p)
        for name, r, _ in _runs(latest)
        for p in r.get("native_profile") or []
        if p["threads"] == 2
    ]
    if not columns:
        return "(not measured in this run: no AMX or no C compiler)"
    rows = [[step, *(p["rows"][i]["ms"] for _, p in columns)] for i, step in enumerate(STEPS)]
    rows.append(["all steps", *(sum(x["ms"] for x in p["rows"]) for _, p in columns)])
    rows.append(["wall clock a call (Python call included)", *(p["wall_ms"] for _, p in columns)])
    return table(["step (ms a call, 2 threads)", *(name for name, _ in columns)], rows)


def _runs(latest: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(name, run, rows by variant)`` of every committed run (``encoders_native-run*.json``,
    copies of ``bench.encoders --only openvino`` runs), in order (run 10 after run 9); else of
    the latest run."""
    prefix = "encoders_native-run"
    files = sorted(RESULTS.glob(f"{prefix}*.json"), key=lambda p: int(p.stem.removeprefix(prefix)))
    runs = [(f"run {p.stem.removeprefix(prefix)}", json.loads(p.read_text())) for p in files]
    return [
        (name, r, {x["variant"]: x for x in r["rows"]}) for name, r in runs or [("latest", latest)]
    ]


# --- the runs, side by side (docs/performance.md, bench.report's "encoders-native") --------


def report(latest: dict[str, Any]) -> str:
    """Every committed run that has the native rows (see _runs), the issue's measures against
    PyTorch, the OpenVINO recipe and onnxruntime's served int8 of the same run."""
    rows = []
    for name, r, by in _runs(latest):
        native, torch = by.get(KEPT), r["rows"][0]
        if native is None:
            continue
        ov = by.get(encoders_openvino.KEPT, {})
        ort = by.get(ORT_SERVED, {})
        served = r.get("served", {})
        load = r["machine"].get("loadavg_before", ["?"])[0]
        rows.append(
            [
                f"{name} (load {load:.1f})" if isinstance(load, float) else name,
                r.get("native_kernel") or "first (9cfc827)",
                f"{torch['ms_b1']:.2f}",
                f"**{native['ms_b1']:.2f}** ({native['speedup_b1']:.2f}x)",
                f"{ov.get('ms_b1', float('nan')):.2f}",
                f"{ort.get('ms_b1', float('nan')):.2f}",
                f"{native['cpu_ms_b1']:.2f} ({native['speedup_cpu']:.2f}x)",
                f"{native['items_per_s']:.0f} ({native['speedup_batch']:.2f}x)",
                f"{served.get('minilm-l6 native', {}).get('served_items_per_s', 0):.0f} vs "
                f"{served.get('minilm-l6', {}).get('served_items_per_s', 0):.0f}",
                f"{native['cos_min']:.4f} / {native['cos_mean']:.4f}",
            ]
        )
    return table(
        ["run", "kernel", "PyTorch b1 ms", "native b1 ms (x PyTorch)", "OpenVINO recipe b1 ms",
         "ORT int8 b1 ms", "native CPU ms, 1 thread (x)", "native b32 texts/s (x PyTorch)",
         "served texts/s, native vs ORT int8", "cos min / mean"],
        rows,
    )  # fmt: skip


def vnni_report(latest: dict[str, Any]) -> str:
    """The runs that measured the kernel's VNNI path (bench.report's "encoders-native-vnni"):
    beside the AMX path and onnxruntime's served int8 of the same run, on this AMX CPU."""
    rows = []
    for name, _, by in _runs(latest):
        vnni, amx, ort = by.get(VNNI), by.get(KEPT, {}), by.get(ORT_SERVED)
        if vnni is None or ort is None:
            continue
        rows.append(
            [
                name,
                f"**{vnni['ms_b1']:.2f}** ({vnni['speedup_b1']:.2f}x)",
                f"{amx.get('ms_b1', float('nan')):.2f}",
                f"{ort['ms_b1']:.2f}",
                f"{vnni['cpu_ms_b1']:.2f} vs {ort['cpu_ms_b1']:.2f}",
                f"{vnni['items_per_s']:.0f} ({vnni['speedup_batch']:.2f}x) vs "
                f"{ort['items_per_s']:.0f}",
                f"{vnni['cos_min']:.4f} / {vnni['cos_mean']:.4f}",
            ]
        )
    return table(
        ["run", "VNNI b1 ms (x PyTorch)", "AMX b1 ms", "ORT int8 b1 ms",
         "CPU ms, 1 thread: VNNI vs ORT int8", "b32 texts/s (x PyTorch) vs ORT int8",
         "cos min / mean"],
        rows,
    )  # fmt: skip
