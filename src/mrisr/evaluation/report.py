"""Reports of an evaluation: per-case CSV, Markdown tables in the papers' layout, figures.

Tables follow Dual-ArbNet's Table 1: one row per method, one column per scale (PSNR averaged
over cases), then the average PSNR and SSIM over scales; one table per reference type.
"""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from mrisr.config import to_dict
from mrisr.evaluation.harness import EvaluationResult, scale_label
from mrisr.io.atomic import atomic_path, write_text_atomic


def rows_to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    columns = list(rows[0].keys())
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def summarise(rows: list[dict], metric: str) -> dict:
    """``{(method, reference): {scale: mean metric}}`` with reference ``-`` for reference-free
    methods."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if metric in row:
            acc[(row["method"], row["reference"])][row["scale"]].append(row[metric])
    return {key: {s: float(np.mean(v)) for s, v in per.items()} for key, per in acc.items()}


def _reference_title(ref: str) -> str:
    return {"hr": "HR reference", "lr": "LR reference (degraded like the target)"}.get(
        ref, f"reference degraded at its own scale x{ref}")


def markdown_tables(result: EvaluationResult, digits: int = 2) -> str:
    """Markdown: for every reference type, PSNR per scale and the averages (Table 1 layout)."""
    cfg = result.config
    scales = [scale_label(s) for s in cfg.scales]
    psnr = summarise(result.rows, "psnr")
    ssim = summarise(result.rows, "ssim")
    methods = [m.display for m in cfg.methods] if cfg.methods else []
    methods += [m for m, _ in psnr if m not in methods]

    def is_ood(label: str) -> bool:
        return max(float(v) for v in label.split("x")) > cfg.in_distribution_max

    header = ["Method"] + [f"x{s}" + (" (OOD)" if is_ood(s) else "") for s in scales] + \
        ["Avg PSNR", "Avg SSIM"]
    n_cases = len({(r["subject"], r["index"]) for r in result.rows})
    lines = [f"Protocol `{cfg.protocol}`, degradation `{cfg.degradation}`, {n_cases} "
             f"{'slices' if cfg.mode == 'slices' else 'volumes'}; cells are mean PSNR (dB); "
             f"OOD = beyond the training range x{cfg.in_distribution_max:g}.", ""]
    ref_types = cfg.references if any(r != "-" for _, r in psnr) else ["-"]
    for ref in ref_types:
        if ref != "-":
            lines += [f"**{_reference_title(ref)}**", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in methods:
            key = (method, ref) if (method, ref) in psnr else (method, "-")
            if key not in psnr:
                continue
            values = [psnr[key].get(s) for s in scales]
            avg_p = float(np.mean([v for v in values if v is not None]))
            avg_s = float(np.mean(list(ssim[key].values()))) if key in ssim else float("nan")
            cells = [f"{v:.{digits}f}" if v is not None else "" for v in values]
            lines.append(f"| {method} | " + " | ".join(cells) +
                         f" | {avg_p:.{digits}f} | {avg_s:.4f} |")
        lines.append("")
    return "\n".join(lines)


def _save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def comparison_figure(result: EvaluationResult, path: Path) -> Optional[Path]:
    """PNG: HR, LR and each method (top row), absolute error maps (bottom row)."""
    fc = result.figure
    if fc is None or not fc.predictions:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def show(img):
        return img if img.ndim == 2 else img[:, :, img.shape[2] // 2]

    hr = show(fc.hr)
    vmax = float(np.percentile(hr, 99.5)) or 1.0
    panels = [("HR", hr), (f"LR (x{fc.scale})", show(fc.lr))] + \
        [(name, show(p)) for name, p in fc.predictions.items()]
    n = len(panels)
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n, 5.0))
    err_max = max(float(np.abs(p - hr).max()) for _, p in panels[2:]) * 0.5 or 1.0
    for j, (title, img) in enumerate(panels):
        axes[0, j].imshow(np.rot90(img), cmap="gray", vmin=0, vmax=vmax)
        axes[0, j].set_title(title, fontsize=9)
        if j >= 2:
            im = axes[1, j].imshow(np.rot90(np.abs(img - hr)), cmap="inferno", vmin=0,
                                   vmax=err_max)
        for row in (0, 1):
            axes[row, j].axis("off")
    axes[1, 0].text(0.5, 0.5, "|method - HR|", ha="center", va="center", fontsize=9,
                    transform=axes[1, 0].transAxes)
    fig.colorbar(im, ax=axes[1, :].tolist(), fraction=0.02, pad=0.01)
    fig.suptitle(f"{fc.subject} slice {fc.index}, x{fc.scale}", fontsize=10)
    _save_figure(fig, path)
    plt.close(fig)
    return path


def psnr_vs_scale_figure(result: EvaluationResult, path: Path) -> Optional[Path]:
    """PNG: mean PSNR against scale, one line per method and reference type."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    psnr = summarise(result.rows, "psnr")
    isotropic = [s for s in result.config.scales if not isinstance(s, list)]
    if len(isotropic) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for (method, ref), per in sorted(psnr.items()):
        xs = [float(s) for s in isotropic if scale_label(s) in per]
        ys = [per[scale_label(s)] for s in isotropic if scale_label(s) in per]
        ax.plot(xs, ys, marker="o", label=method if ref == "-" else f"{method} ({ref} ref)")
    ax.axvline(result.config.in_distribution_max, color="grey", ls=":", lw=1)
    ax.set_xlabel("scale")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save_figure(fig, path)
    plt.close(fig)
    return path


#: The files :func:`write_report` may write into its folder.
REPORT_FILES = ("cases.csv", "table.md", "summary.json", "config.yaml", "comparison.png",
                "psnr_vs_scale.png")


def write_report(result: EvaluationResult, out_dir: Path) -> dict[str, Path]:
    """Write ``cases.csv``, ``table.md``, ``summary.json``, ``config.yaml`` and the figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"cases": out_dir / "cases.csv", "table": out_dir / "table.md",
             "summary": out_dir / "summary.json", "config": out_dir / "config.yaml"}
    write_text_atomic(paths["cases"], rows_to_csv(result.rows))
    write_text_atomic(paths["table"], markdown_tables(result))
    summary = {metric: {f"{m}|{r}": v for (m, r), v in summarise(result.rows, metric).items()}
               for metric in ("psnr", "ssim", "nrmse")}
    write_text_atomic(paths["summary"], json.dumps(summary, indent=1, sort_keys=True))
    write_text_atomic(paths["config"], yaml.safe_dump(to_dict(result.config), sort_keys=False))
    figure = comparison_figure(result, out_dir / "comparison.png")
    if figure:
        paths["figure"] = figure
    curve = psnr_vs_scale_figure(result, out_dir / "psnr_vs_scale.png")
    if curve:
        paths["psnr_vs_scale"] = curve
    return paths
