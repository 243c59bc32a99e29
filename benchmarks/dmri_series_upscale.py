"""How do the dMRI models do on a diffusion series as a user has it? PSNR inside the brain mask,
in the scanner's signal units, of ``mrisr upscale``'s series path (``SeriesUpscaler3D``) against
cubic B-spline interpolation of each volume.

The evaluation of configs/eval_dmri_*.yaml follows the paper: the HR series is divided by its
mean b=0 first and the *attenuations* are degraded. A user's LR series is degraded signal: here
each volume of the HR series (b=0 volumes too) is degraded by cubic B-spline downsampling, the LR
series goes through the upscale path (mask, normalisation, T1w placement and registration as
``mrisr upscale`` does them) and the output is compared with the HR signal.

    python benchmarks/dmri_series_upscale.py runs/gpu/m1/final.pt csr_dmri_s \\
        --region siemens --scales 2 3 4 2.4 --volumes 4

Regions: ``siemens`` (dwi-siemens-3t, b=2500 volumes scored, whole volume), ``philips-slab``
(dwi-philips-3t, b=1000 volumes scored in the held-out slab; the whole series is degraded and
upscaled, so that the T1w registration sees the whole head, as it would for a user).
PSNR peak: the 99.9th percentile of the HR signal of the scored volumes inside the mask, the same
for every method; the table also gives each method's difference from cubic.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from mrisr.config import data_root
from mrisr.data.dwi import brain_mask, select_shell
from mrisr.degradation import degrade_volume, spline_resize
from mrisr.inference.upscale import load_model
from mrisr.inference.volume3d import SeriesUpscaler3D
from mrisr.io import load_nifti
from mrisr.io.dwi import read_bval_bvec
from mrisr.io.nifti import Volume
from mrisr.training.volumes import split_slab

from dmri_domain_stats import SUBJECTS  # the two series' file names (benchmarks/ is on the path)

REGIONS = {"siemens": "dwi-siemens-3t", "philips-slab": "dwi-philips-3t"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="checkpoint paths or shipped presets")
    parser.add_argument("--region", choices=sorted(REGIONS), default="siemens")
    parser.add_argument("--scales", type=float, nargs="+", default=[2.0, 3.0, 4.0, 2.4])
    parser.add_argument("--volumes", type=int, default=4,
                        help="diffusion-weighted volumes of the shell scored (evenly spaced)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    folder = REGIONS[args.region]
    dwi_name, t1_name, bvalue = SUBJECTS[folder]
    root = os.path.join(data_root(), folder)
    stem = os.path.join(root, dwi_name[:-len(".nii.gz")])
    series = load_nifti(stem + ".nii.gz", ndim=(4,))
    bvals, _ = read_bval_bvec(stem + ".bval", stem + ".bvec", series.data.shape[3])
    t1 = load_nifti(os.path.join(root, t1_name))
    hr = np.asarray(series.data, dtype=np.float32)
    shell = select_shell(bvals, bvalue, 100)
    scored = shell[np.linspace(0, shell.size - 1, min(args.volumes, shell.size)).round()
                   .astype(int)]
    mask = brain_mask(hr[..., bvals < 50].mean(axis=-1))
    if args.region == "philips-slab":
        region = np.zeros_like(mask)
        region[split_slab(mask.shape, 2, 0.25)[1]] = True
        mask &= region
    peak = float(np.percentile(hr[..., scored][mask], 99.9))
    print(f"{args.region}: {hr.shape} series, volumes {scored.tolist()} (b={bvalue}), "
          f"{int(mask.sum())} voxels scored, peak {peak:.1f}")

    def psnr(pred: np.ndarray, index: int) -> float:
        err = float(np.mean((pred[mask] - hr[..., index][mask]) ** 2))
        return 10 * np.log10(peak ** 2 / err)

    names = ["cubic"] + args.models
    rows = {name: [] for name in names}
    for scale in args.scales:
        lr, lr_affine = degrade_volume(hr, series.affine, scale, kind="bicubic")
        cubic = [psnr(np.clip(spline_resize(lr[..., v], hr.shape[:3], order=3), 0, None), v)
                 for v in scored]
        rows["cubic"].append(float(np.mean(cubic)))
        for name in args.models:
            t0 = time.perf_counter()
            pack = load_model(name, True, series=True)
            runner = SeriesUpscaler3D(Volume(lr, lr_affine), t1, pack, hr.shape[:3],
                                      series.affine, bvals, device="cpu")
            value = float(np.mean([psnr(runner.upscale(v).data, v) for v in scored]))
            rows[name].append(value)
            print(f"x{scale:g} {name}: {value:.2f} dB (cubic {rows['cubic'][-1]:.2f}), "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)

    head = " | ".join(f"x{s:g}" for s in args.scales)
    print(f"\n| Method | {head} |\n|---|" + "---|" * len(args.scales))
    for name in names:
        cells = [f"{v:.2f}" + ("" if name == "cubic" else f" ({v - c:+.2f})")
                 for v, c in zip(rows[name], rows["cubic"])]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
