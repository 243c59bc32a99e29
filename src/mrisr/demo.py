"""``mrisr demo``: the main job on the embedded default data (no download, no external files).

The job users bring mrisr for: a T2-weighted scan acquired in thick slices, and a T1-weighted
scan of the same head at high resolution. A T2-weighted phantom volume is averaged into thick
slices (box slice profile, x4 by default: 1.5 mm -> 6 mm), then upscaled back to the thin grid
with the default model guided by the full-resolution T1-weighted phantom, with the default
model without reference, and with cubic interpolation, all through :func:`upscale_file` (the
path of ``mrisr upscale``). ``case="inplane"`` degrades in-plane by k-space cropping instead.

The demo writes every volume as NIfTI, ``metrics.md`` (PSNR/SSIM inside the brain and over the
whole image, over the volume) and ``comparison.png`` (a coronal slice, where thick slices show:
per-panel PSNR/SSIM, a zoomed inset, error maps with a colour bar).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from mrisr.data.phantom import make_brain_phantom
from mrisr.degradation import degrade_volume, spline_resize
from mrisr.evaluation.metrics import psnr, ssim
from mrisr.inference.upscale import upscale_file
from mrisr.io.atomic import atomic_path, check_new_files, write_text_atomic
from mrisr.io.nifti import save_nifti

DEFAULT_OUTPUT = "mrisr-demo"
CASES = ("thick", "inplane")


def _region_metrics(pred: np.ndarray, hr: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """PSNR/SSIM over the volume inside ``mask`` and over every voxel; the peak is the truth's
    range inside the brain for both, so the two are on one scale."""
    import torch
    p, t = torch.from_numpy(pred), torch.from_numpy(hr)
    peak = float(hr[mask].max() - hr[mask].min())
    whole = torch.ones_like(t, dtype=torch.bool)
    m = torch.from_numpy(mask)
    return {"psnr_brain": psnr(p, t, peak, mask=m), "ssim_brain": ssim(p, t, peak, mask=m),
            "psnr_all": psnr(p, t, peak, mask=whole), "ssim_all": ssim(p, t, peak, mask=whole)}


def _figure(path: Path, hr: np.ndarray, lr_display: np.ndarray, results: dict, metrics: dict,
            index: int, axis: int, inset: tuple[slice, slice]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    def cut(img):
        return np.rot90(np.take(img, index, axis=axis))
    truth = cut(hr)
    panels = [("input (nearest)", cut(lr_display))] + \
        [(name, cut(img)) for name, img in results.items()] + [("truth", truth)]
    vmax = float(np.percentile(truth, 99.5))
    emax = 0.2 * vmax
    fig, axes = plt.subplots(2, len(panels), figsize=(2.7 * len(panels), 4.4))
    rows, cols = inset
    for j, (title, img) in enumerate(panels):
        ax = axes[0, j]
        ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)
        label = title
        if title in metrics:
            m = metrics[title]
            label += (f"\nbrain {m['psnr_brain']:.2f} dB / {m['ssim_brain']:.3f}"
                      f"\nall {m['psnr_all']:.2f} dB / {m['ssim_all']:.3f}")
        ax.set_title(label, fontsize=8)
        # Zoomed inset of the boxed region, in the panel's lower right corner.
        zoom = ax.inset_axes([0.55, 0.0, 0.45, 0.45])
        zoom.imshow(img[rows, cols], cmap="gray", vmin=0, vmax=vmax)
        zoom.set_xticks([])
        zoom.set_yticks([])
        for spine in zoom.spines.values():
            spine.set_edgecolor("yellow")
        ax.add_patch(Rectangle((cols.start, rows.start), cols.stop - cols.start,
                               rows.stop - rows.start, fill=False, edgecolor="yellow", lw=0.8))
        ax.axis("off")
        err_ax = axes[1, j]
        err_ax.axis("off")
        if title in results:
            shown = err_ax.imshow(np.abs(img - truth), cmap="inferno", vmin=0, vmax=emax)
            err_ax.set_title("|error|", fontsize=8)
            fig.colorbar(shown, ax=err_ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.suptitle("PSNR (dB) / SSIM, inside the brain and over the whole image", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


#: The files :func:`run_demo` writes into its folder (the upscaled ones with their sidecars).
DEMO_FILES = ("t2w_hr.nii.gz", "t1w_reference.nii.gz", "t2w_lr.nii.gz", "t2w_cubic.nii.gz",
              "t2w_mrisr_noref.nii.gz", "t2w_mrisr_noref.json", "t2w_mrisr_ref.nii.gz",
              "t2w_mrisr_ref.json", "comparison.png", "metrics.md")


def run_demo(output: str | Path = DEFAULT_OUTPUT, scale: float = 4.0, seed: int = 0,
             overwrite: bool = True, log: Callable[[str], None] = print,
             device: str = "auto", progress: Optional[Callable[[int], None]] = None,
             on_start: Optional[Callable[[int], None]] = None, case: str = "thick") -> dict:
    """Run the demo into ``output``; returns the metrics by method and the written files.

    case: ``thick`` (the T2w averaged into slices ``scale`` times thicker) or ``inplane``
    (k-space crop by ``scale`` in-plane)."""
    if case not in CASES:
        raise ValueError(f"case must be one of {', '.join(CASES)}, got {case!r}")
    out = Path(output)
    check_new_files([out / name for name in DEMO_FILES], overwrite)
    out.mkdir(parents=True, exist_ok=True)
    ph = make_brain_phantom(shape=(128, 128, 64), voxel_size=(1.5, 1.5, 1.5), seed=seed)
    hr, ref, affine = ph.t2w, ph.t1w, ph.affine
    factors = (1.0, 1.0, scale) if case == "thick" else (scale, scale, 1.0)
    kind = "thick_slice" if case == "thick" else "kspace"
    lr, lr_affine = degrade_volume(hr, affine, factors, kind=kind)
    files = {"hr": save_nifti(hr, affine, out / "t2w_hr.nii.gz"),
             "reference": save_nifti(ref, affine, out / "t1w_reference.nii.gz"),
             "lr": save_nifti(lr, lr_affine, out / "t2w_lr.nii.gz")}
    what = f"{scale:g}x thicker slices" if case == "thick" else f"x{scale:g} in-plane"
    log(f"phantom T2w {hr.shape} degraded to {lr.shape} ({what}); T1w reference at full "
        "resolution")
    results = {}
    cubic = spline_resize(lr, hr.shape, order=3)
    results["cubic"] = np.clip(cubic, 0, None).astype(np.float32)
    files["cubic"] = save_nifti(results["cubic"], affine, out / "t2w_cubic.nii.gz")
    for name, ref_path in (("mrisr, no reference", None),
                           ("mrisr, T1 reference", files["reference"])):
        path = out / ("t2w_mrisr_ref.nii.gz" if ref_path else "t2w_mrisr_noref.nii.gz")
        img = upscale_file(files["lr"], path, ref_path, overwrite=overwrite, device=device,
                           progress=progress, on_start=on_start, shape=hr.shape)
        results[name] = np.asarray(img.dataobj, dtype=np.float32)
        files[name] = path
    metrics = {name: _region_metrics(img, hr, ph.brain_mask) for name, img in results.items()}
    lines = ["| method | PSNR brain (dB) | SSIM brain | PSNR whole image (dB) | SSIM whole image |",
             "|---|---|---|---|---|"]
    lines += [f"| {name} | {m['psnr_brain']:.2f} | {m['ssim_brain']:.4f} | {m['psnr_all']:.2f} "
              f"| {m['ssim_all']:.4f} |" for name, m in metrics.items()]
    table = "\n".join(lines)
    axis = 1  # coronal: the thick axis (z) runs up the picture
    index = int(np.argmax(ph.brain_mask.sum(axis=(0, 2))))
    lr_display = spline_resize(lr, hr.shape, order=0)
    _figure(out / "comparison.png", hr, lr_display, results, metrics, index, axis,
            (slice(10, 42), slice(48, 80)))
    files["figure"] = out / "comparison.png"
    note = ("The peak of both PSNRs is the truth's intensity range inside the brain. 'Whole "
            "image' includes the background, where the phantom has Rician noise: no method can "
            "predict that noise, and a model that returns a smooth background lowers the "
            "background SSIM while raising PSNR.")
    write_text_atomic(out / "metrics.md", f"Phantom T2w {hr.shape}, {what} ({kind}), upscaled "
                      f"to the original grid; metrics over the volume.\n\n{table}\n\n{note}\n")
    files["metrics"] = out / "metrics.md"
    return {"metrics": metrics, "table": table, "files": files}
