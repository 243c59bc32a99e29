"""How large should a CSR-dMRI model's learnt correction be? PSNR inside the brain mask when the
correction that the decoder adds to cubic B-spline interpolation is scaled by ``alpha`` (the
decoder's last layer times ``alpha``: 0 is the interpolation, 1 the trained model), on a few
diffusion volumes of one region. A best ``alpha`` below 1 on test data, and at 1 on training
data, says that the correction overshoots where the model was not trained
(docs/BENCHMARKS.md, CSR-dMRI round 4).

    python benchmarks/dmri_correction_scale.py runs/csr_dmri_s_m1_philips/final.pt \
        --region siemens --scales 2 3 --alphas 0 0.5 1

Regions: ``siemens`` (dwi-siemens-3t, b=2500, whole volume), ``philips-slab`` (the held-out
slab of dwi-philips-3t), ``philips-train`` (slices 30-49 of axis 2 of dwi-philips-3t, inside
the training region).
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from mrisr.config import data_root
from mrisr.data.dwi import load_dwi_subject
from mrisr.degradation import degrade, spline_resize
from mrisr.evaluation.diffusion import evaluate_dwi_volume
from mrisr.evaluation.methods import SRCase
from mrisr.evaluation.model_methods import VolumeModelMethod
from mrisr.grid import effective_scale
from mrisr.training.volumes import split_slab

from dmri_domain_stats import SUBJECTS  # the two series' file names (benchmarks/ is on the path)


def load_region(name: str):
    """``(hr (X, Y, Z, N), mask, t1)`` of a region (see the module docstring)."""
    folder = "dwi-siemens-3t" if name == "siemens" else "dwi-philips-3t"
    dwi, t1, bvalue = SUBJECTS[folder]
    root = os.path.join(data_root(), folder)
    s = load_dwi_subject(os.path.join(root, dwi), os.path.join(root, t1), bvalue,
                         register=True)
    if name == "siemens":
        region = tuple(slice(0, n) for n in s.shape)
    elif name == "philips-slab":
        region = split_slab(s.shape, 2, 0.25)[1]
    else:
        region = (slice(None), slice(None), slice(30, 50))
    return s.shell[region], s.mask[region], s.t1[region]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--region", choices=["siemens", "philips-slab", "philips-train"],
                        default="siemens")
    parser.add_argument("--scales", type=float, nargs="+", default=[2.0, 3.0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--volumes", default="0,5,10,15", help="diffusion volumes to score")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shell, mask, t1 = load_region(args.region)
    hr = shell[..., [int(v) for v in args.volumes.split(",")]]
    out_shape = hr.shape[:3]
    print("| checkpoint | scale | Bicubic | " + " | ".join(f"alpha {a:g}" for a in args.alphas)
          + " |")
    print("|---|---|---|" + "---|" * len(args.alphas))
    for scale in args.scales:
        lr = degrade(np.moveaxis(hr, -1, 0), scale, kind="bicubic", n_spatial=3)
        cubic = np.stack([spline_resize(v, out_shape, order=3) for v in lr], -1)
        cubic_psnr = evaluate_dwi_volume(cubic, hr, mask)["psnr"]
        for path in args.checkpoints:
            method = VolumeModelMethod(path, threads=args.threads)
            model = method.upscaler.model
            if getattr(model, "image_residual", None) is None:
                raise SystemExit(f"{path}: the model adds no correction to an interpolation")
            last = model.decoder.out
            weight, bias = last.weight.data.clone(), last.bias.data.clone()
            scores = []
            for alpha in args.alphas:
                last.weight.data, last.bias.data = weight * alpha, bias * alpha
                pred = np.stack([method(SRCase(
                    lr=v, out_shape=out_shape, reference=t1 if method.uses_reference else None,
                    target_scale=effective_scale(v.shape, out_shape),
                    reference_scale=(1.0, 1.0, 1.0))) for v in lr], -1)
                scores.append(evaluate_dwi_volume(pred, hr, mask)["psnr"])
            print(f"| {path} | x{scale:g} | {cubic_psnr:.2f} | "
                  + " | ".join(f"{p:.2f}" for p in scores) + " |", flush=True)


if __name__ == "__main__":
    main()
