"""``mrisr demo``: the main job on the embedded default data (no download, no external files).

A T2-weighted phantom volume is degraded in-plane by k-space cropping (x2 by default), then
upscaled back with the shipped Dual-ArbNet guided by the full-resolution T1-weighted phantom,
with the shipped single-contrast LIIF, and with cubic interpolation. The demo writes every
volume as NIfTI, prints PSNR/SSIM over the brain slices and saves a comparison figure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from mrisr.data.phantom import make_brain_phantom
from mrisr.degradation import degrade_volume, spline_resize
from mrisr.evaluation.harness import select_slices
from mrisr.evaluation.metrics import evaluate_case
from mrisr.inference.upscale import upscale_file
from mrisr.io.atomic import atomic_path, write_text_atomic
from mrisr.io.nifti import save_nifti

DEFAULT_OUTPUT = "mrisr-demo"


def _slice_metrics(pred: np.ndarray, hr: np.ndarray, slices: list[int]) -> dict[str, float]:
    rows = [evaluate_case(pred[:, :, k], hr[:, :, k], "dualarbnet") for k in slices]
    return {key: float(np.mean([r[key] for r in rows])) for key in ("psnr", "ssim")}


def _figure(path: Path, hr, lr, results: dict, k: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("LR input", lr[:, :, k])] + [(name, img[:, :, k]) for name, img in
                                            results.items()] + [("HR (truth)", hr[:, :, k])]
    vmax = float(np.percentile(hr[:, :, k], 99.5))
    fig, axes = plt.subplots(2, len(panels), figsize=(2.5 * len(panels), 5.2))
    for j, (title, img) in enumerate(panels):
        axes[0, j].imshow(np.rot90(img), cmap="gray", vmin=0, vmax=vmax)
        axes[0, j].set_title(title, fontsize=9)
        if title in results:
            axes[1, j].imshow(np.rot90(np.abs(img - hr[:, :, k])), cmap="inferno", vmin=0,
                              vmax=0.25 * vmax)
            axes[1, j].set_title("|error|", fontsize=8)
        for row in (0, 1):
            axes[row, j].axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def run_demo(output: str | Path = DEFAULT_OUTPUT, scale: float = 2.0, seed: int = 0,
             overwrite: bool = True, log: Callable[[str], None] = print,
             device: str = "auto", progress: Optional[Callable[[int], None]] = None,
             on_start: Optional[Callable[[int], None]] = None) -> dict:
    """Run the demo into ``output``; returns the metrics by method and the written files."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    ph = make_brain_phantom(shape=(128, 128, 40), voxel_size=(1.5, 1.5, 3.0), seed=seed)
    hr, ref, affine = ph.t2w, ph.t1w, ph.affine
    lr, lr_affine = degrade_volume(hr, affine, (scale, scale, 1.0), kind="kspace")
    files = {"hr": save_nifti(hr, affine, out / "t2w_hr.nii.gz"),
             "reference": save_nifti(ref, affine, out / "t1w_reference.nii.gz"),
             "lr": save_nifti(lr, lr_affine, out / "t2w_lr.nii.gz")}
    log(f"phantom T2w {hr.shape} degraded x{scale:g} in-plane to {lr.shape}; T1w reference at "
        "full resolution")
    results = {}
    # spline_resize resamples the last axes: move the slice axis first.
    cubic = np.moveaxis(spline_resize(np.moveaxis(lr, 2, 0), hr.shape[:2], order=3), 0, 2)
    results["cubic"] = np.clip(cubic, 0, None).astype(np.float32)
    files["cubic"] = save_nifti(results["cubic"], affine, out / "t2w_cubic.nii.gz")
    for name, ref_path in (("mrisr (T1 reference)", files["reference"]),
                           ("mrisr (no reference)", None)):
        path = out / ("t2w_mrisr_ref.nii.gz" if ref_path else "t2w_mrisr_noref.nii.gz")
        img = upscale_file(files["lr"], path, ref_path, overwrite=overwrite, device=device,
                           progress=progress, on_start=on_start, scale=(scale, scale, 1.0))
        results[name] = np.asarray(img.dataobj, dtype=np.float32)
        files[name] = path
    slices = select_slices(hr, ph.brain_mask, 2, 0.1)
    metrics = {name: _slice_metrics(img, hr, slices) for name, img in results.items()}
    lines = ["| method | PSNR (dB) | SSIM |", "|---|---|---|"]
    lines += [f"| {name} | {m['psnr']:.2f} | {m['ssim']:.4f} |" for name, m in metrics.items()]
    table = "\n".join(lines)
    k = max(slices, key=lambda i: ph.brain_mask[:, :, i].sum())
    _figure(out / "comparison.png", hr, np.moveaxis(spline_resize(
        np.moveaxis(lr, 2, 0), hr.shape[:2], order=0), 0, 2), results, k)
    files["figure"] = out / "comparison.png"
    write_text_atomic(out / "metrics.md", f"Phantom T2w, x{scale:g} in-plane, "
                      f"{len(slices)} brain slices, protocol dualarbnet\n\n{table}\n")
    files["metrics"] = out / "metrics.md"
    return {"metrics": metrics, "table": table, "files": files}
