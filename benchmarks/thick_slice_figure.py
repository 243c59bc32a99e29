"""Figure: three artefacts of thick-slice upscaling, and whether a method removes them.

A T2w volume is averaged into slices ``--factor`` times thicker along z (box slice profile,
``degrade_volume(kind="thick_slice")``) and upscaled back to its own grid by cubic
interpolation and by each ``MODEL:CONSISTENCY`` of ``--models``, all through
``mrisr.inference.upscale.upscale`` (the path of ``mrisr upscale``) with the full-resolution
T1w as reference.

    python benchmarks/thick_slice_figure.py --data phantom --factor 5 \\
        --models dualarbnet_s:none,dualarbnet_s:auto -o thick_slice_phantom.png

The artefacts, and where the figure shows them:

1. ringing: thin dark contour lines just inside bright structures at the reference's edges
   (top row: a coronal slice, z vertical, through the ventricles; second row: the boxed region
   around them, enlarged);
2. slice-periodic brightness: the mean brightness of output slices drops between measured
   slices with the period of the thickness factor (bottom: the mean inside the brain of every
   output slice divided by the truth's, against z, measured slice centres marked; horizontal
   bands in the error maps);
3. output slices that coincide with measured ones differ from them (table).

Data (``--data``):

* ``phantom``: ``make_brain_phantom(shape=(128, 128, 80), voxel_size=(1.2, 1.2, 1.2),
  seed=3)``; brain mask: the phantom's ``brain_mask``;
* ``brats``: test patient ``$MRISR_DATA/brats18-tcia/Brats18_TCIA10_628_1`` (T2 target, T1
  reference, 1 mm), cropped to the brain's bounding box plus ``--margin`` voxels (z extended to
  a multiple of the factor); brain mask: T2 > 0.

Printed table, per method (volume metrics inside the brain mask; slices with at least 20 % of
the largest slice's brain voxels):

* PSNR / SSIM: peak = the truth's range inside the brain (as ``mrisr demo``);
* brightness residual std / periodic p-p: ``r(z)`` = mean of the output slice inside the brain
  / the truth's; residual = ``r`` minus its moving average over one thick slice (box of
  ``factor`` slices, half weights at the ends for even factors), which removes any trend slower
  than the slice period and leaves the slice-periodic part; "std" is its standard deviation
  and "periodic p-p" the peak-to-peak of its mean by position within the thick slice, both in %
  (first and last ``factor / 2`` slices left out, where the average is one-sided), with the
  noise level of those means (their mean standard error) after "+-"; a second table gives the
  means by position;
* coincident vs measured: the output slices nearest to measured slice centres against the
  measured slices, ``sum |out - measured| / sum measured`` inside the brain, in %; the truth's
  own value (partial volume within the thick slice) in the row "truth".

One CPU thread by default (``--threads``): about 30 s per model on the phantom and 70 s on the
brats crop (146x181x145), on a busy 2-core machine; cubic takes a second.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BRATS_PATIENT = "Brats18_TCIA10_628_1"
PHANTOM = dict(shape=(128, 128, 80), voxel_size=(1.2, 1.2, 1.2), seed=3)
#: slices with fewer brain voxels than this share of the fullest slice are left out
MIN_BRAIN_SHARE = 0.2
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f"]


@dataclass
class Case:
    """The truth, the reference, the brain mask and a description of one data set."""

    truth: np.ndarray
    reference: np.ndarray
    affine: np.ndarray
    mask: np.ndarray
    label: str


def parse_models(text: str) -> list[tuple[str, str]]:
    """``"A:none,B:auto,C"`` -> ``[("A", "none"), ("B", "auto"), ("C", "auto")]``; the
    consistency is what follows the last colon, so checkpoint paths may hold colons."""
    from mrisr.inference.upscale import DEFAULT_CONSISTENCY, check_consistency

    specs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        model, sep, consistency = item.rpartition(":")
        if not sep:
            model, consistency = item, DEFAULT_CONSISTENCY
        specs.append((model, check_consistency(consistency)))
    return specs


def crop_box(mask: np.ndarray, margin: int, factor: float) -> tuple[slice, ...]:
    """The mask's bounding box plus ``margin`` voxels; z grown (or, at the volume's ends,
    shrunk) to a multiple of the factor when it is an integer, so thick slices tile it."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        lo, hi = max(0, hits[0] - margin), min(mask.shape[axis], hits[-1] + 1 + margin)
        box.append([lo, hi])
    step = int(round(factor))
    if abs(factor - step) < 1e-9 and step > 1:
        lo, hi = box[2]
        need = -(hi - lo) % step
        lo, hi = max(0, lo - need // 2), hi + (need - need // 2)
        if hi > mask.shape[2]:
            lo, hi = max(0, lo - (hi - mask.shape[2])), mask.shape[2]
        hi -= (hi - lo) % step
        box[2] = [lo, hi]
    return tuple(slice(int(lo), int(hi)) for lo, hi in box)


def load_case(data: str, factor: float, margin: int) -> Case:
    if data == "phantom":
        from mrisr.data.phantom import make_brain_phantom

        ph = make_brain_phantom(**PHANTOM)
        shape = "x".join(map(str, PHANTOM["shape"]))
        return Case(ph.t2w, ph.t1w, ph.affine, ph.brain_mask,
                    f"phantom (seed {PHANTOM['seed']}) T2w {shape}, "
                    f"{PHANTOM['voxel_size'][0]:g} mm")
    from mrisr.config import data_root
    from mrisr.io import load_nifti

    folder = Path(data_root()) / "brats18-tcia" / BRATS_PATIENT
    files = {kind: sorted(folder.glob(f"*_{kind}.nii.gz")) for kind in ("t2", "t1")}
    if not folder.is_dir():
        sys.exit(f"{folder}: not found (set MRISR_DATA to the folder that holds brats18-tcia/)")
    if not all(files.values()):
        sys.exit(f"{folder}: no *_t2.nii.gz and *_t1.nii.gz in it")
    t2, t1 = load_nifti(files["t2"][0]), load_nifti(files["t1"][0])
    if t2.spatial_shape != t1.spatial_shape or not np.allclose(t2.affine, t1.affine, atol=1e-3):
        sys.exit(f"{folder}: T1 and T2 are not on one grid")
    box = crop_box(t2.data > 0, margin, factor)
    affine = t2.affine.copy()
    affine[:3, 3] = t2.affine[:3, :3] @ [b.start for b in box] + t2.affine[:3, 3]
    truth = np.ascontiguousarray(t2.data[box], dtype=np.float32)
    shape = "x".join(str(b.stop - b.start) for b in box)
    return Case(truth, np.ascontiguousarray(t1.data[box], dtype=np.float32), affine, truth > 0,
                f"brats18 {BRATS_PATIENT} T2, crop {shape} of "
                f"{'x'.join(map(str, t2.spatial_shape))}, 1 mm")


# -- measurements ----------------------------------------------------------------------------

def kept_slices(mask: np.ndarray) -> np.ndarray:
    counts = mask.sum(axis=(0, 1))
    return np.flatnonzero(counts >= MIN_BRAIN_SHARE * counts.max())


def brightness_ratio(sr: np.ndarray, truth: np.ndarray, mask: np.ndarray,
                     slices: np.ndarray) -> np.ndarray:
    """Mean of each output slice inside the brain divided by the truth's."""
    return np.array([sr[..., k][mask[..., k]].mean() / truth[..., k][mask[..., k]].mean()
                     for k in slices])


def thick_slice_average(values: np.ndarray, f: float) -> np.ndarray:
    """Moving average over a box one thick slice (``f`` slices) wide; ends padded with the
    end values."""
    half = f / 2
    reach = int(np.ceil(half - 0.5 + 1e-9))
    offsets = np.arange(-reach, reach + 1)
    weights = np.clip(np.minimum(offsets + 0.5, half) - np.maximum(offsets - 0.5, -half), 0, None)
    weights /= weights.sum()
    padded = np.pad(values, reach, mode="edge")
    return np.convolve(padded, weights[::-1], mode="valid")


def periodicity(ratio: np.ndarray, slices: np.ndarray, f: float) -> dict:
    """Std of the detrended brightness ratio, its mean by position within the thick slice
    (``round(f)`` bins of the fractional slice position, the measured centre in the middle),
    the peak-to-peak of those means and their mean standard error (noise level), in %."""
    residual = ratio - thick_slice_average(ratio, f)
    edge = int(np.ceil(f / 2))
    inner = slice(edge, len(ratio) - edge) if len(ratio) > 2 * edge + 1 else slice(None)
    res, ks = residual[inner], slices[inner]
    n_bins = max(1, int(round(f)))
    position = np.minimum((((ks + 0.5) / f) % 1.0 * n_bins).astype(int), n_bins - 1)
    bins = [res[position == b] for b in range(n_bins)]
    means = [100 * float(b.mean()) if b.size else float("nan") for b in bins]
    noise = [100 * float(b.std() / np.sqrt(b.size)) for b in bins if b.size > 1]
    return {"std": 100 * float(res.std()), "p2p": float(np.nanmax(means) - np.nanmin(means)),
            "noise": float(np.mean(noise)) if noise else float("nan"), "by_position": means}


def coincident_pairs(n: int, m: int, mask: np.ndarray) -> list[tuple[int, int]]:
    """(output slice, measured slice): the output slice nearest each measured slice's centre
    (``(j + 0.5) f - 0.5`` on the output grid), for slices with enough brain."""
    f = n / m
    keep = set(kept_slices(mask).tolist())
    pairs = []
    for j in range(m):
        k = int(np.floor((j + 0.5) * f - 0.5 + 0.5))
        if k in keep:
            pairs.append((k, j))
    return pairs


def coincident_difference(sr: np.ndarray, lr: np.ndarray, mask: np.ndarray,
                          pairs: list[tuple[int, int]]) -> float:
    diff = total = 0.0
    for k, j in pairs:
        m = mask[..., k]
        diff += float(np.abs(sr[..., k][m] - lr[..., j][m]).sum())
        total += float(np.abs(lr[..., j][m]).sum())
    return 100 * diff / total


def volume_scores(sr: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict:
    import torch

    from mrisr.evaluation.metrics import psnr, ssim

    peak = float(truth[mask].max() - truth[mask].min())
    p, t, m = torch.from_numpy(sr), torch.from_numpy(truth), torch.from_numpy(mask)
    return {"psnr": psnr(p, t, peak, mask=m), "ssim": ssim(p, t, peak, mask=m)}


# -- figure ----------------------------------------------------------------------------------

def ventricle_view(truth: np.ndarray, mask: np.ndarray, voxel_mm: float
                   ) -> tuple[int, tuple[slice, slice], tuple[slice, slice]]:
    """The coronal index through the ventricles (the brightest T2 voxels deep inside the
    brain), the displayed part of that slice (the brain plus a margin; rows, columns of the
    rotated slice) and a square box around the ventricles within it."""
    from scipy.ndimage import binary_fill_holes, distance_transform_edt

    filled = binary_fill_holes(mask)
    depth = distance_transform_edt(filled) * voxel_mm
    inner = depth > min(15.0, 0.35 * depth.max())
    bright = inner & (truth >= np.quantile(truth[inner], 0.97))
    counts = np.convolve(bright.sum(axis=(0, 2)), np.ones(5), mode="same")
    y = int(np.argmax(counts))

    def rot(img):
        return np.rot90(img[:, y, :])

    rows_any = np.flatnonzero(rot(filled).any(axis=1))
    cols_any = np.flatnonzero(rot(filled).any(axis=0))
    h, w = rot(filled).shape
    view = (slice(max(0, rows_any[0] - 3), min(h, rows_any[-1] + 4)),
            slice(max(0, cols_any[0] - 3), min(w, cols_any[-1] + 4)))
    spot = rot(bright)
    r, c = np.nonzero(spot)
    if r.size == 0:
        r, c = np.array([h // 2]), np.array([w // 2])
    extent = max(np.ptp(r), np.ptp(c)) + int(round(10 / voxel_mm))
    side = int(min(max(extent, round(28 / voxel_mm)), round(50 / voxel_mm),
                   view[0].stop - view[0].start, view[1].stop - view[1].start))
    # The square within the view that holds the most of those voxels (ties: the one nearest
    # their median), from a summed-area table.
    table = np.zeros((h + 1, w + 1))
    table[1:, 1:] = spot.cumsum(0).cumsum(1)
    r0 = np.arange(view[0].start, view[0].stop - side + 1)[:, None]
    c0 = np.arange(view[1].start, view[1].stop - side + 1)[None, :]
    inside = table[r0 + side, c0 + side] - table[r0, c0 + side] - table[r0 + side, c0] + \
        table[r0, c0]
    far = np.hypot(r0 + side / 2 - np.median(r), c0 + side / 2 - np.median(c))
    best = np.unravel_index(np.lexsort((far.ravel(), -inside.ravel()))[0], inside.shape)
    start_r, start_c = int(r0[best[0], 0]), int(c0[0, best[1]])
    return y, view, (slice(start_r, start_r + side), slice(start_c, start_c + side))


def make_figure(path: Path, case: Case, lr_near: np.ndarray, results: dict, scores: dict,
                ratios: dict, slices: np.ndarray, f: float, m: int, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from mrisr.grid import voxel_sizes
    from mrisr.io.atomic import atomic_path

    voxel = float(np.min(voxel_sizes(case.affine)))
    y, view, box = ventricle_view(case.truth, case.mask, voxel)

    def cut(img):
        return np.rot90(img[:, y, :])[view]
    rows = slice(box[0].start - view[0].start, box[0].stop - view[0].start)
    cols = slice(box[1].start - view[1].start, box[1].stop - view[1].start)
    truth = cut(case.truth)
    brain = cut(case.mask)
    panels = [("truth", truth)] + [(name, cut(img)) for name, img in results.items()]
    n = len(panels)
    vmax = float(np.percentile(truth[brain], 99.5))
    errors = {name: np.abs(img - truth) for name, img in panels[1:]}
    # One scale for every error map; the brain's outline (where the thick slices cut the
    # surface) saturates so that errors inside the brain stay visible.
    emax = float(np.percentile(np.concatenate([e[brain] for e in errors.values()]), 99))
    h, w = truth.shape
    panel_w = 2.35
    panel_h = panel_w * h / w
    fig = plt.figure(figsize=(panel_w * n + 0.9, 3 * panel_h + 2.6 + 1.0), layout="constrained")
    grid = fig.add_gridspec(4, n + 1, height_ratios=[panel_h + 0.35] * 3 + [2.4],
                            width_ratios=[1] * n + [0.06])
    err_axes = []
    shown = None
    for j, (name, img) in enumerate(panels):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        label = name if name == "truth" else \
            f"{name}\n{scores[name]['psnr']:.2f} dB / {scores[name]['ssim']:.4f}"
        ax.set_title(label, fontsize=8)
        ax.add_patch(Rectangle((cols.start - 0.5, rows.start - 0.5), cols.stop - cols.start,
                               rows.stop - rows.start, fill=False, edgecolor="yellow", lw=0.8))
        ax.axis("off")
        zoom = fig.add_subplot(grid[1, j])
        zoom.imshow(img[rows, cols], cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        zoom.set_xticks([])
        zoom.set_yticks([])
        for spine in zoom.spines.values():
            spine.set_edgecolor("yellow")
            spine.set_linewidth(1.2)
        if j == 0:
            zoom.set_ylabel("ventricles, enlarged", fontsize=8)
        err = fig.add_subplot(grid[2, j])
        err.axis("off")
        if name == "truth":
            err.imshow(cut(lr_near), cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            err.set_title(f"input: {m} thick slices (nearest)", fontsize=8)
        else:
            shown = err.imshow(errors[name], cmap="inferno", vmin=0, vmax=emax,
                               interpolation="nearest")
            err.set_title("|error|", fontsize=8)
            err_axes.append(err)
    if shown is not None:
        cax = fig.add_subplot(grid[2, n])
        bar = fig.colorbar(shown, cax=cax, extend="max")
        bar.ax.tick_params(labelsize=7)
        bar.set_label("|error|, one scale", fontsize=7)
    plot = fig.add_subplot(grid[3, :])
    centres = (np.arange(m) + 0.5) * f - 0.5
    inside = centres[(centres >= slices[0] - 0.5) & (centres <= slices[-1] + 0.5)]
    for c in inside:
        plot.axvline(c, color="0.8", lw=0.8, zorder=0)
    plot.axhline(1.0, color="black", lw=1.0, ls="--", label="truth")
    for (name, ratio), colour in zip(ratios.items(), COLOURS):
        plot.plot(slices, ratio, color=colour, lw=1.2, marker=".", ms=3,
                  label=name.replace("\n", " "))
    plot.plot([], [], color="0.8", lw=0.8, label="measured slice centres")
    plot.set_xlim(slices[0] - 1, slices[-1] + 1)
    plot.set_xlabel("output slice z (voxel index)", fontsize=8)
    plot.set_ylabel("mean in brain / truth's", fontsize=8)
    plot.set_title("slice brightness: mean of each output slice inside the brain, divided by "
                   "the truth's", fontsize=8)
    plot.tick_params(labelsize=7)
    plot.legend(fontsize=7, ncol=min(4, len(ratios) + 2), loc="best", framealpha=0.85)
    import textwrap

    width = int(fig.get_figwidth() * 14)  # characters of 9 pt text that fit across
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.split("\n")),
                 fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# -- main ------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("phantom", "brats"), default="phantom")
    parser.add_argument("--factor", type=float, default=5.0,
                        help="slice thickness factor along z (default 5)")
    parser.add_argument("--models", default="dualarbnet_s:none,dualarbnet_s:auto",
                        help="comma-separated MODEL:CONSISTENCY (preset or checkpoint path; "
                             "consistency none, auto, kspace, slice_box, slice_gaussian)")
    parser.add_argument("-o", "--output", required=True, help="PNG to write")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--margin", type=int, default=4,
                        help="brats: voxels around the brain's bounding box (default 4)")
    args = parser.parse_args()

    import torch

    from mrisr.degradation import degrade_volume, spline_resize
    from mrisr.errors import InputError
    from mrisr.inference.upscale import load_model, upscale
    from mrisr.io.nifti import Volume

    torch.set_num_threads(args.threads)
    out = Path(args.output)
    if not out.parent.is_dir():
        sys.exit(f"{out}: folder {out.parent} does not exist")
    if args.factor <= 1:
        sys.exit(f"--factor must be > 1, got {args.factor}")
    try:
        specs = parse_models(args.models)
    except InputError as exc:
        sys.exit(str(exc))
    packs = {}
    missing = set()
    for name, _ in specs:
        if name in packs or name in missing:
            continue
        try:
            packs[name] = load_model(name, has_reference=True)
        except InputError as exc:
            missing.add(name)
            print(f"skipped {name}: {exc}", file=sys.stderr)
    specs = [(name, c) for name, c in specs if name in packs]

    t_start = time.perf_counter()
    case = load_case(args.data, args.factor, args.margin)
    truth = case.truth
    lr, lr_affine = degrade_volume(truth, case.affine, (1, 1, args.factor), kind="thick_slice")
    n, m = truth.shape[2], lr.shape[2]
    f = n / m
    print(f"{case.label}; {m} slices {f:g}x thicker ({lr.shape}); T1w reference at full "
          f"resolution; {args.threads} thread(s)", flush=True)
    target, reference = Volume(lr, lr_affine), Volume(case.reference, case.affine)

    results: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    runs = [("cubic", "cubic", "none", None)] + \
        [(f"{name}\nconsistency {c}", name, c, packs[name]) for name, c in specs]
    for label, name, consistency, pack in runs:
        t0 = time.perf_counter()
        kwargs = {"loaded_model": pack} if pack is not None else {"model": name}
        result = upscale(target, reference, shape=truth.shape, consistency=consistency,
                         device=args.device, **kwargs)
        results[label] = np.asarray(result.data, dtype=np.float32)
        seconds[label] = time.perf_counter() - t0
        done = result.info.get("consistency", {})
        extra = ""
        if "mismatch_before" in done:
            extra = (f", mismatch {100 * done['mismatch_before']:.2f} % -> "
                     f"{100 * done['mismatch_after']:.2f} %")
        print(f"  {label.replace(chr(10), ', ')}: {seconds[label]:.0f} s (projection: "
              f"{done.get('model', '-')}{extra})", flush=True)

    slices = kept_slices(case.mask)
    pairs = coincident_pairs(n, m, case.mask)
    scores = {label: volume_scores(img, truth, case.mask) for label, img in results.items()}
    ratios = {label: brightness_ratio(img, truth, case.mask, slices)
              for label, img in results.items()}
    period = {label: periodicity(r, slices, f) for label, r in ratios.items()}
    coinc = {label: coincident_difference(img, lr, case.mask, pairs)
             for label, img in results.items()}

    offset = max(abs(k - ((j + 0.5) * f - 0.5)) for k, j in pairs)
    print(f"\n{case.label}; slices {f:g}x thicker (box profile, {m} slices); metrics inside "
          f"the brain; {len(slices)} slices with >= {MIN_BRAIN_SHARE:.0%} of the fullest "
          f"slice's brain; {len(pairs)} coincident slices (up to {offset:g} voxel from the "
          "measured centre)\n")
    print("| method | consistency | PSNR brain (dB) | SSIM brain | brightness residual std (%) "
          "| periodic p-p +- noise (%) | coincident vs measured (%) | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| truth | - | - | - | 0 | 0 | {coincident_difference(truth, lr, case.mask, pairs):.2f}"
          " | - |")
    for label in results:
        name, _, consistency = label.partition("\nconsistency ")
        print(f"| {name} | {consistency or '-'} | {scores[label]['psnr']:.2f} | "
              f"{scores[label]['ssim']:.4f} | {period[label]['std']:.2f} | "
              f"{period[label]['p2p']:.2f} +- {period[label]['noise']:.2f} | "
              f"{coinc[label]:.2f} | {seconds[label]:.0f} |")
    n_bins = max(1, int(round(f)))
    offsets = [((b + 0.5) / n_bins - 0.5) * f for b in range(n_bins)]
    print(f"\nbrightness residual (ratio minus its moving average over {f:g} slices, %) by "
          "position within the thick slice, in slices from the measured slice's centre\n")
    print("| method | " + " | ".join(f"{o:+.2g}" for o in offsets) + " |")
    print("|---|" + "---|" * n_bins)
    for label in results:
        print(f"| {label.replace(chr(10), ', ')} | " +
              " | ".join(f"{v:+.2f}" for v in period[label]["by_position"]) + " |")

    lr_near = np.clip(spline_resize(lr, truth.shape, order=0), 0, None)
    title = (f"{case.label}\nT2 in slices {f:g}x thicker ({m} slices of "
             f"{f * float(np.linalg.norm(case.affine[:3, 2])):.3g} mm, box profile) upscaled "
             "back, T1w reference at full resolution; titles: PSNR (dB) / SSIM over the brain "
             "volume")
    make_figure(out, case, lr_near, results, scores, ratios, slices, f, m, title)
    print(f"\nwrote {out} ({time.perf_counter() - t_start:.0f} s in all)")


if __name__ == "__main__":
    main()
