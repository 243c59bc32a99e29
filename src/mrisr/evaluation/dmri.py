"""Diffusion-MRI SR evaluation in the CSR-dMRI Table 1 layout, plus diffusion-tensor fidelity.

``mrisr evaluate CONFIG`` runs it for a YAML with ``task: dmri3d`` (:class:`DmriEvaluateConfig`).

Cases. Each subject (NIfTI files or the embedded phantom, loaded exactly as for training by
:func:`mrisr.data.dwi_sources.load_dwi_subjects`: the shell divided by the mean b=0, the T1w on
the DWI grid) gives one HR series: the held-out slab of the training config
(:func:`~mrisr.data.dwi_sources.split_slab`) or, for a subject never trained on, the whole
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

Protocol ``signal`` (what a user's LR series is, :func:`evaluate_dmri_signal`): each subject's
acquired series, every volume (b=0 included) degraded in signal space (``degradation``:
``bicubic``, or ``bicubic_aa`` with a Gaussian anti-aliasing filter first), then upscaled back to
the HR grid by each method through ``mrisr upscale``'s own path for a 4D series (3D models:
:class:`~mrisr.inference.volume3d.SeriesUpscaler3D` with its brain mask, normalisation, T1w
placement and registration, and with ``adapt`` the test-time adaptation of ``mrisr upscale
--adapt``; 2D models: :func:`~mrisr.inference.upscale.upscale` volume by volume; interpolation
baselines), as ``benchmarks/dmri_series_upscale.py`` does. Scored: PSNR/SSIM (protocol
``brainmask``, signal units) of the diffusion-weighted volumes inside the brain mask of the HR
mean b=0, and the tensor fitted to the whole upscaled series (its own b=0 volumes as S_0) against
the fit to the HR series.

Scales are labelled against the training range ``in_distribution``: integer scales inside it are
in-distribution, scales outside it out-of-distribution, other scales inside it non-integer.
Everything is deterministic (fixed degradation, models in evaluation mode).
"""
from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from mrisr.config import MAX_SCALE, is_scale, to_dict
from mrisr.data.dwi_sources import DwiSourceConfig, load_dwi_subjects, split_slab
from mrisr.degradation import degrade
from mrisr.errors import ConfigError, InputError
from mrisr.evaluation.diffusion import evaluate_dwi_volume, fit_tensors, tensor_fidelity
from mrisr.evaluation.harness import MethodSpec, scale_label
from mrisr.evaluation.methods import SRCase, SRMethod, make_method
from mrisr.evaluation.metrics import DEFAULT_WIN_SIZE
from mrisr.evaluation.report import rows_to_csv, summarise
from mrisr.grid import effective_scale
from mrisr.io.nifti import Volume
from mrisr.io.atomic import write_text_atomic
from mrisr.progress import progress

__all__ = ["DmriEvalData", "DmriEvaluateConfig", "DmriCase", "DmriEvaluationResult",
           "scale_category", "load_cases", "evaluate_dmri", "table1_markdown",
           "tensor_markdown", "directions_markdown", "write_dmri_report"]

REGIONS = ("holdout", "whole")
PROTOCOLS = ("attenuation", "signal")
#: Method names of the signal protocol that run a model through ``mrisr upscale``'s path.
SERIES_METHODS = ("upscale", "model3d")
SERIES_METHOD_ARGS = {"model", "adapt", "calibrate", "register", "t1", "device", "threads",
                      "precision", "tensor_consistency"}
CATEGORY_TAGS = {"in-distribution": "", "out-of-distribution": " (OOD)",
                 "non-integer": " (non-int.)"}
#: Tensor-fidelity metrics: (row key, column title, display factor, decimals).
TENSOR_COLUMNS = (("fa_mae", "FA", 1.0, 4), ("md_mae", "MD", 1e3, 4),
                  ("angle_mean_deg", "angle", 1.0, 2))


