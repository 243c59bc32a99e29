"""Diffusion-specific evaluation: per-direction image quality and diffusion-tensor fidelity.

Image quality scores every shell volume of a super-resolved series against the HR one with the
``brainmask`` protocol of :mod:`mrisr.evaluation.metrics` (the CSR-dMRI tables) and averages.
Tensor fidelity fits dipy's ``TensorModel`` to both series (the shell's b-values/vectors with
the mean b=0 put back as the first volume) and compares fractional anisotropy (FA), mean
diffusivity (MD, mm^2/s) and the principal eigenvector (angle in degrees, sign-invariant) in
white matter, defined as ``FA_HR > wm_fa`` inside the brain mask unless given.

Series are ``(X, Y, Z, N)`` attenuations ``S_b / S_0`` (as :func:`mrisr.data.dwi.normalise_by_b0`
produces), b-values ``(N,)`` s/mm^2, b-vectors ``(3, N)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from mrisr.errors import InputError
from mrisr.evaluation.metrics import evaluate_case

__all__ = ["TensorMaps", "fit_tensors", "tensor_fidelity", "evaluate_dwi_volume"]


@dataclass
class TensorMaps:
    """DTI maps of one series: ``fa`` ``(X, Y, Z)``, ``md`` ``(X, Y, Z)`` in mm^2/s and ``v1``
    ``(X, Y, Z, 3)`` float64 unit principal eigenvectors (in the b-vectors' frame; 0 outside the
    fitted mask)."""

    fa: np.ndarray
    md: np.ndarray
    v1: np.ndarray


def _check_series(name: str, series: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray) -> None:
    if series.ndim != 4:
        raise InputError(f"{name}: expected an (X, Y, Z, N) series, got shape {series.shape}")
    if bvals.shape != (series.shape[3],) or bvecs.shape != (3, series.shape[3]):
        raise InputError(f"{name}: {series.shape[3]} volumes but b-values {bvals.shape} and "
                         f"b-vectors {bvecs.shape}")


def fit_tensors(series: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray,
                mean_b0: Optional[np.ndarray] = None, mask: Optional[np.ndarray] = None,
                fit_method: str = "WLS") -> TensorMaps:
    """Fit the diffusion tensor to a normalised single-shell series.

    Args:
        series: ``(X, Y, Z, N)`` attenuations. bvals: ``(N,)``. bvecs: ``(3, N)``.
        mean_b0: ``(X, Y, Z)`` b=0 in scanner units; the series is multiplied back by it and it
            becomes the b=0 volume (the fit then weighs voxels as on the scanner). Default:
            ones, i.e. the attenuations themselves with ``S_0 = 1``.
        mask: boolean ``(X, Y, Z)``; voxels outside are not fitted (maps are 0 there).
        fit_method: dipy's ``TensorModel`` method (``WLS``, ``OLS``, ``NLLS``, ...).
    """
    try:
        from dipy.core.gradients import gradient_table
        from dipy.reconst.dti import TensorModel
    except ImportError:
        raise InputError("tensor fidelity needs dipy (pip install dipy)") from None
    series = np.asarray(series, dtype=np.float64)
    bvals = np.asarray(bvals, dtype=np.float64).reshape(-1)
    bvecs = np.asarray(bvecs, dtype=np.float64)
    _check_series("series", series, bvals, bvecs)
    b0 = np.ones(series.shape[:3]) if mean_b0 is None else np.asarray(mean_b0, np.float64)
    data = np.concatenate([b0[..., None], series * b0[..., None]], axis=-1)
    # The log-linear fit is undefined for non-positive signals; a tiny floor keeps SR outputs
    # that undershoot to 0 (or below) fittable instead of producing NaN tensors.
    floor = 1e-6 * max(float(np.abs(data).max()), 1e-12)
    data = np.maximum(data, floor)
    gtab = gradient_table(np.concatenate([[0.0], bvals]),
                          bvecs=np.concatenate([np.zeros((1, 3)), bvecs.T]))
    fit = TensorModel(gtab, fit_method=fit_method).fit(data, mask=mask)
    return TensorMaps(fa=np.nan_to_num(fit.fa).astype(np.float32),
                      md=np.nan_to_num(fit.md).astype(np.float32),
                      # float64: float32 unit vectors give angles of ~0.02 deg against themselves
                      v1=np.nan_to_num(fit.evecs[..., :, 0]).astype(np.float64))


def tensor_fidelity(sr: np.ndarray, hr: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray,
                    mask: np.ndarray, mean_b0: Optional[np.ndarray] = None,
                    sr_mean_b0: Optional[np.ndarray] = None, wm_fa: float = 0.2,
                    wm_mask: Optional[np.ndarray] = None,
                    reference_maps: Optional[TensorMaps] = None) -> dict[str, float]:
    """FA, MD and principal-direction errors of an SR series against the HR series.

    Args:
        sr, hr: ``(X, Y, Z, N)`` attenuations on the same grid.
        bvals, bvecs: the shell's ``(N,)`` and ``(3, N)``.
        mask: boolean brain mask ``(X, Y, Z)``.
        mean_b0: HR mean b=0 (see :func:`fit_tensors`); ``sr_mean_b0``: the SR series' own,
            default the same.
        wm_fa: white matter is ``FA_HR > wm_fa`` inside ``mask`` (unless ``wm_mask`` is given).
        reference_maps: the HR fit (:func:`fit_tensors` of ``hr`` with ``mean_b0`` and ``mask``)
            when already computed, e.g. once for several methods scored against the same HR.

    Returns:
        ``fa_mae`` (dimensionless), ``md_mae`` (mm^2/s), ``angle_mean_deg`` and
        ``angle_median_deg`` over white matter, and ``wm_voxels``.
    """
    sr, hr = np.asarray(sr), np.asarray(hr)
    if sr.shape != hr.shape:
        raise InputError(f"SR series shape {sr.shape} does not match HR {hr.shape}")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != hr.shape[:3]:
        raise InputError(f"mask shape {mask.shape} does not match the series' {hr.shape[:3]}")
    ref = reference_maps if reference_maps is not None else \
        fit_tensors(hr, bvals, bvecs, mean_b0, mask)
    out = fit_tensors(sr, bvals, bvecs, sr_mean_b0 if sr_mean_b0 is not None else mean_b0,
                      mask)
    wm = (ref.fa > wm_fa) & mask if wm_mask is None else np.asarray(wm_mask, bool) & mask
    if not wm.any():
        raise InputError(f"no white-matter voxel (FA_HR > {wm_fa:g} inside the mask)")
    cos = np.abs(np.sum(ref.v1[wm] * out.v1[wm], axis=-1))
    angle = np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))
    return {"fa_mae": float(np.abs(out.fa[wm] - ref.fa[wm]).mean()),
            "md_mae": float(np.abs(out.md[wm].astype(np.float64) - ref.md[wm]).mean()),
            "angle_mean_deg": float(angle.mean()),
            "angle_median_deg": float(np.median(angle)),
            "wm_voxels": int(wm.sum())}


def evaluate_dwi_volume(sr: np.ndarray, hr: np.ndarray, mask: np.ndarray,
                        protocol: str = "brainmask") -> dict:
    """PSNR/SSIM (and NRMSE) of every shell volume inside ``mask``, and their means.

    Args:
        sr, hr: ``(X, Y, Z, N)`` series (or one ``(X, Y, Z)`` volume) on the same grid.
        mask: boolean ``(X, Y, Z)``.
        protocol: a metric protocol of :mod:`mrisr.evaluation.metrics`.

    Returns:
        ``{"psnr": mean dB, "ssim": mean, "nrmse": mean, "per_volume": [dict per volume]}``.
    """
    sr, hr = np.asarray(sr), np.asarray(hr)
    if sr.shape != hr.shape:
        raise InputError(f"SR series shape {sr.shape} does not match HR {hr.shape}")
    if hr.ndim == 3:
        sr, hr = sr[..., None], hr[..., None]
    per_volume = [evaluate_case(sr[..., i], hr[..., i], protocol, mask=mask)
                  for i in range(hr.shape[3])]
    summary = {key: float(np.mean([row[key] for row in per_volume]))
               for key in per_volume[0]}
    return {**summary, "per_volume": per_volume}
