"""The SmoothQuant sweep behind ``retina.artifacts.text_int8.SMOOTH_ALPHA``: each text model's
dynamic int8 build at several migration strengths (and unsmoothed), its fidelity measured
the way the build gate measures it (cosine mean and min against the fp32 reference, on the
parity sample). Fidelity, not speed: the figures do not depend on the machine's load.

The fp32 graph is built once per model by the model's own builder; each strength then runs the
builder's int8 steps (calibrate, smooth, quantize) on a copy of it.

    .venv/bin/python -m bench.smooth_sweep [--models minilm-l6 minilm-l3]

Writes bench/results/smooth_sweep.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench.stack import machine, table, write_result
from retina.artifacts.definition import load_definitions
from retina.artifacts.text_source import text_builder

ALPHAS: tuple[float | None, ...] = (None, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9)


def sweep(name: str, alphas: tuple[float | None, ...]) -> list[dict[str, Any]]:
    builder = text_builder(load_definitions()[name])
    builder._gating = False  # record every strength, the ones below the gate too
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"sweep-{name}-") as tmp:
        work = Path(tmp)
        fp32_dir = builder._fp32_model(work, {})
        fp32 = builder._load(fp32_dir)
        for alpha in alphas:
            builder.smooth_alpha = alpha
            here = work / f"alpha-{alpha}"
            here.mkdir()
            served = builder._load(builder._int8_model(here, fp32_dir, {}))
            parity = builder._parity(served, fp32, {})
            rows.append(
                {
                    "model": name,
                    "alpha": alpha,
                    "cos_mean": parity.cos_mean,
                    "cos_min": parity.cos_min,
                    "n": parity.n,
                    "reference": parity.reference,
                }
            )
            print(f"{name} alpha={alpha}: {parity.cos_mean:.4f} / {parity.cos_min:.4f}", flush=True)
    return rows


def report(r: dict[str, Any]) -> str:
    return table(
        ["model", "SmoothQuant alpha", "cosine mean", "cosine min", "texts"],
        [
            [x["model"], "none" if x["alpha"] is None else x["alpha"], f"{x['cos_mean']:.4f}",
             f"{x['cos_min']:.4f}", x["n"]]
            for x in r["rows"]
        ],
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["minilm-l6", "minilm-l3"])
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "rows": []}
    for name in args.models:
        result["rows"] += sweep(name, ALPHAS)
    print(report(result))
    print(f"\nwrote {write_result('smooth_sweep', result)}")


if __name__ == "__main__":
    main()
