"""Where does the data-consistency projection help? brats18-tcia T2 volumes degraded by the
acquisition models that ``mrisr upscale --consistency`` enforces, upscaled back to 1 mm by cubic
interpolation and by the shipped ``dualarbnet_s`` (T1 of the same patient as reference), each
without projection and with it.

    OMP_NUM_THREADS=1 python benchmarks/consistency.py --threads 1

(a) in-plane: the T2 degraded by the grid-aligned k-space crop x2 and x4
    (``degrade_volume(kind="kspace")``, magnitude stored as NIfTI would), projections ``none``
    and ``kspace`` (what ``auto`` chooses there).
(b) thick slices: the T2 averaged into 3 mm and 5 mm slices (``kind="thick_slice"``, box
    profile, scale (1, 1, 3) and (1, 1, 5): 52 and 31 slices), projections ``none``,
    ``slice_box`` (what ``auto`` chooses; minimum-norm correction), ``slice_box+spline`` (the
    same constraint, correction spread by cubic B-spline, ``project(correction="spline")``)
    and ``slice_gaussian`` (a profile the data were not made with: what a wrong model costs).

To keep the run within minutes on one CPU thread, (a) uses a central slab of ``--slab`` (24)
axial slices (the degradation is in-plane, so the slab of the degraded volume is the degraded
slab) and (b) a central band of ``--rows`` (24) coronal rows (the degradation is along z; the
model runs on those coronal slices, as ``mrisr upscale`` chooses for through-plane upscaling).
The model runs once per case through ``mrisr.inference.upscale.upscale(consistency="none")``;
the projections are then applied with ``apply_consistency``, the function that ``upscale``
applies to its output (so each row equals ``upscale(consistency=...)``). Cubic interpolation is
``spline_resize(order=3)`` clipped at 0, as the model-free path of ``mrisr upscale``.

Metrics, means over the last ``--patients`` (2) test patients by name:

* PSNR brain / all: PSNR inside the brain mask (truth > 0) and over the whole evaluated region
  (slab or rows); peak = the maximum of the patient's whole T2 volume.
* T1 edges: PSNR on the brain voxels with the 10 % largest T1 gradient magnitudes (where a
  reference-guided model can print reference edges into the output).
* dPSNR min: the smallest per-patient change of PSNR brain against ``none`` of the same method.
* mismatch: ``||lr - D(sr)|| / ||lr||`` under the case's true acquisition model (k-space crop,
  box profile), without projection -> with it.
* (b) slice brightness: the error of each output slice's mean inside the brain mask, in % of
  the truth's mean brain intensity; "periodic" is the peak-to-peak range of that error averaged
  by position within a thick slice (``round(f)`` bins of the fractional slice position), with
  its noise level (the mean standard error of the bins) after "+-"; "std" is its standard
  deviation over slices.
* (b) coincident slices: output slices whose centre lies within 0.25 voxel of a measured
  slice's centre: their PSNR against the truth (brain mask) and their relative L2 difference
  from the measured slice (brain mask, %; the truth's own difference, partial volume within the
  thick slice, is given in the row "truth").
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mrisr.config import data_root
from mrisr.degradation import degrade_volume, spline_resize
from mrisr.degradation.consistency import consistency_mismatch, project
from mrisr.evaluation.metrics import psnr
from mrisr.inference.upscale import apply_consistency, load_model, upscale
from mrisr.io import load_nifti
from mrisr.io.nifti import Volume


def crop(volume: Volume, box: tuple[slice, ...]) -> Volume:
    aff = volume.affine.copy()
    aff[:3, 3] = volume.affine[:3, :3] @ [b.start or 0 for b in box] + volume.affine[:3, 3]
    return Volume(np.ascontiguousarray(volume.data[box]), aff)


def edge_mask(t1: np.ndarray, brain: np.ndarray) -> np.ndarray:
    grad = np.sqrt(sum(g ** 2 for g in np.gradient(t1.astype(np.float64))))
    cut = np.quantile(grad[brain], 0.9)
    return brain & (grad >= cut)


def scores(sr: np.ndarray, truth: np.ndarray, brain: np.ndarray, edges: np.ndarray,
           peak: float) -> dict:
    return {"brain": psnr(sr, truth, peak, brain), "all": psnr(sr, truth, peak),
            "edges": psnr(sr, truth, peak, edges)}


def slice_stats(sr: np.ndarray, truth: np.ndarray, lr: np.ndarray, brain: np.ndarray,
                peak: float) -> dict:
    """Brightness per output slice and the coincident slices (axis 2 is the thick axis)."""
    n, m = truth.shape[2], lr.shape[2]
    f = n / m
    keep = [k for k in range(n) if brain[..., k].sum() > 100]
    level = truth[brain].mean()
    error = np.array([(sr[..., k] - truth[..., k])[brain[..., k]].mean() / level
                      for k in keep])
    position = (((np.array(keep) + 0.5) / f) % 1.0 * round(f)).astype(int)
    bins = [error[position == b] for b in range(round(f)) if np.any(position == b)]
    by_bin = [b.mean() for b in bins]
    pairs = []
    for j in range(m):
        centre = (j + 0.5) * f - 0.5
        k = int(round(centre))
        if abs(k - centre) < 0.25 and k in keep:
            pairs.append((k, j))
    ks = [k for k, _ in pairs]
    sub_mask = brain[..., ks]
    measured = np.stack([lr[..., j] for _, j in pairs], axis=-1)
    diff = np.linalg.norm((sr[..., ks] - measured)[sub_mask]) / np.linalg.norm(measured[sub_mask])
    return {"periodic": 100 * (max(by_bin) - min(by_bin)),
            "noise": 100 * float(np.mean([b.std() / np.sqrt(len(b)) for b in bins])),
            "std": 100 * error.std(),
            "coinc_psnr": psnr(sr[..., ks], truth[..., ks], peak, sub_mask),
            "coinc_vs_measured": 100 * diff}


def run_case(method: str, lr: Volume, t1: Volume, truth: np.ndarray, pack, plane: str,
             projections: list[str]) -> dict[str, tuple[np.ndarray, dict]]:
    """Upscale once, then apply each projection to a copy; returns name -> (sr, report).
    ``NAME+spline``: ``project(NAME, correction="spline")``."""
    if method == "cubic":
        if plane == "axial":
            moved = np.moveaxis(lr.data, 2, 0)
            base = np.moveaxis(spline_resize(moved, truth.shape[:2], order=3), 0, 2)
        else:
            base = spline_resize(lr.data, truth.shape[2:], order=3)
        base = np.clip(base, 0, None).astype(np.float32)
    else:
        base = upscale(lr, t1, shape=truth.shape, device="cpu", plane=plane, loaded_model=pack,
                       consistency="none").data
    out = {}
    for name in projections:
        sr = base.copy()
        if name.endswith("+spline"):
            report: dict = {}
            project(sr, lr.data, name.split("+")[0], correction="spline", out=sr, report=report)
        else:
            report = apply_consistency(sr, lr.data, name)
        out[name] = (sr, report)
    return out


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--patients", type=int, default=2, help="the last N patients by name")
    parser.add_argument("--slab", type=int, default=24, help="axial slices for (a)")
    parser.add_argument("--rows", type=int, default=24, help="coronal rows for (b)")
    parser.add_argument("--model", default="dualarbnet_s")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(data_root()) / "brats18-tcia"
    if not root.is_dir():
        print(f"skipped: {root} not found (set MRISR_DATA)")
        return
    patients = sorted(p.name for p in root.iterdir() if p.is_dir())[-args.patients:]
    pack = load_model(args.model, has_reference=True)
    t_start = time.perf_counter()
    rows_a: dict = {}
    rows_b: dict = {}
    truth_b: dict = {}
    for pid in patients:
        t2 = load_nifti(root / pid / f"{pid}_t2.nii.gz")
        t1 = load_nifti(root / pid / f"{pid}_t1.nii.gz")
        peak = float(t2.data.max())
        nx, ny, nz = t2.spatial_shape
        # (a) in-plane k-space crop, central axial slab.
        z0 = nz // 2 - args.slab // 2
        box = (slice(None), slice(None), slice(z0, z0 + args.slab))
        hr, ref = crop(t2, box), crop(t1, box)
        brain = hr.data > 0
        edges = edge_mask(ref.data, brain)
        for s in (2, 4):
            data, aff = degrade_volume(hr.data, hr.affine, (s, s, 1), kind="kspace")
            lr = Volume(data, aff)
            for method in ("cubic", args.model):
                results = run_case(method, lr, ref, hr.data, pack, "axial", ["none", "kspace"])
                before = consistency_mismatch(results["none"][0], data, "kspace")
                for name, (sr, _) in results.items():
                    rows_a.setdefault((f"x{s}", method, name), []).append(
                        {**scores(sr, hr.data, brain, edges, peak),
                         "mismatch": (before, consistency_mismatch(sr, data, "kspace"))})
            print(f"  {pid} (a) x{s} done at {time.perf_counter() - t_start:.0f} s", flush=True)
        # (b) thick slices, central coronal rows.
        y0 = ny // 2 - args.rows // 2
        box = (slice(None), slice(y0, y0 + args.rows), slice(None))
        hr, ref = crop(t2, box), crop(t1, box)
        brain = hr.data > 0
        edges = edge_mask(ref.data, brain)
        for s in (3, 5):
            data, aff = degrade_volume(hr.data, hr.affine, (1, 1, s), kind="thick_slice")
            lr = Volume(data, aff)
            truth_b.setdefault(f"{s} mm", []).append(
                slice_stats(hr.data, hr.data, data, brain, peak))
            for method in ("cubic", args.model):
                results = run_case(method, lr, ref, hr.data, pack, "coronal",
                                   ["none", "slice_box", "slice_box+spline",
                                    "slice_gaussian"])
                before = consistency_mismatch(results["none"][0], data, "slice_box")
                for name, (sr, _) in results.items():
                    rows_b.setdefault((f"{s} mm", method, name), []).append(
                        {**scores(sr, hr.data, brain, edges, peak),
                         **slice_stats(sr, hr.data, data, brain, peak),
                         "mismatch": (before, consistency_mismatch(sr, data, "slice_box"))})
            print(f"  {pid} (b) {s} mm done at {time.perf_counter() - t_start:.0f} s",
                  flush=True)

    def mean(values, key):
        return float(np.mean([v[key] for v in values]))

    def delta_min(table, key, values):
        base = table[(key[0], key[1], "none")]
        return min(v["brain"] - b["brain"] for v, b in zip(values, base))

    print(f"\npatients: {', '.join(patients)}; {time.perf_counter() - t_start:.0f} s, "
          f"{args.threads} thread(s)")
    print(f"\n(a) in-plane k-space crop, central {args.slab}-slice axial slab\n")
    print("| scale | method | projection | PSNR brain | PSNR all | T1 edges | dPSNR min | "
          "mismatch before -> after |")
    print("|---|---|---|---|---|---|---|---|")
    for key, values in rows_a.items():
        mm = np.mean([v["mismatch"] for v in values], axis=0)
        print(f"| {key[0]} | {key[1]} | {key[2]} | {fmt(mean(values, 'brain'))} | "
              f"{fmt(mean(values, 'all'))} | {fmt(mean(values, 'edges'))} | "
              f"{fmt(delta_min(rows_a, key, values), 3)} | "
              f"{100 * mm[0]:.2f} % -> {100 * mm[1]:.2f} % |")
    print(f"\n(b) thick slices (box profile), central {args.rows} coronal rows\n")
    print("| slices | method | projection | PSNR brain | PSNR all | T1 edges | dPSNR min | "
          "slice brightness periodic (%) | slice brightness std (%) | coincident PSNR | "
          "coincident vs measured (%) | mismatch before -> after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for thick, values in truth_b.items():
        print(f"| {thick} | truth | - | - | - | - | - | 0 | 0 | - | "
              f"{fmt(mean(values, 'coinc_vs_measured'))} | - |")
    for key, values in rows_b.items():
        mm = np.mean([v["mismatch"] for v in values], axis=0)
        print(f"| {key[0]} | {key[1]} | {key[2]} | {fmt(mean(values, 'brain'))} | "
              f"{fmt(mean(values, 'all'))} | {fmt(mean(values, 'edges'))} | "
              f"{fmt(delta_min(rows_b, key, values), 3)} | {fmt(mean(values, 'periodic'))} "
              f"+- {fmt(mean(values, 'noise'))} | "
              f"{fmt(mean(values, 'std'))} | {fmt(mean(values, 'coinc_psnr'))} | "
              f"{fmt(mean(values, 'coinc_vs_measured'))} | "
              f"{100 * mm[0]:.2f} % -> {100 * mm[1]:.2f} % |")


if __name__ == "__main__":
    main()
