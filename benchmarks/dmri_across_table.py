#!/usr/bin/env python
"""Join the per-series results of ``mrisr evaluate configs/eval_dmri_across_defaults.yaml``
(one folder per held-out series, see the config's header) into the tables of
docs/BENCHMARKS.md ("Today's defaults on other scanners").

    python benchmarks/dmri_across_table.py [results/dmri-across [results/dmri-across-gain ...]]

Several result folders (e.g. the rows of configs/eval_dmri_across_gain.yaml) are joined per
series: each adds the methods the earlier ones lack (the cubic rows of the same series agree).

Printed: PSNR inside the brain (mean over the diffusion-weighted volumes) per series and scale,
the gain of each method over cubic interpolation averaged over the series that ran it, the
number of series where it beats cubic at every scale, and the white-matter FA error at x2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

SCALES = ("2", "3", "4", "2.4")
BASELINE = "Cubic|-"


def load(roots: list[Path]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for root in roots:
        for folder in sorted(p for p in root.iterdir() if (p / "summary.json").exists()):
            summary = json.loads((folder / "summary.json").read_text())
            if folder.name not in out:
                out[folder.name] = summary
                continue
            for metric, rows in summary.items():
                if isinstance(rows, dict):
                    for key, value in rows.items():
                        out[folder.name].setdefault(metric, {}).setdefault(key, value)
    return out


def methods_in_order(results: dict[str, dict]) -> list[str]:
    seen: list[str] = []
    for summary in results.values():
        for key in summary["psnr"]:
            if key not in seen:
                seen.append(key)
    return seen


def label(key: str) -> str:
    name, reference = key.rsplit("|", 1)
    return name if reference == "-" else f"{name} (with {reference})"


def main() -> None:
    roots = [Path(a) for a in sys.argv[1:]] or [Path("results/dmri-across")]
    results = load(roots)
    if not results:
        raise SystemExit(f"{roots[0]}: no summary.json below it; run the evaluations first")
    series = list(results)
    methods = methods_in_order(results)

    print("**PSNR (dB) inside the brain, x2 / x3 / x4 / x2.4**\n")
    print("| method | " + " | ".join(series) + " |")
    print("|---|" + "---|" * len(series))
    for m in methods:
        cells = []
        for s in series:
            values = results[s]["psnr"].get(m)
            cells.append(" / ".join(f"{values[k]:.2f}" for k in SCALES) if values else "-")
        print(f"| {label(m)} | " + " | ".join(cells) + " |")

    print("\n**Against cubic interpolation** (mean PSNR gain over the series that ran the method; "
          "series where it is above cubic at all four scales; SSIM gain at x2; FA error at x2, "
          "mean over the series, cubic's beside it)\n")
    print("| method | series | gain x2 | gain x3 | gain x4 | gain x2.4 | above cubic at every "
          "scale | SSIM gain x2 | FA error x2 (cubic) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in methods:
        ran = [s for s in series if m in results[s]["psnr"]]
        gains = {k: np.mean([results[s]["psnr"][m][k] - results[s]["psnr"][BASELINE][k]
                             for s in ran]) for k in SCALES}
        above = sum(all(results[s]["psnr"][m][k] > results[s]["psnr"][BASELINE][k]
                        for k in SCALES) for s in ran)
        ssim = np.mean([results[s]["ssim"][m]["2"] - results[s]["ssim"][BASELINE]["2"]
                        for s in ran])
        fa = np.mean([results[s]["fa_mae"][m]["2"] for s in ran])
        fa_cubic = np.mean([results[s]["fa_mae"][BASELINE]["2"] for s in ran])
        print(f"| {label(m)} | {len(ran)} | " + " | ".join(f"{gains[k]:+.2f}" for k in SCALES)
              + f" | {above} of {len(ran)} | {ssim:+.4f} | {fa:.4f} ({fa_cubic:.4f}) |")


if __name__ == "__main__":
    main()
