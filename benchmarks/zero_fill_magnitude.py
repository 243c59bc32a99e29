#!/usr/bin/env python
"""How much of the zero-filling baseline comes from the complex input that no user has.

    python benchmarks/zero_fill_magnitude.py [--sets brats_volume,head_volume,...]

The whole-volume sets of ``configs/cross/`` degrade each volume by the k-space crop, which
leaves a complex input with signed ringing; the tables' zero-filling (``kspace_zerofill``)
reads it as it is. A NIfTI file holds the magnitude, and so does every model's input
(``mrisr upscale``). Printed per set: zero-filling of the complex input beside zero-filling of
its magnitude (``kspace_zerofill_magnitude``), PSNR / SSIM in the brain as the cross-dataset
tables; written under ``results/zerofill_magnitude/<set>/``. No model runs: about a minute.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from cross_dataset import VOLUME_SETS  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sets", default=",".join(VOLUME_SETS))
    args = parser.parse_args(argv)

    from mrisr.config import from_dict, load_yaml
    from mrisr.evaluation.harness import EvaluateConfig, evaluate
    from mrisr.evaluation.report import write_report

    for name in args.sets.split(","):
        data = load_yaml(REPO / "configs" / "cross" / f"{name}.yaml")
        data["methods"] = [{"name": "kspace_zerofill"}, {"name": "kspace_zerofill_magnitude"}]
        cfg = from_dict(EvaluateConfig, data, source=f"{name}.yaml")
        out = REPO / "results" / "zerofill_magnitude" / name
        print(f"== {name} -> {out}", flush=True)
        write_report(evaluate(cfg, show_progress=False), out)
        print((out / "table.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
