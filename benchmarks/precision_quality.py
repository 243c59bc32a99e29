#!/usr/bin/env python
"""bf16 against fp32 with the shipped weights: the network rows of the cross-dataset tables
(whole volumes as ``mrisr upscale`` runs them) and of the thick-slice table, evaluated twice
through :func:`mrisr.evaluation.run` (the function behind ``mrisr evaluate --precision``),
once per precision, on the same cases.

    python benchmarks/precision_quality.py --threads 1            # every set
    python benchmarks/precision_quality.py --sets phantom_volume,thick
    python benchmarks/precision_quality.py --rows "LIIF robust"    # rows containing a text

Prints, per set, scale and row, the mean PSNR (dB) in fp32 and in bf16 and their difference,
and the largest absolute difference. Data: $MRISR_DATA (default ../shared/data); the phantom
set needs none.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SETS = ("brats_volume", "ixi_volume", "head_volume", "phantom_volume", "icbm152_volume",
        "spine_volume", "thick")
#: Rows that run a network and that a default of mrisr upscale uses (2D models).
ROWS = ("LIIF robust (liif_robust) + projection + gain (default without reference)",
        "Dual-ArbNet (dualarbnet_s) + projection, headers",
        "mrisr upscale default (dualarbnet_robust, registration, adaptation, calibration and "
        "reference transfer auto)",
        "LIIF robust + projection", "Dual-ArbNet robust + projection")


def evaluate(name: str, precision: str, threads: int, rows=ROWS) -> dict:
    """``{(scale, row): mean PSNR}`` of the ``rows`` of ``configs/cross/<name>.yaml``."""
    import torch

    from mrisr import evaluation
    from mrisr.config import load_yaml

    torch.set_num_threads(threads)
    data = load_yaml(REPO / "configs" / "cross" / f"{name}.yaml")
    data["methods"] = [m for m in data["methods"] if m.get("label") in rows]
    out = REPO / "results" / "precision" / f"{name}-{precision}"
    run = evaluation.run(data, output=out, show_progress=False, precision=precision)
    psnr = defaultdict(list)
    for row in run.result.rows:
        psnr[(str(row["scale"]), row["method"])].append(float(row["psnr"]))
    return {key: float(np.mean(v)) for key, v in psnr.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", help="only the rows whose label contains this text")
    args = parser.parse_args()
    rows = [r for r in ROWS if args.rows in r] if args.rows else ROWS
    print("| set | scale | row | fp32 | bf16 | bf16 - fp32 |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for name in args.sets.split(","):
        fp32 = evaluate(name, "fp32", args.threads, rows)
        bf16 = evaluate(name, "bf16", args.threads, rows)
        for key in sorted(fp32):
            diff = bf16[key] - fp32[key]
            worst = max(worst, abs(diff))
            print(f"| {name} | {key[0]} | {key[1]} | {fp32[key]:.3f} | {bf16[key]:.3f} | "
                  f"{diff:+.3f} |", flush=True)
    print(f"\nlargest |bf16 - fp32|: {worst:.3f} dB")


if __name__ == "__main__":
    main()
