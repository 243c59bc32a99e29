#!/usr/bin/env python
"""What the best detail gain could do: a model's output re-weighted by fixed gains.

    python benchmarks/detail_gain_sweep.py head_volume [--model liif_robust] [--scales 1,4,4]

On a whole-volume set of ``configs/cross/`` the model upscales each case once with the k-space
projection and no gain (``calibrate: off``); the rows are ``z + g (x - z)`` for fixed gains
``g`` (``z``: zero-filling of the magnitude input, what ``mrisr.inference.calibration``
weighs against; ``g = 1``: the model's output), beside the tables' zero-filling of the complex
input. The best row bounds what any fitted gain (``--calibrate``) can reach on that set.
Written under ``results/gain_sweep/<set>-<model>/``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GAINS = (0.0, 0.25, 0.5, 0.75, 1.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("set")
    parser.add_argument("--model", default="liif_robust")
    parser.add_argument("--scales", default=None,
                        help="one per-axis scale, e.g. 1,4,4 (default: the set's scales)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from mrisr.config import from_dict, load_yaml
    from mrisr.evaluation.harness import EvaluateConfig, evaluate, make_method
    from mrisr.evaluation.methods import SRMethod
    from mrisr.evaluation.model_methods import ModelMethod
    from mrisr.evaluation.report import write_report
    from mrisr.inference.calibration import apply_detail_gain

    torch.set_num_threads(args.threads)
    model = ModelMethod(args.model, consistency="auto", calibrate="off")
    last = {}

    class Weighted(SRMethod):
        uses_reference = model.uses_reference

        def __init__(self, gain: float):
            self.gain = gain

        def __call__(self, case):
            # Every row of one case shares the model's output (the harness hands them the
            # same input array).
            if last.get("lr") is not case.lr:
                last.update(lr=case.lr, out=model(case))
            out = last["out"].copy()
            axis = int(np.argmin(np.divide(out.shape, case.lr.shape)))
            apply_detail_gain(out, np.abs(case.lr), self.gain, axis)
            return out

    data = load_yaml(REPO / "configs" / "cross" / f"{args.set}.yaml")
    if args.scales:
        data["scales"] = [[float(s) for s in args.scales.split(",")]]
    cfg = from_dict(EvaluateConfig, data, source=f"{args.set}.yaml")
    methods = {"kspace_zerofill": make_method("kspace_zerofill", {})}
    methods.update({f"{args.model}, gain {g:g}": Weighted(g) for g in GAINS})
    out = REPO / "results" / "gain_sweep" / f"{args.set}-{args.model}"
    write_report(evaluate(cfg, methods=methods, show_progress=False), out)
    print((out / "table.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
