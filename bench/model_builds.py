"""What `retina models build` recorded for each built model, int8 (or whatever was served)
against its fp32 reference: size, batch-1 latency and parity, with the ratios.

    .venv/bin/python -m bench.model_builds --artifacts DIR [--out bench/results/NAME.json]

It reads the build reports (``<artifact>/report.json``), so the figures are the ones the build
measured on the build machine, in the same run for both precisions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(artifacts: Path) -> list[dict[str, object]]:
    catalog = json.loads((artifacts / "catalog.json").read_text())
    out = []
    for entry in catalog["models"]:
        report = json.loads((artifacts / entry["artifact_dir"] / "report.json").read_text())
        extra = report["extra"]
        out.append(
            {
                "model": entry["name"],
                "kind": entry["kind"],
                "dim": entry["dim"],
                "precision": report["precision"],
                "revision": entry["revision"],
                "size_mb": report["size_bytes"] / 1e6,
                "size_mb_fp32": extra["size_bytes_fp32"] / 1e6,
                "latency_ms_b1": report["latency_ms_b1"],
                "latency_ms_b1_fp32": extra["latency_ms_b1_fp32"],
                "parity_min": report["parity"]["cos_min"],
                "parity_mean": report["parity"]["cos_mean"],
                "parity_n": report["parity"]["n"],
                "parity_vs": report["parity"]["reference"],
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    table = rows(args.artifacts)
    header = ("model", "served", "size MB (fp32)", "size ratio", "b1 ms (fp32)", "speed-up")
    print("| " + " | ".join(header) + " | parity min / mean |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in table:
        print(
            f"| {r['model']} | {r['precision']} | {r['size_mb']:.1f} ({r['size_mb_fp32']:.1f}) "
            f"| {r['size_mb_fp32'] / r['size_mb']:.1f}x "  # type: ignore[operator]
            f"| {r['latency_ms_b1']:.1f} ({r['latency_ms_b1_fp32']:.1f}) "
            f"| {r['latency_ms_b1_fp32'] / r['latency_ms_b1']:.2f}x "  # type: ignore[operator]
            f"| {r['parity_min']:.4f} / {r['parity_mean']:.4f} |"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
