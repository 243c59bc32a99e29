#!/usr/bin/env python
"""How much of a model's detail to keep: the best weight, and what two estimates of it say.
(docs/benchmarks/cross_dataset.md, "The reference check")

    OMP_NUM_THREADS=1 python benchmarks/gain_estimators.py [--sets icbm152,spine,brats,...]
        [--threads 1]

For each whole-volume test set of ``configs/cross/<set>_volume.yaml`` (the same crops, slabs,
scales and k-space crop as the whole-volume table) and each model (``liif_s`` without the
reference, ``dualarbnet_s`` with it through the headers, both projected), the output is
``z + g d``: ``z`` the zero-filled interpolation of the input, ``d`` the model's detail beyond
the measured band. Printed per case and scale:

* ``best``: the least-squares ``g`` against the truth (what an oracle would use);
* ``octave below``: the gain of ``--calibrate on``, fitted on the input degraded once more
  (:func:`mrisr.inference.calibration.detail_gain`; all slices of the slab);
* ``reference``: :func:`mrisr.inference.calibration.reference_check` (``liif_s`` on the
  reference at the job's octave): its fitted gain, then the squared error of ``liif_s`` over
  zero-filling's there and the energy of its detail over the reference's own (the default
  applies the gain where the first exceeds 1 and the second 2);
* brain-mask PSNR (dB) of zero-filling (of the complex k-space crop, the table's baseline; the
  models read its magnitude, and their ``z`` zero-fills that), of each model as it is, and
  with the reference check's rule applied.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SETS = ("icbm152", "spine", "brats", "ixi", "head", "phantom")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    import torch

    from mrisr.config import from_dict, load_yaml
    from mrisr.data.datasets import load_subjects
    from mrisr.data.intensity import to_magnitude
    from mrisr.degradation import degrade
    from mrisr.degradation.consistency import project
    from mrisr.degradation.kspace import kspace_resize
    from mrisr.evaluation.harness import EvaluateConfig, _cases
    from mrisr.evaluation.metrics import evaluate_case
    from mrisr.inference.calibration import least_squares_gain, reference_check
    from mrisr.inference.selection import load_upscale_model
    from mrisr.inference.upscale import SliceUpscaler

    torch.set_num_threads(args.threads)
    models = {}
    for name in ("liif_s", "dualarbnet_s"):
        net, desc = load_upscale_model(name, name != "liif_s")
        models[name] = SliceUpscaler(net, torch.device("cpu"), desc["input"])

    def zero_filled(image, shape):
        return to_magnitude(kspace_resize(image, tuple(shape))).astype(np.float32)

    def detail_model(name, lr, shape, ref):
        pred = models[name].upscale(lr, shape, 2, ref if models[name].uses_reference else None)
        project(pred, lr, "kspace", out=pred)
        return pred

    print("| set | case | scale | zero-fill | model | as it is | best g | octave below g | "
          "reference g (error, energy ratios) | with the check |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        path = REPO / "configs" / "cross" / f"{name}_volume.yaml"
        cfg = from_dict(EvaluateConfig, load_yaml(path), source=str(path))
        if cfg.slice_axis % 3 != 2:  # the models run on slices along the last axis here
            transpose = [a for a in range(3) if a != cfg.slice_axis % 3] + [cfg.slice_axis % 3]
        else:
            transpose = [0, 1, 2]
        for subject in load_subjects(cfg.dataset, use_reference=True):
            for _, hr, ref, mask in _cases(subject, cfg):
                hr, ref, mask = (np.ascontiguousarray(np.transpose(a, transpose))
                                 for a in (hr, ref, mask))
                for scale in cfg.scales:
                    factors = [float(scale[a]) for a in transpose]
                    # As the whole-volume table: the k-space crop gives a complex image, the
                    # zero-filling baseline reads it, the models read its magnitude.
                    complex_lr = degrade(hr, factors, kind="kspace")
                    baseline = zero_filled(complex_lr, hr.shape)
                    lr = np.abs(complex_lr).astype(np.float32)
                    zf = zero_filled(lr, hr.shape)
                    lr2 = np.abs(degrade(lr, factors, kind="kspace")).astype(np.float32)
                    zf2 = zero_filled(lr2, lr.shape)
                    check = reference_check(models["liif_s"], ref, lr.shape, hr.shape, 2)

                    def psnr(x):
                        return evaluate_case(x, hr, cfg.protocol, mask=mask)["psnr"]
                    label = "x".join(f"{f:g}" for f in factors)
                    for model in models:
                        pred = detail_model(model, lr, hr.shape, ref)
                        best = least_squares_gain((pred - zf)[mask], (hr - zf)[mask])
                        below = detail_model(model, lr2, lr.shape, ref)
                        octave = least_squares_gain(below - zf2, lr - zf2)
                        checked = zf + check["gain"] * (pred - zf)
                        print(f"| {name} | {subject.name} | {label} | {psnr(baseline):.2f} "
                              f"| {model} "
                              f"| {psnr(pred):.2f} | {best['fitted_gain']:.2f} | "
                              f"{octave['fitted_gain']:.2f} | {check['fitted_gain']:.2f} "
                              f"({check['error_ratio']:.2f}, {check['energy_ratio']:.2f}) | "
                              f"{psnr(checked):.2f} |",
                              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
