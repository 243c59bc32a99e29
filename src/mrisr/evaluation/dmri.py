"""Diffusion-MRI SR evaluation in the CSR-dMRI Table 1 layout, plus diffusion-tensor fidelity.

``mrisr evaluate CONFIG`` runs it for a YAML with ``task: dmri3d`` (:class:`DmriEvaluateConfig`).

Cases. Each subject (NIfTI files or the embedded phantom, loaded exactly as for training by
:func:`mrisr.training.volumes.load_dwi_subjects`: the shell divided by the mean b=0, the T1w on
the DWI grid) gives one HR series: the held-out slab of the training config
(:func:`~mrisr.training.volumes.split_slab`) or, for a subject never trained on, the whole
volume. At every scale ``s`` the LR series is the cubic B-spline downsampling of the HR one to
``round(N / s)`` voxels per axis (``degrade(kind="bicubic")``, the degradation of the training
patches); methods that read the T1w get it on the HR grid (3D models degrade it to the LR grid
themselves, as in training). Every method super-resolves every volume back to the HR grid.

Scores (the metric code of the 2D harness: :func:`~mrisr.evaluation.diffusion.evaluate_dwi_volume`
over :func:`~mrisr.evaluation.metrics.evaluate_case`, protocol ``brainmask``):

* PSNR (dB), SSIM and NRMSE inside the brain mask of each diffusion volume (direction), and
  their mean over the directions; tables average subjects' means;
* tensor fidelity (:func:`~mrisr.evaluation.diffusion.tensor_fidelity`): dipy's tensor fitted to
  the SR and the HR series (with the HR mean b=0); mean absolute FA and MD (mm^2/s) errors and
  the principal direction's angular error (degrees) in white matter (``FA_HR > wm_fa``).

Scales are labelled against the training range ``in_distribution``: integer scales inside it are
in-distribution, scales outside it out-of-distribution, other scales inside it non-integer.
Everything is deterministic (fixed degradation, models in evaluation mode).
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from mrisr.config import to_dict
from mrisr.degradation import degrade
from mrisr.errors import ConfigError, InputError
from mrisr.evaluation.diffusion import evaluate_dwi_volume, fit_tensors, tensor_fidelity
from mrisr.evaluation.harness import MethodSpec, scale_label
from mrisr.evaluation.methods import SRCase, SRMethod, make_method
from mrisr.evaluation.metrics import DEFAULT_WIN_SIZE
from mrisr.evaluation.report import rows_to_csv, summarise
from mrisr.grid import effective_scale
from mrisr.io.atomic import write_text_atomic
from mrisr.progress import progress
from mrisr.training.config import DwiSourceConfig

__all__ = ["DmriEvalData", "DmriEvaluateConfig", "DmriCase", "DmriEvaluationResult",
           "scale_category", "load_cases", "evaluate_dmri", "table1_markdown",
           "tensor_markdown", "directions_markdown", "write_dmri_report"]

REGIONS = ("holdout", "whole")
CATEGORY_TAGS = {"in-distribution": "", "out-of-distribution": " (OOD)",
                 "non-integer": " (non-int.)"}
#: Tensor-fidelity metrics: (row key, column title, display factor, decimals).
TENSOR_COLUMNS = (("fa_mae", "FA", 1.0, 4), ("md_mae", "MD", 1e3, 4),
                  ("angle_mean_deg", "angle", 1.0, 2))


@dataclass
class DmriEvalData(DwiSourceConfig):
    """The ``dmri`` section of an evaluation: subjects as in training
    (:class:`~mrisr.training.config.DwiSourceConfig`) and the region scored.

    region: ``holdout`` (the slab given by ``holdout_axis``/``holdout_fraction``; use the
    training config's values) or ``whole`` (the whole volume: subjects never trained on).
    """

    region: str = "holdout"

    def validate(self, source: str) -> None:
        super().validate(source)
        if self.region not in REGIONS:
            raise ConfigError(f"{source}: dmri.region must be holdout or whole, got "
                              f"'{self.region}'")
        if self.region == "holdout" and self.holdout_fraction <= 0:
            raise ConfigError(f"{source}: dmri.region 'holdout' needs dmri.holdout_fraction > 0")


def _default_methods() -> list[MethodSpec]:
    return [MethodSpec("cubic")]


@dataclass
class DmriEvaluateConfig:
    """Settings of a diffusion evaluation (every key may appear in the YAML file).

    task: must be ``dmri3d`` (what routes a config here).
    dmri: subjects and region (:class:`DmriEvalData`).
    scales: isotropic upscaling factors (default: the paper's x2, x3, x4 and a non-integer x2.4).
    in_distribution: ``[min, max]`` of the training scales (``dmri.scale_range`` of the training
        config), which labels the columns.
    methods: interpolation (``cubic``, ...) and 3D models (``model3d`` with ``args: {model:
        <preset or checkpoint>}``).
    tensor: also score the tensor fit (needs dipy). wm_fa: the white-matter threshold on FA_HR.
    """

    task: str = "dmri3d"
    dmri: DmriEvalData = field(default_factory=DmriEvalData)
    scales: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0, 2.4])
    in_distribution: list[float] = field(default_factory=lambda: [2.0, 3.0])
    methods: list[MethodSpec] = field(default_factory=_default_methods)
    tensor: bool = True
    wm_fa: float = 0.2
    output: str = "results/dmri"

    def validate(self, source: str) -> None:
        if self.task != "dmri3d":
            raise ConfigError(f"{source}: task must be dmri3d for the diffusion evaluation, got "
                              f"'{self.task}'")
        if not self.scales or any(s < 1.0 for s in self.scales):
            raise ConfigError(f"{source}: scales must be a non-empty list of numbers >= 1")
        if len(set(scale_label(s) for s in self.scales)) != len(self.scales):
            raise ConfigError(f"{source}: scales must be distinct")
        lo_hi = self.in_distribution
        if len(lo_hi) != 2 or not 1.0 <= lo_hi[0] <= lo_hi[1]:
            raise ConfigError(f"{source}: in_distribution must be [min, max] with "
                              "1 <= min <= max")
        if not self.methods:
            raise ConfigError(f"{source}: methods is empty")
        labels = [m.display for m in self.methods]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{source}: method labels must be unique ({', '.join(labels)})")
        for m in self.methods:
            if m.name == "model":
                raise ConfigError(f"{source}: method '{m.display}': 'model' runs 2D models "
                                  "slice by slice; 3D models are evaluated with 'model3d'")
        if not 0.0 < self.wm_fa < 1.0:
            raise ConfigError(f"{source}: wm_fa must be in (0, 1), got {self.wm_fa}")


def scale_category(scale: float, in_distribution) -> str:
    """``in-distribution``, ``out-of-distribution`` or ``non-integer`` (see the module
    docstring)."""
    lo, hi = (float(v) for v in in_distribution)
    if not lo - 1e-9 <= scale <= hi + 1e-9:
        return "out-of-distribution"
    return "in-distribution" if abs(scale - round(scale)) < 1e-9 else "non-integer"


@dataclass
class DmriCase:
    """One subject's evaluation region.

    hr: float32 ``(X, Y, Z, N)`` attenuations. mask: bool ``(X, Y, Z)`` brain mask.
    t1: float32 ``(X, Y, Z)`` scaled T1w on the same grid, or ``None``.
    mean_b0: float32 ``(X, Y, Z)`` (scanner units). bvals ``(N,)`` s/mm^2, bvecs ``(3, N)``.
    region: the region's index tuple in the subject's DWI grid.
    """

    subject: str
    hr: np.ndarray
    mask: np.ndarray
    t1: Optional[np.ndarray]
    mean_b0: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    region: tuple


def load_cases(d: DmriEvalData, use_t1: bool) -> list[DmriCase]:
    """The evaluation region of every subject of ``d`` (the T1w only with ``use_t1``)."""
    from mrisr.training.volumes import load_dwi_subjects, split_slab

    cases = []
    for s in load_dwi_subjects(d, use_t1):
        if d.region == "holdout":
            region = split_slab(s.shape, d.holdout_axis, d.holdout_fraction)[1]
        else:
            region = tuple(slice(0, n) for n in s.shape)
        shape = tuple(r.stop - r.start for r in region)
        if min(shape) < DEFAULT_WIN_SIZE:
            raise InputError(f"subject {s.name}: evaluation region {shape} is smaller than the "
                             f"SSIM window ({DEFAULT_WIN_SIZE} voxels per axis); raise "
                             "dmri.holdout_fraction or use dmri.region whole")
        mask = s.mask[region]
        pad = (DEFAULT_WIN_SIZE - 1) // 2
        if not mask[pad:-pad, pad:-pad, pad:-pad].any():
            # SSIM is averaged over the mask where its whole window fits.
            raise InputError(f"subject {s.name}: no brain voxel in the evaluation region "
                             f"{shape} more than {pad} voxels from its border")
        cases.append(DmriCase(subject=s.name, hr=np.ascontiguousarray(s.shell[region]),
                              mask=mask, t1=s.t1[region] if s.t1 is not None else None,
                              mean_b0=s.mean_b0[region], bvals=s.bvals, bvecs=s.bvecs,
                              region=region))
    return cases


@dataclass
class DmriEvaluationResult:
    """Rows of an evaluation.

    rows: one per subject, scale, method and diffusion volume (PSNR, SSIM, NRMSE).
    case_rows: one per subject, scale and method: the means over the volumes and the seconds.
    tensor_rows: one per subject, scale and method (empty without ``tensor``).
    """

    rows: list[dict]
    case_rows: list[dict]
    tensor_rows: list[dict]
    config: DmriEvaluateConfig
    cases: list[str] = field(default_factory=list)


def _super_resolve(method: SRMethod, lr: np.ndarray, case: DmriCase) -> np.ndarray:
    """Every volume of the LR series ``(N, x, y, z)`` to the HR grid: ``(X, Y, Z, N)``."""
    out_shape = case.hr.shape[:3]
    ref = case.t1 if method.uses_reference else None
    pred = []
    for volume in lr:
        sr = method(SRCase(lr=volume, out_shape=out_shape, reference=ref,
                           target_scale=effective_scale(volume.shape, out_shape),
                           reference_scale=(1.0, 1.0, 1.0)))
        if sr.shape != out_shape:
            raise RuntimeError(f"method returned shape {sr.shape}, expected {out_shape}")
        pred.append(sr)
    return np.stack(pred, axis=-1).astype(np.float32)


def evaluate_dmri(cfg: DmriEvaluateConfig, methods: Optional[dict[str, SRMethod]] = None,
                  show_progress: bool = True) -> DmriEvaluationResult:
    """Run every method at every scale on every subject's region (see the module docstring).

    ``methods`` may pass already-built methods by label (e.g. a model being trained); otherwise
    they are built from ``cfg.methods``.
    """
    built = methods if methods is not None else {
        m.display: make_method(m.name, m.args) for m in cfg.methods}
    need_t1 = any(m.uses_reference for m in built.values())
    cases = load_cases(cfg.dmri, need_t1)
    if need_t1 and any(c.t1 is None for c in cases):
        raise InputError("a method reads the T1w image, but dmri.subjects gives none")
    rows, case_rows, tensor_rows = [], [], []
    bar = progress(total=len(cases) * len(cfg.scales) * len(built), desc="evaluate dMRI",
                   unit="case", disable=not show_progress, leave=False)
    try:
        for case in cases:
            reference_maps = fit_tensors(case.hr, case.bvals, case.bvecs, case.mean_b0,
                                         case.mask) if cfg.tensor else None
            for scale in cfg.scales:
                # Volume axis first: degrade() resamples the trailing three (spatial) axes.
                lr = degrade(np.moveaxis(case.hr, -1, 0), scale, kind="bicubic", n_spatial=3)
                head = {"subject": case.subject, "scale": scale_label(scale),
                        "category": scale_category(scale, cfg.in_distribution),
                        "lr_shape": "x".join(str(n) for n in lr.shape[1:])}
                for label, method in built.items():
                    bar.set_description(f"evaluate dMRI {case.subject} x{head['scale']} {label}")
                    t0 = time.perf_counter()
                    pred = _super_resolve(method, lr, case)
                    seconds = time.perf_counter() - t0
                    key = {**head, "method": label,
                           "reference": "t1" if method.uses_reference else "-"}
                    scores = evaluate_dwi_volume(pred, case.hr, case.mask)
                    for i, row in enumerate(scores.pop("per_volume")):
                        rows.append({**key, "direction": i, "bval": float(case.bvals[i]),
                                     "bvec": " ".join(f"{v:.4f}" for v in case.bvecs[:, i]),
                                     **row})
                    case_rows.append({**key, **scores, "seconds": seconds})
                    if cfg.tensor:
                        fidelity = tensor_fidelity(pred, case.hr, case.bvals, case.bvecs,
                                                   case.mask, case.mean_b0, wm_fa=cfg.wm_fa,
                                                   reference_maps=reference_maps)
                        tensor_rows.append({**key, **fidelity})
                    bar.update(1)
    finally:
        bar.close()
    names = [f"{c.subject} ({'x'.join(str(n) for n in c.hr.shape[:3])} voxels, "
             f"{c.hr.shape[3]} directions, b={cfg.dmri.bvalue:g})" for c in cases]
    return DmriEvaluationResult(rows, case_rows, tensor_rows, cfg, names)


def _ordered_scales(cfg: DmriEvaluateConfig) -> list[tuple[str, str]]:
    """``(label, category)`` in the paper's column order: in-distribution, out-of-distribution,
    non-integer (the config's order within a group)."""
    cats = [(scale_label(s), scale_category(s, cfg.in_distribution)) for s in cfg.scales]
    return sorted(cats, key=lambda lc: list(CATEGORY_TAGS).index(lc[1]))


def _methods_in_order(result: DmriEvaluationResult) -> list[tuple[str, str]]:
    """``(method, reference)`` keys in the order methods first appear in the rows."""
    seen: dict = {}
    for row in result.case_rows:
        seen.setdefault((row["method"], row["reference"]), None)
    return list(seen)


def _legend(result: DmriEvaluationResult) -> list[str]:
    cfg = result.config
    region = "held-out slab" if cfg.dmri.region == "holdout" else "whole volume"
    groups = defaultdict(list)
    for label, cat in _ordered_scales(cfg):
        groups[cat].append(f"x{label}")
    lo, hi = cfg.in_distribution
    return [f"Subjects ({region}): " + "; ".join(result.cases) + ".",
            "LR = cubic B-spline downsampling of the HR attenuations (the training "
            f"degradation); training scales x{lo:g}..x{hi:g}: " +
            "; ".join(f"{cat} {', '.join(v)}" for cat, v in groups.items()) + ".", ""]


def table1_markdown(result: DmriEvaluationResult, digits: int = 2) -> str:
    """CSR-dMRI Table 1 layout: rows methods; per scale the PSNR (dB) and SSIM inside the
    brain mask, averaged over the diffusion directions, then over subjects."""
    psnr, ssim = summarise(result.case_rows, "psnr"), summarise(result.case_rows, "ssim")
    scales = _ordered_scales(result.config)
    header = ["Method"]
    for label, cat in scales:
        header += [f"x{label}{CATEGORY_TAGS[cat]} PSNR", f"x{label}{CATEGORY_TAGS[cat]} SSIM"]
    lines = ["**Brain-mask PSNR (dB) / SSIM, mean over diffusion directions**", "",
             *_legend(result), "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in _methods_in_order(result):
        cells = []
        for label, _ in scales:
            p, s = psnr[key].get(label), ssim[key].get(label)
            cells += [f"{p:.{digits}f}" if p is not None else "",
                      f"{s:.4f}" if s is not None else ""]
        lines.append(f"| {key[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tensor_markdown(result: DmriEvaluationResult) -> str:
    """Tensor fidelity in the same layout: per scale the FA MAE, the MD MAE (10^-3 mm^2/s) and
    the mean angular error of the principal direction (degrees), in white matter."""
    if not result.tensor_rows:
        return ""
    summaries = {k: summarise(result.tensor_rows, k) for k, _, _, _ in TENSOR_COLUMNS}
    scales = _ordered_scales(result.config)
    header = ["Method"] + [f"x{label}{CATEGORY_TAGS[cat]} {title}" for label, cat in scales
                           for _, title, _, _ in TENSOR_COLUMNS]
    wm = sorted({int(r["wm_voxels"]) for r in result.tensor_rows})
    lines = ["**Diffusion-tensor fidelity against the fit on the HR series (dipy WLS)**", "",
             f"White matter: FA_HR > {result.config.wm_fa:g} inside the brain mask "
             f"({', '.join(map(str, wm))} voxels). FA: mean absolute FA error; MD: mean "
             "absolute MD error in 10^-3 mm^2/s; angle: mean angle (degrees) between the "
             "principal eigenvectors.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in _methods_in_order(result):
        cells = []
        for label, _ in scales:
            for metric, _, factor, digits in TENSOR_COLUMNS:
                v = summaries[metric].get(key, {}).get(label)
                cells.append(f"{v * factor:.{digits}f}" if v is not None else "")
        lines.append(f"| {key[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def directions_markdown(result: DmriEvaluationResult, digits: int = 2) -> str:
    """Per subject and scale, one row per diffusion direction: ``PSNR / SSIM`` per method."""
    methods = [m for m, _ in _methods_in_order(result)]
    table: dict = defaultdict(dict)
    for row in result.rows:
        table[(row["subject"], row["scale"])][(row["direction"], row["method"])] = row
    lines = ["**Brain-mask PSNR (dB) / SSIM per diffusion direction**", ""]
    for (subject, scale), cells in table.items():
        volumes = sorted({v for v, _ in cells})
        lines += [f"*{subject}, x{scale}*", "",
                  "| Direction | b | b-vector | " + " | ".join(methods) + " |",
                  "|" + "---|" * (3 + len(methods))]
        for v in volumes:
            first = next(cells[(v, m)] for m in methods if (v, m) in cells)
            values = [f"{cells[(v, m)]['psnr']:.{digits}f} / {cells[(v, m)]['ssim']:.4f}"
                      if (v, m) in cells else "" for m in methods]
            lines.append(f"| {v} | {first['bval']:g} | {first['bvec']} | " +
                         " | ".join(values) + " |")
        lines.append("")
    return "\n".join(lines)


def write_dmri_report(result: DmriEvaluationResult, out_dir: Path) -> dict[str, Path]:
    """Write ``cases.csv`` (per direction), ``volumes.csv`` (per subject, scale and method),
    ``tensor.csv``, ``table.md`` (Table 1 and tensor fidelity), ``directions.md``,
    ``summary.json`` and ``config.yaml`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"cases": out_dir / "cases.csv", "volumes": out_dir / "volumes.csv",
             "table": out_dir / "table.md", "directions": out_dir / "directions.md",
             "summary": out_dir / "summary.json", "config": out_dir / "config.yaml"}
    write_text_atomic(paths["cases"], rows_to_csv(result.rows))
    write_text_atomic(paths["volumes"], rows_to_csv(result.case_rows))
    if result.tensor_rows:
        paths["tensor"] = out_dir / "tensor.csv"
        write_text_atomic(paths["tensor"], rows_to_csv(result.tensor_rows))
    write_text_atomic(paths["table"], "\n".join(
        part for part in (table1_markdown(result), tensor_markdown(result)) if part))
    write_text_atomic(paths["directions"], directions_markdown(result))
    metrics = [("psnr", result.case_rows), ("ssim", result.case_rows),
               ("nrmse", result.case_rows)] + \
        [(k, result.tensor_rows) for k, _, _, _ in TENSOR_COLUMNS if result.tensor_rows]
    summary = {metric: {f"{m}|{r}": v for (m, r), v in summarise(rows, metric).items()}
               for metric, rows in metrics}
    write_text_atomic(paths["summary"], json.dumps(summary, indent=1, sort_keys=True))
    write_text_atomic(paths["config"], yaml.safe_dump(to_dict(result.config), sort_keys=False))
    return paths