@dataclass
class DmriEvalData(DwiSourceConfig):
    """The ``dmri`` section of an evaluation: subjects as in training
    (:class:`~mrisr.data.dwi_sources.DwiSourceConfig`) and the region scored.

    region: ``holdout`` (the slab given by ``holdout_axis``/``holdout_fraction``; use the
    training config's values) or ``whole`` (the whole volume: subjects never trained on).
    With ``holdout`` (a subject's name, leave-one-scanner-out) only that subject is evaluated.
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
    protocol: ``attenuation`` (the paper's: the HR attenuations degraded, methods given LR
        attenuations) or ``signal`` (every volume of the acquired series degraded as a user's
        LR series, methods run through ``mrisr upscale``'s series path; see the module
        docstring). With ``signal`` a method is an interpolation name or ``upscale`` (alias
        ``model3d``) with ``args``: ``model`` (anything ``mrisr upscale --model`` takes),
        ``adapt`` (test-time adaptation steps, 0: none), ``calibrate`` (the detail gain of
        ``mrisr upscale --calibrate``), ``register`` (T1w registration,
        default: as the model's training), ``t1`` (false: do not give the T1w, e.g. a model
        trained with T1w dropout run as on a series without one), ``device``, ``precision``
        (``auto``, ``fp32``, ``bf16``: :mod:`mrisr.precision`), ``tensor_consistency`` (that of
        ``mrisr upscale``, default ``off`` here as ``calibrate``'s: every shell that holds a
        scored volume is then upscaled whole); a method that needs a T1w is skipped on a
        subject without one.
    degradation: ``signal`` protocol: ``bicubic`` (cubic B-spline downsampling of each volume,
        as benchmarks/dmri_series_upscale.py) or ``bicubic_aa`` (Gaussian filter first).
    volumes: ``signal`` protocol: diffusion-weighted volumes scored per subject, evenly spaced
        over the series (0: all); without ``tensor`` only those (and no b=0) are upscaled.
    """

    task: str = "dmri3d"
    dmri: DmriEvalData = field(default_factory=DmriEvalData)
    scales: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0, 2.4])
    in_distribution: list[float] = field(default_factory=lambda: [2.0, 3.0])
    methods: list[MethodSpec] = field(default_factory=_default_methods)
    tensor: bool = True
    wm_fa: float = 0.2
    output: str = "results/dmri"
    protocol: str = "attenuation"
    degradation: str = "bicubic"
    volumes: int = 0

    def validate(self, source: str) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"{source}: protocol must be {' or '.join(PROTOCOLS)}, got "
                              f"'{self.protocol}'")
        if self.degradation not in ("bicubic", "bicubic_aa"):
            raise ConfigError(f"{source}: degradation must be bicubic or bicubic_aa, got "
                              f"'{self.degradation}'")
        if self.volumes < 0:
            raise ConfigError(f"{source}: volumes must be >= 0")
        if self.protocol == "signal":
            from mrisr.inference.selection import INTERPOLATION_MODELS
            for m in self.methods:
                if m.name not in SERIES_METHODS and m.name not in INTERPOLATION_MODELS:
                    raise ConfigError(f"{source}: method '{m.display}': the signal protocol "
                                      "runs interpolations "
                                      f"({', '.join(INTERPOLATION_MODELS)}) and 'upscale' "
                                      "(args: model, adapt, calibrate, register, t1, "
                                      "device, tensor_consistency)")
                unknown = set(m.args) - SERIES_METHOD_ARGS
                if unknown:
                    raise ConfigError(f"{source}: method '{m.display}': unknown args "
                                      f"{', '.join(sorted(unknown))}")
        if self.task != "dmri3d":
            raise ConfigError(f"{source}: task must be dmri3d for the diffusion evaluation, got "
                              f"'{self.task}'")
        if not self.scales or not all(is_scale(s) for s in self.scales):
            raise ConfigError(f"{source}: scales must be a non-empty list of numbers from 1 "
                              f"to {MAX_SCALE:g}")
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
        for m in self.methods if self.protocol == "attenuation" else ():
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
    cases = []
    for s in load_dwi_subjects(d, use_t1, training=False):
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
    they are built from ``cfg.methods``. ``protocol: signal`` goes to
    :func:`evaluate_dmri_signal`.
    """
    if cfg.protocol == "signal":
        return evaluate_dmri_signal(cfg, methods, show_progress)
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
             f"{c.hr.shape[3]} directions, {_shell_text(cfg.dmri, c.bvals)})" for c in cases]
    return DmriEvaluationResult(rows, case_rows, tensor_rows, cfg, names)


def _shell_text(d: DwiSourceConfig, bvals: np.ndarray) -> str:
    if not d.all_shells:
        return f"b={d.bvalue:g}"
    shells = np.unique(np.round(np.asarray(bvals, dtype=np.float64) / 50.0) * 50.0)
    return "b=" + "/".join(f"{b:g}" for b in shells)


# -- the signal protocol: a user's LR series through mrisr upscale's path -------------------

@dataclass
class SeriesCase:
    """One subject's acquired series for the ``signal`` protocol.

    hr: float32 ``(X, Y, Z, N)`` signal, every volume. affine: its voxel-to-world.
    bvals ``(N,)``, bvecs ``(3, N)``. b0: indices of the b=0 volumes; weighted: of the
    diffusion-weighted volumes kept (the ``bvalue`` shell, or all with ``all_shells``);
    scored: the subset scored. mask: bool ``(X, Y, Z)``, the brain of the HR mean b=0 (within
    the held-out slab for ``region: holdout``). t1: the T1w image as on disk, or ``None``.
    """

    subject: str
    hr: np.ndarray
    affine: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    b0: np.ndarray
    weighted: np.ndarray
    scored: np.ndarray
    mask: np.ndarray
    t1: Optional[Volume]


def load_series_cases(d: DmriEvalData, volumes: int = 0) -> list[SeriesCase]:
    """The series of every evaluated subject of ``d`` (only the held-out one with
    ``holdout``), raw: nothing normalised, the T1w as on disk."""
    from mrisr.data.dwi import b0_indices, brain_mask, select_shell
    from mrisr.io import load_nifti
    from mrisr.io.dwi import companion_paths, read_bval_bvec

    raw = []
    if d.kind == "phantom":
        from mrisr.data.phantom import make_dwi_phantom
        ph = make_dwi_phantom(tuple(d.phantom_shape), tuple(d.phantom_voxel_size),
                              bvalue=d.bvalue, seed=d.phantom_seed, noise=d.phantom_noise)
        raw.append((f"phantom-seed{d.phantom_seed}", np.asarray(ph.dwi, np.float32), ph.affine,
                    ph.bvals, ph.bvecs, Volume(np.asarray(ph.t1w, np.float32), ph.affine)))
    else:
        for files in d.selected_subjects(training=False):
            series = load_nifti(files.dwi, ndim=(4,))
            bval, bvec = companion_paths(files.dwi)
            bvals, bvecs = read_bval_bvec(files.bval or bval, files.bvec or bvec,
                                          n_volumes=series.data.shape[3])
            t1 = load_nifti(files.t1) if files.t1 else None
            raw.append((files.label, np.asarray(series.data, np.float32), series.affine,
                        bvals, bvecs, t1))
    cases = []
    for name, hr, affine, bvals, bvecs, t1 in raw:
        b0 = b0_indices(bvals)
        if b0.size == 0:
            raise InputError(f"subject {name}: no b=0 volume; the signal protocol needs one")
        weighted = select_shell(bvals, d.shell_bvalue, d.tolerance)
        scored = weighted if not volumes or volumes >= weighted.size else \
            weighted[np.linspace(0, weighted.size - 1, volumes).round().astype(int)]
        mask = brain_mask(hr[..., b0].mean(axis=-1))
        if d.region == "holdout":
            slab = np.zeros_like(mask)
            slab[split_slab(mask.shape, d.holdout_axis, d.holdout_fraction)[1]] = True
            mask &= slab
        if not mask.any():
            raise InputError(f"subject {name}: no brain voxel in the evaluation region")
        cases.append(SeriesCase(name, hr, np.asarray(affine, np.float64),
                                np.asarray(bvals, np.float64), np.asarray(bvecs, np.float64),
                                b0, weighted, np.asarray(scored), mask, t1))
    return cases


class SeriesMethod:
    """A method of the ``signal`` protocol: what ``mrisr upscale [--model M] [--adapt N]`` does
    to a 4D series, in memory (see :class:`DmriEvaluateConfig` for the arguments)."""

    def __init__(self, spec: MethodSpec):
        import torch

        from mrisr.inference.selection import INTERPOLATION_MODELS, load_upscale_model
        from mrisr.inference.volume3d import is_volume_model

        args = dict(spec.args)
        name = spec.name if spec.name in INTERPOLATION_MODELS else args.get("model")
        if not name:
            raise ConfigError(f"method '{spec.display}': args.model is required")
        if args.get("threads"):
            torch.set_num_threads(int(args["threads"]))
        self.adapt = int(args.get("adapt", 0) or 0)
        self.calibrate = args.get("calibrate", "off")
        from mrisr.inference.decisions import tensor_consistency_weight

        try:
            self.tensor_consistency = args.get("tensor_consistency", "off")
            tensor_consistency_weight(self.tensor_consistency)
        except InputError as exc:
            raise ConfigError(f"method '{spec.display}': {exc}") from None
        self.register = args.get("register")
        self.device = args.get("device", "auto")
        self.precision = args.get("precision", "auto")
        self.pack = load_upscale_model(str(name), has_reference=True, series=True)
        net = self.pack[0]
        self.is_3d = is_volume_model(net)
        self.interpolation = name in INTERPOLATION_MODELS
        model_t1 = net.uses_reference  # False for an interpolation baseline
        self.uses_reference = model_t1 and bool(args.get("t1", True))
        # A T1w model given no T1w runs only when it was trained with T1w dropout.
        self.needs_reference = model_t1 and not self.pack[1].get("t1_dropout")
        if model_t1 and not self.uses_reference and self.needs_reference:
            raise ConfigError(f"method '{spec.display}': args.t1 false, but the model was not "
                              "trained with T1w dropout")
        if self.adapt and self.interpolation:
            raise ConfigError(f"method '{spec.display}': adapt needs a trained model")

    def __call__(self, lr: Volume, t1: Optional[Volume], bvals: np.ndarray,
                 out_shape: tuple, out_affine: np.ndarray, indices: np.ndarray,
                 bvecs: Optional[np.ndarray] = None) -> tuple[np.ndarray, dict]:
        """The volumes ``indices`` of the LR series upscaled to ``out_shape``:
        ``((X, Y, Z, len(indices)), info)`` (info: adaptation seconds and losses, the
        tensor-consistency decision). ``bvecs`` ``(3, N)``: needed for
        ``tensor_consistency``."""
        from mrisr.inference.anisotropy import (cubic_base, remove_anisotropic_detail,
                                                usable_shells)
        from mrisr.inference.decisions import decide_series_tensor_consistency

        indices = np.asarray(indices, dtype=int)
        decision, weight = decide_series_tensor_consistency(
            self.tensor_consistency, not self.interpolation, bvals, bvecs, "the series")
        if not weight:
            out, info = self._upscale(lr, t1, bvals, out_shape, out_affine, indices)
            return out, {**info, "tensor_consistency": decision.as_dict()}
        # Every shell that holds a scored volume is upscaled whole, as mrisr upscale does.
        work = indices
        for shell in usable_shells(bvals, bvecs)[0]:
            if np.isin(shell, indices).any():
                work = np.union1d(work, shell)
        out, info = self._upscale(lr, t1, bvals, out_shape, out_affine, work)
        series = np.moveaxis(out, -1, 0)
        bases = np.stack([cubic_base(lr.data[..., v], out_shape)
                          for v in work])
        decision.evidence.update(remove_anisotropic_detail(
            series, bases, bvals[work], bvecs[:, work], weight))
        keep = [int(np.flatnonzero(work == v)[0]) for v in indices]
        return out[..., keep], {**info, "tensor_consistency": decision.as_dict()}

    def _upscale(self, lr: Volume, t1: Optional[Volume], bvals: np.ndarray,
                 out_shape: tuple, out_affine: np.ndarray, indices: np.ndarray
                 ) -> tuple[np.ndarray, dict]:
        """:meth:`__call__` without the tensor-consistency step."""
        from mrisr.inference.decisions import calibrate_applies
        from mrisr.inference.upscale import upscale
        from mrisr.inference.volume3d import SeriesUpscaler3D

        net, desc = self.pack
        ref = t1 if self.uses_reference else None
        out = np.empty(tuple(out_shape) + (len(indices),), np.float32)
        info: dict = {}
        if self.interpolation:
            for k, v in enumerate(indices):
                out[..., k] = net(lr.data[..., v], out_shape)
        elif self.is_3d:
            runner = SeriesUpscaler3D(lr, ref, self.pack, out_shape, out_affine, bvals,
                                      device=self.device, register=self.register,
                                      precision=self.precision)
            if self.adapt:
                info["adapt"] = runner.adapt(self.adapt)
            if calibrate_applies(self.calibrate, False):
                info["detail_gain"] = runner.calibrate()
            for k, v in enumerate(indices):
                out[..., k] = runner.upscale(int(v)).data
        else:
            pack, adapt = self.pack, self.adapt
            for k, v in enumerate(indices):
                result = upscale(Volume(lr.data[..., v], lr.affine), ref, shape=out_shape,
                                 loaded_model=pack, device=self.device, adapt=adapt,
                                 calibrate=self.calibrate, precision=self.precision)
                out[..., k] = result.data
                if result.adapted_model is not None:
                    # As mrisr upscale: a series is adapted once, on its first volume.
                    pack, adapt = result.adapted_model, 0
                    info["adapt"] = result.info["adapt"]
        return out, info


def _attenuation(series: np.ndarray, b0: np.ndarray) -> np.ndarray:
    """``series / b0`` per volume, 0 where ``b0`` is not positive."""
    out = np.zeros(series.shape, np.float32)
    ok = b0 > 0
    out[ok] = series[ok] / b0[ok][:, None]
    return out


def evaluate_dmri_signal(cfg: DmriEvaluateConfig,
                         methods: Optional[dict[str, "SeriesMethod"]] = None,
                         show_progress: bool = True) -> DmriEvaluationResult:
    """The ``signal`` protocol (see the module docstring): rows as :func:`evaluate_dmri`'s,
    plus the adaptation seconds in ``case_rows``."""
    from mrisr.degradation import degrade_volume

    built = methods if methods is not None else {
        m.display: SeriesMethod(m) for m in cfg.methods}
    cases = load_series_cases(cfg.dmri, cfg.volumes)
    rows, case_rows, tensor_rows = [], [], []
    bar = progress(total=len(cases) * len(cfg.scales) * len(built), desc="evaluate dMRI",
                   unit="case", disable=not show_progress, leave=False)
    try:
        for case in cases:
            shape = case.hr.shape[:3]
            # Upscaled: the scored volumes, and for the tensor fit every b=0 and weighted one.
            needed = np.union1d(case.b0, case.weighted) if cfg.tensor else case.scored
            at = {int(v): k for k, v in enumerate(needed)}
            scored_k = [at[int(v)] for v in case.scored]
            hr_b0 = case.hr[..., case.b0].mean(axis=-1)
            hr_att = _attenuation(case.hr[..., case.weighted], hr_b0)
            g_b, g_v = case.bvals[case.weighted], case.bvecs[:, case.weighted]
            reference_maps = fit_tensors(hr_att, g_b, g_v, hr_b0, case.mask) \
                if cfg.tensor else None
            for scale in cfg.scales:
                lr, lr_affine = degrade_volume(case.hr, case.affine, scale, cfg.degradation)
                lr_volume = Volume(lr, lr_affine)
                head = {"subject": case.subject, "scale": scale_label(scale),
                        "category": scale_category(scale, cfg.in_distribution),
                        "lr_shape": "x".join(str(n) for n in lr.shape[:3])}
                for label, method in built.items():
                    bar.set_description(f"evaluate dMRI {case.subject} x{head['scale']} {label}")
                    if method.needs_reference and case.t1 is None:
                        bar.update(1)
                        continue
                    t0 = time.perf_counter()
                    pred, info = method(lr_volume, case.t1, case.bvals, shape, case.affine,
                                        needed, bvecs=case.bvecs)
                    seconds = time.perf_counter() - t0
                    key = {**head, "method": label,
                           "reference": "t1" if method.uses_reference and case.t1 is not None
                           else "-"}
                    scores = evaluate_dwi_volume(pred[..., scored_k], case.hr[..., case.scored],
                                                 case.mask)
                    for v, row in zip(case.scored, scores.pop("per_volume")):
                        rows.append({**key, "direction": int(v), "bval": float(case.bvals[v]),
                                     "bvec": " ".join(f"{x:.4f}" for x in case.bvecs[:, v]),
                                     **row})
                    adapt = info.get("adapt") or {}
                    case_rows.append({**key, **scores, "seconds": seconds,
                                      "adapt_steps": adapt.get("steps", 0),
                                      "adapt_used": adapt.get("used", "-"),
                                      "adapt_seconds": adapt.get("seconds", 0.0)})
                    if cfg.tensor:
                        sr_b0 = pred[..., [at[int(v)] for v in case.b0]].mean(axis=-1)
                        sr_att = _attenuation(pred[..., [at[int(v)] for v in case.weighted]],
                                              sr_b0)
                        fidelity = tensor_fidelity(sr_att, hr_att, g_b, g_v, case.mask, hr_b0,
                                                   sr_mean_b0=sr_b0, wm_fa=cfg.wm_fa,
                                                   reference_maps=reference_maps)
                        tensor_rows.append({**key, **fidelity})
                    bar.update(1)
    finally:
        bar.close()
    names = [f"{c.subject} ({'x'.join(str(n) for n in c.hr.shape[:3])} voxels, "
             f"{c.scored.size} of {c.weighted.size} diffusion-weighted volumes scored, "
             f"{_shell_text(cfg.dmri, c.bvals[c.weighted])}, "
             f"T1w {'yes' if c.t1 is not None else 'no'})" for c in cases]
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


def _row_labels(result: DmriEvaluationResult) -> dict[tuple[str, str], str]:
    """A table label per ``(method, reference)`` key: the method's label, and where the method
    ran with the T1w on some series and without it on others (a T1w-dropout model), which of
    the two groups of series the row averages, as the rows cover different subjects."""
    keys = _methods_in_order(result)
    counts = Counter(method for method, _ in keys)
    return {(method, ref): method if counts[method] == 1 else
            f"{method} ({'series with a T1w' if ref == 't1' else 'series without one'})"
            for method, ref in keys}


def _legend(result: DmriEvaluationResult) -> list[str]:
    cfg = result.config
    region = "held-out slab" if cfg.dmri.region == "holdout" else "whole volume"
    groups = defaultdict(list)
    for label, cat in _ordered_scales(cfg):
        groups[cat].append(f"x{label}")
    lo, hi = cfg.in_distribution
    degraded = "LR = cubic B-spline downsampling of the HR attenuations (the training " \
        "degradation)"
    if cfg.protocol == "signal":
        degraded = ("LR = every volume of the acquired series degraded in signal space (" +
                    ("Gaussian filter, then cubic B-spline downsampling" if
                     cfg.degradation == "bicubic_aa" else "cubic B-spline downsampling") +
                    "), upscaled through mrisr upscale's series path; scores in signal units")
    return [f"Subjects ({region}): " + "; ".join(result.cases) + ".",
            f"{degraded}; training scales x{lo:g}..x{hi:g}: " +
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
    labels = _row_labels(result)
    for key in _methods_in_order(result):
        cells = []
        for label, _ in scales:
            p, s = psnr[key].get(label), ssim[key].get(label)
            cells += [f"{p:.{digits}f}" if p is not None else "",
                      f"{s:.4f}" if s is not None else ""]
        lines.append(f"| {labels[key]} | " + " | ".join(cells) + " |")
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
    labels = _row_labels(result)
    for key in _methods_in_order(result):
        cells = []
        for label, _ in scales:
            for metric, _, factor, digits in TENSOR_COLUMNS:
                v = summaries[metric].get(key, {}).get(label)
                cells.append(f"{v * factor:.{digits}f}" if v is not None else "")
        lines.append(f"| {labels[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cost_markdown(result: DmriEvaluationResult) -> str:
    """Signal protocol: per method and scale, the seconds of one series (mean over subjects;
    adaptation included) and of its adaptation alone. Empty for the attenuation protocol."""
    if result.config.protocol != "signal" or not result.case_rows:
        return ""
    total, adapt = summarise(result.case_rows, "seconds"), \
        summarise(result.case_rows, "adapt_seconds")
    scales = _ordered_scales(result.config)
    header = ["Method"] + [f"x{label} {what}" for label, _ in scales
                           for what in ("seconds", "adapt s")]
    lines = ["**Cost: seconds per series (upscaling every volume scored or fitted, adaptation "
             "included) and of the adaptation alone**", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    labels = _row_labels(result)
    for key in _methods_in_order(result):
        cells = []
        for label, _ in scales:
            t, a = total.get(key, {}).get(label), adapt.get(key, {}).get(label)
            cells += [f"{t:.1f}" if t is not None else "", f"{a:.1f}" if a else "-"]
        lines.append(f"| {labels[key]} | " + " | ".join(cells) + " |")
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


#: The files :func:`write_dmri_report` may write into its folder.
DMRI_REPORT_FILES = ("cases.csv", "volumes.csv", "tensor.csv", "table.md", "directions.md",
                     "summary.json", "config.yaml")


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
        part for part in (table1_markdown(result), tensor_markdown(result),
                          cost_markdown(result)) if part))
    write_text_atomic(paths["directions"], directions_markdown(result))
    metrics = [("psnr", result.case_rows), ("ssim", result.case_rows),
               ("nrmse", result.case_rows)] + \
        [(k, result.tensor_rows) for k, _, _, _ in TENSOR_COLUMNS if result.tensor_rows]
    summary = {metric: {f"{m}|{r}": v for (m, r), v in summarise(rows, metric).items()}
               for metric, rows in metrics}
    write_text_atomic(paths["summary"], json.dumps(summary, indent=1, sort_keys=True))
    write_text_atomic(paths["config"], yaml.safe_dump(to_dict(result.config), sort_keys=False))
    return paths
