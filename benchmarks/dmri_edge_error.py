"""Squared error of a 3D model relative to cubic B-spline interpolation on the brain-mask edge
(the voxels within ``--band`` voxels of the mask border, inside it) and deeper inside, on the
held-out slab of dwi-philips-3t. Used to choose ``dmri.loss_region`` (docs/BENCHMARKS.md).

    python benchmarks/dmri_edge_error.py runs/csr_dmri_s_philips/final.pt --scale 2
"""
from __future__ import annotations

import argparse
import os

import torch
from scipy import ndimage

from mrisr.config import data_root
from mrisr.data.dwi import load_dwi_subject
from mrisr.degradation import degrade, spline_resize
from mrisr.inference.volume3d import VolumeUpscaler
from mrisr.models import load_checkpoint
from mrisr.training.volumes import split_slab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--volumes", default="0,4,8,12", help="diffusion volumes to score")
    parser.add_argument("--band", type=int, default=2, help="edge band width (voxels)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = os.path.join(data_root(), "dwi-philips-3t")
    subject = load_dwi_subject(os.path.join(folder, "2201_WIP_DTI_S2MB2.nii.gz"),
                               os.path.join(folder, "1301_WIP_ADNI_Sag3D_MPRAGE.nii.gz"))
    _, held = split_slab(subject.shape, 2, 0.25)
    hr, mask, t1 = subject.shell[held], subject.mask[held], subject.t1[held]
    model = load_checkpoint(args.checkpoint).model.eval()
    upscaler = VolumeUpscaler(model, torch.device("cpu"))
    inner = ndimage.binary_erosion(mask, iterations=args.band)
    regions = {"edge": mask & ~inner, "inner": inner}
    print(f"{args.checkpoint}, x{args.scale:g}: model MSE / cubic MSE")
    for v in (int(i) for i in args.volumes.split(",")):
        target = hr[..., v]
        lr = degrade(target[None], args.scale, kind="bicubic", n_spatial=3)[0]
        cubic = spline_resize(lr, target.shape, 3)
        sr = upscaler(lr, target.shape, t1 if model.uses_reference else None)
        ratios = [f"{name} {((sr - target)[r] ** 2).mean() / ((cubic - target)[r] ** 2).mean():.3f}"
                  for name, r in regions.items()]
        print(f"volume {v}: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
