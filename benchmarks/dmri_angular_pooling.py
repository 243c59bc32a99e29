#!/usr/bin/env python
"""Exploration for issue 24, item 3: does pooling a 3D model's correction across the gradient
directions of a shell bring the FA error back to cubic's? (docs/benchmarks/dmri.md, "Held-out
scanners, trained on the CPU" and "The tensor loss").

    OMP_NUM_THREADS=1 python benchmarks/dmri_angular_pooling.py configs/eval_dmri_heldout_B_fa.yaml \
        ongoing/csr_dmri_s_heldout_B/final.pt -o results/dmri-pooling/B [--weights 0,0.5,1]
        [--mode mean|tensor] [--t1] [--scales 3,4]

The series path upscales each volume on its own: cubic interpolation plus the model's
correction ``c_v`` inside the brain. Each volume's correction errs in its own way, and the
tensor fit reads differences between directions as anisotropy. Here the correction relative to
the cubic signal, ``c_v / cubic_v``, is averaged over the diffusion-weighted volumes of each
shell, and volume ``v`` gets ``cubic_v + (1 - w) c_v + w cubic_v mean(c / cubic)``: ``w = 0``
is the model as it runs today, ``w = 1`` one relative sharpening shared by every direction
(the anisotropy left to cubic interpolation). ``--mode tensor`` removes only the part of the
relative correction that a log-linear tensor fit reads as anisotropy (its projection onto the
shell's tensor design, less its mean: :func:`mrisr.training.losses.tensor_loss`'s ``e``), with
weight ``w``: the mean and what no tensor explains stay. The evaluation is the config's (`mrisr evaluate`'s
signal protocol: every volume degraded in signal space, PSNR inside the brain, the tensor fit
in white matter), run without the T1w (``--t1``: with it where the series has one) at the
config's scales (``--scales``); the report goes to ``-o``. ``--mode tensor`` is now
``mrisr upscale --tensor-consistency w`` (:mod:`mrisr.inference.anisotropy`).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("model")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--weights", default="0,0.5,1")
    parser.add_argument("--mode", choices=("mean", "tensor"), default="mean")
    parser.add_argument("--t1", action="store_true",
                        help="give the model the series' T1w where it has one")
    parser.add_argument("--scales", default="", help="instead of the config's, e.g. 3,4")
    args = parser.parse_args(argv)

    from mrisr.config import from_dict, load_yaml
    from mrisr.degradation import spline_resize
    from mrisr.evaluation.dmri import (DmriEvaluateConfig, SeriesMethod, evaluate_dmri_signal,
                                       write_dmri_report)
    from mrisr.evaluation.harness import MethodSpec

    class PooledSeriesMethod(SeriesMethod):
        """``--mode mean``: each volume's correction blended with its shell's mean."""

        def __init__(self, spec: MethodSpec, weight: float):
            super().__init__(spec)
            self.weight = weight

        def __call__(self, lr, t1, bvals, out_shape, out_affine, indices, bvecs=None):
            out, info = super().__call__(lr, t1, bvals, out_shape, out_affine, indices, bvecs)
            indices = np.asarray(indices)
            shells = np.round(bvals[indices], -2)
            for shell in np.unique(shells[shells >= 50]):
                k = np.flatnonzero(shells == shell)
                cubic = np.stack([spline_resize(lr.data[..., v].astype(np.float32), out_shape,
                                                order=3) for v in indices[k]], -1)
                correction = out[..., k] - cubic
                floor = 1e-6 * float(cubic.max())
                relative = np.clip(np.mean(correction / np.maximum(cubic, floor), axis=-1,
                                           keepdims=True), -1.0, 1.0)
                out[..., k] = np.maximum(cubic + (1 - self.weight) * correction +
                                         self.weight * cubic * relative, 0.0)
            return out, info

    data = load_yaml(args.config)
    if args.scales:
        data["scales"] = [float(x) for x in args.scales.split(",")]
    cfg = from_dict(DmriEvaluateConfig, data, source=args.config)
    with_t1 = "with T1w" if args.t1 else "without T1w"
    methods = {"Cubic": SeriesMethod(MethodSpec("cubic", label="Cubic"))}
    for w in (float(x) for x in args.weights.split(",")):
        if args.mode == "mean":
            label = f"{with_t1}, pooled w={w:g}"
            methods[label] = PooledSeriesMethod(MethodSpec(
                "upscale", {"model": args.model, "t1": args.t1}, label), w)
        else:  # mrisr upscale --tensor-consistency w
            label = f"{with_t1}, anisotropic part removed w={w:g}"
            methods[label] = SeriesMethod(MethodSpec(
                "upscale", {"model": args.model, "t1": args.t1, "tensor_consistency": w},
                label))
    result = evaluate_dmri_signal(cfg, methods, show_progress=False)
    paths = write_dmri_report(result, args.output)
    print(paths["table"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
