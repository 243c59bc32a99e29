#!/usr/bin/env python
"""Does `mrisr upscale`'s default registration invent motion, and does it find real motion?
(docs/benchmarks/cross_dataset.md, "Registration that does not invent motion")

    OMP_NUM_THREADS=1 python benchmarks/registration_decision.py [--data ../shared/data]
        [--sets brats,ixi,head,phantom] [--threads 1] [--csv results/registration/cases.csv]

Co-registered pairs, each degraded the ways users bring them: 3, 5 and 7 mm slices (box
profile along the acquisition's slice axis) and x2, x4 and x8 in-plane (k-space crop):

* **brats**: a brats18 test patient (TCIA13_623), T2 <- T1, one grid (co-registered by BraTS);
  cropped to the brain plus 8 voxels;
* **ixi**: ixi002, T2 <- T1 on the T1's own grid (sagittal, 1.2 mm): the T1's header is first
  corrected by a registration at full resolution (the "truth" of this set), so that the pair is
  co-registered as another pipeline would deliver it;
* **head**: the whole-head Philips MPRAGE (skull, face, background), its reference a random
  remapping of its own intensities (`random_contrast`, seed 7), sagittal slices;
* **phantom**: the embedded phantom, T2 <- T1 (1.5 x 1.5 x 2 mm).

Then the same references with headers off by known rigid motions, sized in reference voxels
(``tol``: its largest voxel size): a shift of 2 voxels, a shift of 2 voxels with a tilt, a
rotation that moves the brain's farthest point by 2.5 voxels (rotations about the brain); and,
for ixi, the header as the files have it (1.2 mm and 0.9 degrees off the full-resolution
registration). Each case runs :func:`mrisr.inference.decisions.register_reference` with
``mode="auto"``, as `mrisr upscale` does by default. Printed per case: the true motion and the
estimate (largest displacement of the input's foreground, mm), how far the reference's voxels
are from where they belong after the decision (corrected or not), the MI evidence (gain of the
estimate over the header, the mean MI cost of one voxel of motion, their ratio) and the
decision; then the counts: false
corrections (co-registered pairs corrected), recoveries (known motions corrected to within one
reference voxel), misses. Last, the cost of the decision on a 120 x 120 x 40 input (a brats
slab, x2 in-plane) with its co-registered T1.
"""
from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np

DEGRADATIONS = (("3 mm", 3.0), ("5 mm", 5.0), ("7 mm", 7.0), ("x2", 2), ("x4", 4), ("x8", 8))


