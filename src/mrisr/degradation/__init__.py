"""Simulated low-resolution acquisitions.

:func:`degrade` applies a named degradation at a per-axis scale; the target and the reference
contrast are degraded independently, each at its own scale (scale 1 = left at full resolution).
"""
from __future__ import annotations

import numpy as np

from mrisr.degradation.image import (gaussian_downsample, spline_downsample, spline_resize,
                                    thick_slice)
from mrisr.degradation.kspace import (centered_fft, centered_ifft, kspace_downsample,
                                      kspace_lowpass_mask, kspace_resize)
from mrisr.errors import ConfigError
from mrisr.grid import ScaleLike, as_scales

DEGRADATIONS = {
    "kspace": "central k-space crop (Dual-ArbNet protocol), complex output on the smaller "
              "pixel-centre grid (phase-aligned to the FOV-preserving convention)",
    "kspace_magnitude": "as kspace, magnitude of the result",
    "kspace_centre": "central k-space crop exactly as the reference code (structures displaced "
                     "by (s - 1)/2 pixels for even sizes); complex output",
    "bicubic": "cubic B-spline downsampling without anti-aliasing (CSR-dMRI / ArSSR protocol)",
    "bicubic_aa": "Gaussian anti-aliasing, then cubic B-spline downsampling",
    "kspace_hamming": "as kspace, the kept samples apodised by a Hamming window",
    "kspace_tukey": "as kspace, the kept samples apodised by a Tukey window (flat centre)",
    "kspace_partial": "as kspace with 5/8 partial Fourier along the last axis (zero-filled)",
    "gaussian": "image-domain Gaussian point-spread function (FWHM = the scale in input "
                "voxels) sampled on the smaller pixel-centre grid",
    "thick_slice": "box slice-profile averaging along the most-degraded axis",
    "thick_slice_gaussian": "Gaussian slice profile (FWHM = the slice spacing) along the "
                            "most-degraded axis",
}

#: k-space variants: (window, kept share of the last axis).
_KSPACE_VARIANTS = {"kspace": (None, 1.0), "kspace_magnitude": (None, 1.0),
                    "kspace_centre": (None, 1.0), "kspace_hamming": ("hamming", 1.0),
                    "kspace_tukey": ("tukey", 1.0), "kspace_partial": (None, 0.625)}


def degrade(image: np.ndarray, scale: ScaleLike, kind: str = "kspace",
            n_spatial: int | None = None) -> np.ndarray:
    """Degrade the last ``n_spatial`` axes of ``image`` (default: all) by ``scale`` per axis.

    Returns complex64 for ``kspace``, float32 otherwise. A scale of 1 on every axis returns the
    image unchanged (as complex for ``kspace``, so a full-resolution reference has the same form
    as a degraded one).
    """
    n_spatial = image.ndim if n_spatial is None else n_spatial
    scales = as_scales(scale, n_spatial)
    if kind in _KSPACE_VARIANTS:
        align = "centre" if kind == "kspace_centre" else "grid"
        window, kept = _KSPACE_VARIANTS[kind]
        out = kspace_downsample(np.asarray(image), scales, n_spatial, align, window,
                                kept).astype(np.complex64)
        return np.abs(out).astype(np.float32) if kind == "kspace_magnitude" else out
    if kind == "gaussian":
        return gaussian_downsample(np.asarray(image, dtype=np.float32), scales, n_spatial)
    if kind in ("bicubic", "bicubic_aa"):
        return spline_downsample(np.asarray(image, dtype=np.float32), scales, n_spatial,
                                 order=3, antialias=kind == "bicubic_aa").astype(np.float32)
    if kind in ("thick_slice", "thick_slice_gaussian"):
        axis = int(np.argmax(scales))
        off_axis = [s for i, s in enumerate(scales) if i != axis]
        if any(abs(s - 1.0) > 1e-9 for s in off_axis):
            raise ConfigError("thick_slice degrades one axis; other axes' scales must be 1")
        return thick_slice(np.asarray(image, dtype=np.float32), scales[axis],
                           axis=image.ndim - n_spatial + axis,
                           profile="gaussian" if kind == "thick_slice_gaussian" else "box")
    raise ConfigError(f"unknown degradation '{kind}' (known: {', '.join(DEGRADATIONS)})")


def degrade_volume(data: np.ndarray, affine: np.ndarray, scale: ScaleLike,
                   kind: str = "kspace") -> tuple[np.ndarray, np.ndarray]:
    """Degrade a real 3D (or 4D, volume-wise) image in world space.

    Returns ``(lr, lr_affine)``: float32 data (the magnitude for k-space cropping, since NIfTI
    stores real images) and the field-of-view-preserving affine of the smaller grid.
    """
    from mrisr.grid import resample_affine

    spatial = data.shape[:3]
    def real(image: np.ndarray) -> np.ndarray:
        # k-space variants are complex; NIfTI holds real images, so their magnitude is stored.
        return np.abs(image) if np.iscomplexobj(image) else image
    if data.ndim == 4:
        # Volumes of a series are independent acquisitions of one grid: degrade each alone.
        lr = np.stack([real(degrade(data[..., i], scale, kind, n_spatial=3))
                       for i in range(data.shape[3])], axis=-1)
    else:
        lr = real(degrade(data, scale, kind, n_spatial=3))
    return lr.astype(np.float32), resample_affine(affine, spatial, lr.shape[:3])


__all__ = ["degrade_volume", "DEGRADATIONS", "degrade", "kspace_resize", "kspace_downsample",
           "kspace_lowpass_mask", "centered_fft", "centered_ifft", "spline_resize",
           "spline_downsample", "thick_slice", "gaussian_downsample"]
