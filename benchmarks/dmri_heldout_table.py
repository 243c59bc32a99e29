#!/usr/bin/env python
"""The held-out-scanner table of issue 24 from the fold evaluations
(docs/benchmarks/dmri.md, "Held-out scanners, trained on the CPU").

    python benchmarks/dmri_heldout_table.py results/dmri-heldout/A_full results/dmri-heldout/B_full \
        [--tensor results/dmri-heldout/A_fa results/dmri-heldout/B_fa]

Each folder is a ``mrisr evaluate`` report of ``configs/eval_dmri_heldout_<fold>_*.yaml``: the
fold's model on the series it never saw. Method labels name their fold ("fold A with T1w"); the
fold letter is dropped so that one row gathers every held-out series. Printed: the PSNR gain
over cubic interpolation per series and scale (rows: method, and whether the series had a T1w),
its mean, and on how many series the method beats cubic at each scale; with ``--tensor``, the
white-matter FA and MD errors at x2 beside cubic's.
"""
from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np


def _method(label: str) -> str:
    return re.sub(r"^fold \w+ ", "fold model ", label)


def _rows(folders, name):
    for folder in folders:
        with open(Path(folder) / name) as f:
            yield from csv.DictReader(f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--tensor", nargs="*", default=[])
    args = parser.parse_args(argv)

    psnr = defaultdict(dict)  # (method, reference) -> {(series, scale): dB}
    cubic = {}
    for row in _rows(args.folders, "volumes.csv"):
        key = (row["subject"], row["scale"])
        if row["method"] == "Cubic":
            cubic[key] = float(row["psnr"])
        else:
            psnr[(_method(row["method"]), row["reference"])][key] = float(row["psnr"])
    scales = list(dict.fromkeys(s for _, s in cubic))
    series = sorted({s for s, _ in cubic})
    print("**PSNR gain over cubic (dB), " + " / ".join(f"x{s}" for s in scales) + "**\n")
    print("| method | T1w | " + " | ".join(series) + " | mean | series above cubic |")
    print("|---|---|" + "---|" * (len(series) + 2))
    for (method, ref), cells in psnr.items():
        gains = {k: v - cubic[k] for k, v in cells.items()}
        per_series = [" / ".join(f"{gains[(s, c)]:+.2f}" for c in scales)
                      if (s, scales[0]) in gains else "-" for s in series]
        ran = [s for s in series if (s, scales[0]) in gains]
        mean = " / ".join(f"{np.mean([gains[(s, c)] for s in ran]):+.2f}" for c in scales)
        above = " / ".join(str(sum(gains[(s, c)] > 0 for s in ran)) for c in scales)
        print(f"| {method} | {'yes' if ref == 't1' else 'no'} | " + " | ".join(per_series) +
              f" | {mean} | {above} of {len(ran)} |")
    if args.tensor:
        fa, md = defaultdict(dict), defaultdict(dict)
        for row in _rows(args.tensor, "tensor.csv"):
            key = (_method(row["method"]), row["reference"])
            fa[key][row["subject"]] = float(row["fa_mae"])
            md[key][row["subject"]] = float(row["md_mae"]) * 1e3
        print("\n**White-matter FA / MD error at x2 (MD in 10^-3 mm^2/s), every volume**\n")
        print("| method | T1w | " + " | ".join(series) + " | mean FA error | cubic's on the "
              "same series |")
        print("|---|---|" + "---|" * (len(series) + 2))
        base = fa[("Cubic", "-")]
        for key in fa:
            cells = [f"{fa[key][s]:.4f} / {md[key][s]:.4f}" if s in fa[key] else "-"
                     for s in series]
            ran = list(fa[key])
            print(f"| {key[0]} | {'yes' if key[1] == 't1' else 'no'} | " + " | ".join(cells) +
                  f" | {np.mean([fa[key][s] for s in ran]):.4f} | "
                  f"{np.mean([base[s] for s in ran]):.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
