#!/usr/bin/env python
"""Scales beyond the trained range in steps: x8 as x2 then x4, against x8 at once.

    python benchmarks/cascade_scale.py --sets phantom_volume,brats_volume [--first 2]

The 2D defaults were trained for x1-x4; at x8 they run out of their range. Here each x8 case
of a whole-volume set of ``configs/cross/`` is upscaled by the default (with and without its
reference) once at x8 and once in two steps: to ``--first`` times the input in-plane with
the k-space projection, then from there to the output, and projected onto the input's k-space
at the end (the intermediate's detail is the model's, not a measurement). Written under
``results/cascade/<set>/``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sets", default="phantom_volume")
    parser.add_argument("--first", type=float, default=2.0)
    parser.add_argument("--scale", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from mrisr.config import from_dict, load_yaml
    from mrisr.degradation.consistency import project
    from mrisr.evaluation.harness import EvaluateConfig, evaluate, make_method
    from mrisr.evaluation.methods import SRCase
    from mrisr.evaluation.model_methods import ModelMethod
    from mrisr.evaluation.report import write_report

    torch.set_num_threads(args.threads)

    class Cascade(ModelMethod):
        def __call__(self, case):
            lr = np.abs(case.lr).astype(np.float32)
            factors = np.divide(case.out_shape, lr.shape)
            mid = tuple(int(round(n * min(f, args.first))) for n, f in zip(lr.shape, factors))
            first = super().__call__(SRCase(**{**vars(case), "out_shape": mid}))
            out = super().__call__(SRCase(**{**vars(case), "lr": first}))
            return project(out, lr, "kspace")

    def rows(cls, tag):
        common = {"consistency": "auto", "calibrate": "auto"}
        return {f"default with reference (dualarbnet_robust){tag}":
                cls("dualarbnet_robust", register="auto", adapt="auto", **common),
                f"default without reference (liif_robust){tag}": cls("liif_robust", **common)}

    for name in args.sets.split(","):
        data = load_yaml(REPO / "configs" / "cross" / f"{name}.yaml")
        data["scales"] = [[args.scale if f > 1 else 1 for f in s] for s in data["scales"][:1]]
        cfg = from_dict(EvaluateConfig, data, source=f"{name}.yaml")
        methods = {"zero-filled k-space": make_method("kspace_zerofill", {}),
                   **rows(ModelMethod, ", at once"),
                   **rows(Cascade, f", x{args.first:g} first")}
        out = REPO / "results" / "cascade" / name
        write_report(evaluate(cfg, methods=methods, show_progress=False), out)
        print((out / "table.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
