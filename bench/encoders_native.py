"""The native kernel's variants of MiniLM-L6 for ``bench/encoders.py`` (issue 18's hand-written
route): ``retina/native/bert_int8.c`` on AMX, built by the build's own code
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

The kernel computes on the calling thread and helpers it starts per call, so the process's CPU
time is its work (``bench.encoders.cpu_time`` measures every row that way).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from retina.artifacts import text_native as native_build
from retina.encoders import text as text_encoder
from retina.encoders import text_native

Make = Callable[[int], text_encoder.TextEncoder]
# The recipe's row: bench.encoders checks the goals against it.
KEPT = "L6 native int8 AMX, per-token, SQ 0.7"


def available() -> tuple[bool, str]:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError as exc:
        return False, f"cannot read the CPU's flags: {exc}"
    if not all(f in flags for f in ("amx_int8", "amx_bf16")):
        return False, "this CPU has no AMX (INT8, BF16)"
    try:
        native_build.compiler()
    except Exception as exc:  # noqa: BLE001 (said in the skip line)
        return False, str(exc)
    return True, ""


def native_variants(
    safetensors: Path,
    tokenizer: Path,
    feeds: Sequence[Mapping[str, npt.NDArray[np.int64]]],
    work: Path,
) -> list[tuple[str, str, Make]]:
    """``(name, note, make)`` of each variant; ``make(threads)`` loads it with that many."""
    calibration = [feed["input_ids"][0] for feed in feeds]

    def build(name: str, smooth_alpha: float | None, group_tokens: int | None = None) -> Make:
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
        return lambda threads: text_native.load(
            out, name=f"l6-native-{name}", revision="bench", intra_op_threads=threads
        )

    return [
        (KEPT, 'backend = "native": per-token scales, batches', build("recipe", 0.7)),
        (
            "L6 native int8 AMX, per-token, no smoothing",
            "not kept: cosine min below 0.99",
            build("plain", None),
        ),
        (
            "L6 native int8 AMX, SQ 0.7, batch as one token group",
            "not kept: the recipe runs a batch in groups of 256 tokens",
            build("one-group", 0.7, group_tokens=1 << 30),
        ),
    ]