def crop_to(mask: np.ndarray, affine: np.ndarray, margin: int, *arrays):
    """The arrays cropped to ``mask``'s bounding box plus ``margin`` voxels, and its affine."""
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    moved = np.array(affine, dtype=np.float64)
    moved[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return moved, [a[box] for a in arrays]


def load_sets(root: Path, names: list[str]) -> dict:
    """name -> (target data, target affine, co-registered reference Volume, slice axis, truth
    of the header as the files have it (ixi) or None)."""
    from mrisr.data.phantom import make_brain_phantom
    from mrisr.data.registration import register_rigid
    from mrisr.data.synthetic import random_contrast
    from mrisr.io.nifti import Volume, load_nifti

    out = {}
    stem = root / "brats18-tcia/Brats18_TCIA13_623_1/Brats18_TCIA13_623_1_"
    if "brats" in names and Path(f"{stem}t2.nii.gz").exists():
        t2, t1 = load_nifti(f"{stem}t2.nii.gz"), load_nifti(f"{stem}t1.nii.gz")
        affine, (d, r) = crop_to(t2.data > 0, t2.affine, 8, t2.data.astype(np.float32),
                                 t1.data.astype(np.float32))
        out["brats"] = (d, affine, Volume(r, affine, None, "brats t1"), 2, None)
    t2_path = root / "ixi002/hd_bet_IXI002-Guys-0828-T2.nii.gz"
    if "ixi" in names and t2_path.exists():
        t2 = load_nifti(t2_path)
        t1 = load_nifti(root / "ixi002/hd_bet_IXI002-Guys-0828-T1.nii.gz")
        truth = register_rigid(t1, t2.data.astype(np.float32), t2.affine,
                               match_acquisition=True)
        affine, (d,) = crop_to(t2.data > 0, t2.affine, 8, t2.data.astype(np.float32))
        aligned = Volume(t1.data.astype(np.float32), np.linalg.solve(truth, t1.affine), None,
                         "ixi t1")
        out["ixi"] = (d, affine, aligned, 2, truth)
    head = root / "dwi-philips-3t/1301_WIP_ADNI_Sag3D_MPRAGE.nii.gz"
    if "head" in names and head.exists():
        h = load_nifti(head)
        data = h.data.astype(np.float32)
        affine, (d,) = crop_to(data > 0.05 * np.percentile(data, 99), h.affine, 4, data)
        ref = random_contrast(d, np.random.default_rng(7)).astype(np.float32)
        out["head"] = (d, affine, Volume(ref, affine, None, "head synthetic"), 0, None)
    if "phantom" in names:
        ph = make_brain_phantom(shape=(128, 128, 64), voxel_size=(1.5, 1.5, 2.0), seed=0)
        out["phantom"] = (ph.t2w, ph.affine, Volume(ph.t1w, ph.affine, None, "phantom t1"), 2,
                          None)
    return out


def degrade_case(data: np.ndarray, affine: np.ndarray, axis: int, job: tuple):
    from mrisr.degradation import degrade_volume
    from mrisr.grid import voxel_sizes

    name, value = job
    scale = [1.0, 1.0, 1.0]
    if name.endswith("mm"):
        scale[axis] = value / float(voxel_sizes(affine)[axis])
        lr, lr_affine = degrade_volume(data, affine, tuple(scale), kind="thick_slice")
    else:
        scale = [float(value)] * 3
        scale[axis] = 1.0
        lr, lr_affine = degrade_volume(data, affine, tuple(scale), kind="kspace")
    return np.abs(lr).astype(np.float32), lr_affine


def motions(points: np.ndarray, tol: float, files_truth) -> dict:
    """Known motions (world maps: the header claims the reference lies where they put it)."""
    from mrisr.data.registration import rigid_map

    centre = points[:3].mean(axis=1)
    radius = float(np.linalg.norm(points[:3] - centre[:, None], axis=0).max())
    out = {"co-registered": np.eye(4),
           "shift 2 voxels": rigid_map((2 * tol, 0.0, 0.0)),
           "shift 2 voxels + tilt": rigid_map((0.0, 0.0, 2 * tol)) @ rigid_map(
               axis=0, angle=1.25 * tol / radius, centre=centre),
           "rotation 2.5 voxels": rigid_map(axis=2, angle=2.5 * tol / radius,
                                            centre=centre)}
    if files_truth is not None:
        out["header as in the files"] = files_truth
    return out


def slab_cost(root: Path) -> str:
    """Seconds of the default decision on a 120 x 120 x 40 input (brats, 40 central slices,
    x2 in-plane) with its co-registered 1 mm T1."""
    from mrisr.degradation import degrade_volume
    from mrisr.inference.decisions import register_reference
    from mrisr.io.nifti import Volume, load_nifti

    stem = root / "brats18-tcia/Brats18_TCIA13_623_1/Brats18_TCIA13_623_1_"
    if not Path(f"{stem}t2.nii.gz").exists():
        return "brats18-tcia missing"
    t2, t1 = load_nifti(f"{stem}t2.nii.gz"), load_nifti(f"{stem}t1.nii.gz")
    z0 = t2.data.shape[2] // 2 - 20
    affine = np.array(t2.affine, dtype=np.float64)
    affine[:3, 3] += affine[:3, 2] * z0
    slab = t2.data[..., z0:z0 + 40].astype(np.float32)
    lr, lr_affine = degrade_volume(slab, affine, (2, 2, 1), kind="kspace")
    t0 = time.perf_counter()
    _, decision = register_reference(Volume(t1.data.astype(np.float32), t1.affine, None, "t1"),
                                     np.abs(lr), lr_affine, "auto")
    return (f"{tuple(lr.shape)} input, {time.perf_counter() - t0:.1f} s, "
            f"decision: {decision.choice} ({decision.reason})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("MRISR_DATA", "../shared/data"))
    parser.add_argument("--sets", default="brats,ixi,head,phantom")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--csv", default="results/registration/cases.csv")
    args = parser.parse_args()

    import torch

    from mrisr.data.registration import foreground_points, largest_displacement
    from mrisr.grid import voxel_sizes
    from mrisr.inference.decisions import register_reference
    from mrisr.io.nifti import Volume

    torch.set_num_threads(args.threads)
    root = Path(args.data)
    rows = []
    print("| set | input | motion | true (mm) | estimate (mm) | left after the decision (mm) "
          "| MI gain | MI cost of a voxel | ratio | decision | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (data, affine, reference, axis, truth) in load_sets(
            root, args.sets.split(",")).items():
        tol = float(voxel_sizes(reference.affine).max())
        for job in DEGRADATIONS:
            lr, lr_affine = degrade_case(data, affine, axis, job)
            points = foreground_points(lr, lr_affine)
            for label, motion in motions(points, tol, truth).items():
                # The header claims the anatomy lies where `motion` puts it.
                moved = Volume(reference.data, motion @ reference.affine, None, reference.path)
                t0 = time.perf_counter()
                used, decision = register_reference(moved, lr, lr_affine, "auto")
                seconds = time.perf_counter() - t0
                ev = decision.evidence
                # Where the reference's voxels end up, against where they belong.
                residual = largest_displacement(used.affine @ np.linalg.inv(reference.affine),
                                                points)
                row = {"set": name, "input": job[0], "motion": label, "tol": tol,
                       "true_mm": largest_displacement(motion, points),
                       "estimate_mm": ev["moves_mm"], "residual_mm": residual,
                       "mi_gain": ev.get("mi_gain"), "mi_cost": ev.get("mi_drop_at_tolerance"),
                       "decision": decision.choice, "seconds": seconds}
                rows.append(row)
                gain, cost = row["mi_gain"], row["mi_cost"]
                print(f"| {name} | {job[0]} | {label} | {row['true_mm']:.2f} | "
                      f"{row['estimate_mm']:.2f} | {residual:.2f} | "
                      f"{'-' if gain is None else f'{gain:.4f}'} | "
                      f"{'-' if cost is None else f'{cost:.4f}'} | "
                      f"{'-' if gain is None else f'{gain / cost:.2f}'} | "
                      f"{decision.choice} | {seconds:.1f} |", flush=True)
    false = [r for r in rows if r["motion"] == "co-registered" and r["decision"] != "header"]
    known = [r for r in rows if r["motion"] != "co-registered"]
    recovered = [r for r in known if r["decision"] == "corrected" and r["residual_mm"] < r["tol"]]
    print(f"\nco-registered pairs: {len(rows) - len(known)}, false corrections: {len(false)}")
    print(f"known motions: {len(known)}, recovered to within one reference voxel: "
          f"{len(recovered)}, missed: {len(known) - len(recovered)}")
    print(f"cost on a slab: {slab_cost(root)}")
    out = Path(args.csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
