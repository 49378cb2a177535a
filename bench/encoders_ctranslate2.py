"""CTranslate2's BERT encoder as MiniLM-L6 variants for ``bench/encoders.py`` (issue 18's "other
runtimes" route): the original safetensors converted by CTranslate2's own Transformers
converter, run on its int8 and int16 CPU kernels, and wrapped as the ``TextEncoder`` Retina
serves (``CT2Session`` stands in for the onnxruntime session), so the pooling, normalisation
and batching timed are Retina's own.

    make bench-encoders-openvino    # these rows ride with the OpenVINO rows (--only openvino)

Not a Retina backend: neither variant clears the bar (the note of each row says why).
``ctranslate2`` is installed into the bench venv only (``BENCH_TORCH`` in the Makefile).
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retina.encoders import text as text_encoder

Make = Callable[[int], text_encoder.TextEncoder]


def available() -> tuple[bool, str]:
    missing = [m for m in ("ctranslate2", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"{', '.join(missing)} not installed (make .venv-bench/.installed)"
    return True, ""


@dataclass(frozen=True, slots=True)
class _Port:
    name: str
    shape: tuple[Any, ...]


class CT2Session:
    """A CTranslate2 ``Encoder`` behind ``TokenSession``: token ids and mask in, the last hidden
    state out. CTranslate2 pads internally from each row's length (read off the mask)."""

    def __init__(self, model_dir: Path, *, compute_type: str, threads: int) -> None:
        import ctranslate2

        self._encoder = ctranslate2.Encoder(
            str(model_dir),
            device="cpu",
            compute_type=compute_type,
            intra_threads=threads,
            inter_threads=1,
        )

    def get_inputs(self) -> list[_Port]:
        return [_Port("input_ids", (None, None)), _Port("attention_mask", (None, None))]

    def get_outputs(self) -> list[_Port]:
        return [_Port("last_hidden_state", (None, None, None))]

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]) -> list[Any]:
        ids, mask = input_feed["input_ids"], input_feed["attention_mask"]
        rows = [row[: int(n)].tolist() for row, n in zip(ids, mask.sum(axis=1), strict=True)]
        hidden = np.asarray(self._encoder.forward_batch(rows).last_hidden_state)
        return [hidden]


def ctranslate2_variants(
    safetensors: Path, tokenizer: Path, work: Path
) -> list[tuple[str, Path, str, Make]]:
    """(name, model file, note, make(threads)) for each CTranslate2 variant, converted from the
    Hugging Face directory of ``safetensors`` into ``work``."""
    import ctranslate2

    out = work / "ct2-l6"
    # Weights stored in int8; each compute type below converts them at load as it needs.
    ctranslate2.converters.TransformersConverter(str(safetensors.parent)).convert(
        str(out), quantization="int8", force=True
    )
    shutil.copyfile(tokenizer, out / text_encoder.TOKENIZER_FILE)

    def make(compute_type: str, *, coupled: bool) -> Make:
        def load(threads: int) -> text_encoder.TextEncoder:
            tok = text_encoder.load_tokenizer(out / text_encoder.TOKENIZER_FILE, max_tokens=256)
            return text_encoder.TextEncoder(
                name=f"ct2-{compute_type}",
                revision="bench",
                session=CT2Session(out, compute_type=compute_type, threads=threads),
                tokenizer=tok,
                batch_coupled=coupled,
            )

        return load

    model = out / "model.bin"
    return [
        (
            "L6 CTranslate2 int8",
            model,
            "not kept: cosine min below 0.99, no faster than ORT int8; a padded batch changes"
            " its rows (run one by one)",
            make("int8", coupled=True),
        ),
        (
            "L6 CTranslate2 int16",
            model,
            "not kept: at the gate, but about PyTorch's speed",
            make("int16", coupled=False),
        ),
    ]
