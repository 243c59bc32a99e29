#!/usr/bin/env python
"""Is the default with a reference better blended with the default without one?

    python benchmarks/blend_reference.py [--sets phantom_volume,thick_ixi,...] [--scales 8]
        [--weights 0,0.5,1] [--threads 1] [--out results/blend]

On the whole-volume sets of ``configs/cross/`` (as ``benchmarks/cross_dataset.py run --group
volume`` runs them, through ``mrisr upscale``'s function), both defaults upscale every case once:
``x_ref`` (dualarbnet_robust with the reference, the default decisions) and ``x_noref``
(liif_robust, projection and detail gain). Both keep the measured k-space band of the input, so
every blend ``w x_ref + (1 - w) x_noref`` does too; the rows are the blends for a few ``w``
(``w = 1``: the default with a reference; ``w = 0``: the default without). Prints one table per
set (PSNR / SSIM in the brain, as the cross-dataset tables) and writes them under
``results/blend/<set>/`` (``--out``). ``--scales`` keeps the set's cases at those in-plane
factors only (``8``: its ``[8, 8, 1]`` or ``[1, 8, 8]`` cases).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from cross_dataset import (BICUBIC_VOLUME_SETS, THICK_VOLUME_SETS,  # noqa: E402
                           VOLUME_SETS)

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


class _Pair:
    """Both defaults on one case, computed once for every blend row that asks for it."""

    def __init__(self):
        from mrisr.evaluation.model_methods import ModelMethod

        self.with_reference = ModelMethod("dualarbnet_robust", consistency="auto",
                                          register="auto", adapt="auto", calibrate="auto")
        self.without = ModelMethod("liif_robust", consistency="auto", calibrate="auto")
        self.inputs, self.outputs = None, None

    def __call__(self, case):
        # The harness hands every method of one case the same arrays; holding them here keeps
        # their identity from being reused by the next case's.
        if self.inputs is None or self.inputs[0] is not case.lr or \
                self.inputs[1] is not case.reference:
            self.inputs = (case.lr, case.reference)
            self.outputs = (self.with_reference(case), self.without(case))
        return self.outputs


def _blend_methods(pair: _Pair, weights=WEIGHTS) -> dict:
    from mrisr.evaluation.methods import SRMethod

    class Blend(SRMethod):
        uses_reference = True

        def __init__(self, weight: float):
            self.weight = weight

        def __call__(self, case):
            x_ref, x_noref = pair(case)
            return (self.weight * x_ref + (1 - self.weight) * x_noref).astype(np.float32)

    return {f"blend w={w:g} (w=1: with reference, w=0: without)": Blend(w) for w in weights}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sets", default=",".join(VOLUME_SETS + THICK_VOLUME_SETS +
                                                   BICUBIC_VOLUME_SETS))
    parser.add_argument("--scales", default="", help="in-plane factors to keep, e.g. 8")
    parser.add_argument("--weights", default=",".join(f"{w:g}" for w in WEIGHTS))
    parser.add_argument("--out", default=str(REPO / "results" / "blend"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    keep = {float(s) for s in args.scales.split(",") if s}
    weights = tuple(float(w) for w in args.weights.split(","))

    import torch

    from mrisr.config import from_dict, load_yaml
    from mrisr.evaluation.harness import EvaluateConfig, evaluate
    from mrisr.evaluation.report import write_report

    torch.set_num_threads(args.threads)
    for name in args.sets.split(","):
        data = load_yaml(REPO / "configs" / "cross" / f"{name}.yaml")
        if keep:
            # The in-plane factor is the largest of a case's (the head's slice axis is 0).
            data["scales"] = [s for s in data["scales"] if float(max(s)) in keep]
            if not data["scales"]:
                print(f"== {name}: no case at x{args.scales}", flush=True)
                continue
        cfg = from_dict(EvaluateConfig, data, source=f"{name}.yaml")
        out = Path(args.out) / name
        print(f"== {name} -> {out}", flush=True)
        write_report(evaluate(cfg, methods=_blend_methods(_Pair(), weights),
                              show_progress=False), out)
        print((out / "table.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
