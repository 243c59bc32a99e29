#!/usr/bin/env python
"""How far should the default move towards the reference's locally fitted detail?

    python benchmarks/reference_transfer.py [--sets head_volume,icbm152_volume,...]
        [--weights 0,0.4,0.6,0.8] [--threads 1] [--out results/reference_transfer]

On the whole-volume sets of ``configs/cross/`` (as ``benchmarks/cross_dataset.py run --group
volume`` runs them, through ``mrisr upscale``'s function), the default with a reference
(dualarbnet_robust, its default decisions, the reference transfer off) upscales every case
once; the rows are that output moved towards the reference's prediction with each weight
(:func:`mrisr.inference.reference_transfer.transfer_reference_detail`, ``w = 0``: the output
as it is), beside the default without a reference. Prints one table per set (PSNR / SSIM in
the brain, as the cross-dataset tables) and writes them under ``--out/<set>/``.
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

WEIGHTS = (0.0, 0.4, 0.6, 0.8)


class _Default:
    """The default with a reference, without the transfer, computed once per case."""

    def __init__(self):
        from mrisr.evaluation.model_methods import ModelMethod

        self.method = ModelMethod("dualarbnet_robust", consistency="auto", register="auto",
                                  adapt="auto", calibrate="auto", reference_transfer="off")
        self.inputs, self.output = None, None

    def __call__(self, case):
        if self.inputs is None or self.inputs[0] is not case.lr or \
                self.inputs[1] is not case.reference:
            self.inputs = (case.lr, case.reference)
            self.output = self.method(case)
        return self.output


def _methods(default: _Default, weights) -> dict:
    from mrisr.degradation.consistency import resolve
    from mrisr.evaluation.methods import SRMethod
    from mrisr.evaluation.model_methods import ModelMethod
    from mrisr.inference.reference_transfer import transfer_reference_detail

    class Moved(SRMethod):
        uses_reference = True

        def __init__(self, weight: float):
            self.weight = weight

        def __call__(self, case):
            out = default(case).astype(np.float32).copy()
            lr = np.abs(case.lr).astype(np.float32)
            model = resolve("auto", out.shape, lr.shape)["model"]
            # The model's slices run along the axis the input did not coarsen (a thick
            # job: the in-plane axis it keeps whole).
            axis = [a for a in range(3) if lr.shape[a] == out.shape[a]][0]
            transfer_reference_detail(out, lr, np.abs(case.reference).astype(np.float32),
                                      axis, self.weight, model)
            return out

    rows = {f"transfer w={w:g}": Moved(w) for w in weights}
    rows["default without reference"] = ModelMethod("liif_robust", consistency="auto",
                                                    calibrate="auto")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sets", default=",".join(VOLUME_SETS + THICK_VOLUME_SETS +
                                                   BICUBIC_VOLUME_SETS))
    parser.add_argument("--weights", default=",".join(f"{w:g}" for w in WEIGHTS))
    parser.add_argument("--out", default=str(REPO / "results" / "reference_transfer"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    weights = tuple(float(w) for w in args.weights.split(","))

    import torch

    from mrisr.config import from_dict, load_yaml
    from mrisr.evaluation.harness import EvaluateConfig, evaluate
    from mrisr.evaluation.report import write_report

    torch.set_num_threads(args.threads)
    for name in args.sets.split(","):
        data = load_yaml(REPO / "configs" / "cross" / f"{name}.yaml")
        cfg = from_dict(EvaluateConfig, data, source=f"{name}.yaml")
        out = Path(args.out) / name
        print(f"== {name} -> {out}", flush=True)
        write_report(evaluate(cfg, methods=_methods(_Default(), weights), show_progress=False),
                     out)
        print((out / "table.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
