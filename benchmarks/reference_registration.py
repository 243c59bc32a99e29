#!/usr/bin/env python
"""How far a reference's header is off, and how well `mrisr upscale --register` finds it from
the low-resolution input (docs/BENCHMARKS.md, "Scans unlike the training data").

    python benchmarks/reference_registration.py [--data ../shared/data] [--threads 1]

For two subjects (ixi002: T1 and T2 from separate series of one session; a brats18 test
patient: contrasts already co-registered and resampled onto one grid) the T1 is rigidly
registered (:func:`mrisr.data.registration.register_rigid`, mutual information) to the T2 at full
resolution, to the T2 degraded in-plane by the k-space crop at x2, x4 and x8, and to the T2
averaged into 5 mm slices, in two ways: ``acquired`` (the T1 averaged over the input's voxels
first, as `mrisr upscale --register` does) and ``isotropic`` (an isotropic copy of the T1 at
about the input's resolution, as the diffusion path does). Printed per case: the correction
(translation in mm, rotation in degrees), the largest displacement it causes over a box of
+-60 x +-70 x +-40 mm around the image centre (how far it moves the anatomy), and the largest
displacement between it and the full-resolution correction (how far the LR estimate is off).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def box_points(affine: np.ndarray, shape) -> np.ndarray:
    centre = affine @ np.r_[(np.asarray(shape[:3]) - 1) / 2.0, 1.0]
    pts = np.array([[x, y, z, 0.0] for x in (-60, 60) for y in (-70, 70) for z in (-40, 40)]).T
    return pts + centre[:, None]


def max_displacement(a: np.ndarray, b: np.ndarray, pts: np.ndarray) -> float:
    return float(np.abs((a - b) @ pts)[:3].max())


def report(label: str, name: str, transform: np.ndarray, full: np.ndarray, pts: np.ndarray,
           seconds: float) -> None:
    cos = np.clip((np.trace(transform[:3, :3]) - 1) / 2, -1.0, 1.0)
    print(f"| {label} | {name} | {np.round(transform[:3, 3], 2).tolist()} | "
          f"{np.degrees(np.arccos(cos)):.2f} | "
          f"{max_displacement(transform, np.eye(4), pts):.2f} | "
          f"{max_displacement(transform, full, pts):.2f} | {seconds:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("MRISR_DATA", "../shared/data"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from mrisr.data.registration import register_rigid
    from mrisr.degradation import degrade_volume
    from mrisr.io import load_nifti

    torch.set_num_threads(args.threads)
    root = Path(args.data)
    subjects = {
        "ixi002 (separate series)": (root / "ixi002/hd_bet_IXI002-Guys-0828-T2.nii.gz",
                                     root / "ixi002/hd_bet_IXI002-Guys-0828-T1.nii.gz"),
        "brats18 TCIA13_623 (co-registered)": (
            root / "brats18-tcia/Brats18_TCIA13_623_1/Brats18_TCIA13_623_1_t2.nii.gz",
            root / "brats18-tcia/Brats18_TCIA13_623_1/Brats18_TCIA13_623_1_t1.nii.gz")}
    print("| subject | input | translation (mm) | rotation (deg) | moves anatomy by (mm) "
          "| off the full-resolution estimate by (mm) | time (s) |")
    print("|---|---|---|---|---|---|---|")
    for label, (t2_path, t1_path) in subjects.items():
        if not t2_path.exists() or not t1_path.exists():
            print(f"| {label} | missing under {root} | | | | | |")
            continue
        t2, t1 = load_nifti(t2_path), load_nifti(t1_path)
        pts = box_points(t2.affine, t2.data.shape)
        full = {}
        for scale, kind in ((1, None), (2, "kspace"), (4, "kspace"), (8, "kspace"),
                            ((1, 1, 5), "thick_slice")):
            if kind is None:
                data, affine = t2.data, t2.affine
                name = "full resolution"
            elif kind == "kspace":
                data, affine = degrade_volume(t2.data.astype(np.float32), t2.affine,
                                              (scale, scale, 1), kind=kind)
                name = f"x{scale} in-plane"
            else:
                data, affine = degrade_volume(t2.data.astype(np.float32), t2.affine, scale,
                                              kind=kind)
                name = "5 mm slices"
            for matched in (True, False):
                t0 = time.perf_counter()
                transform = register_rigid(t1, np.abs(data).astype(np.float32), affine,
                                           match_acquisition=matched)
                seconds = time.perf_counter() - t0
                full.setdefault(matched, transform)
                report(label, f"{name}, {'acquired' if matched else 'isotropic'}", transform,
                       full[matched], pts, seconds)


if __name__ == "__main__":
    main()
