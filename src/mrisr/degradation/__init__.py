"""Simulated low-resolution acquisitions.

:func:`degrade` applies a named degradation at a per-axis scale; the target and the reference
contrast are degraded independently, each at its own scale (scale 1 = left at full resolution).
Degradations are registered by name (:data:`DEGRADATIONS`, :func:`register_degradation`);
:func:`interpolate` is the plain way back (the interpolation baselines).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from mrisr.degradation.image import (gaussian_downsample, spline_downsample, spline_resize,
                                    thick_slice)
from mrisr.degradation.kspace import (centered_fft, centered_ifft, kspace_downsample,
                                      kspace_lowpass_mask, kspace_resize)
from mrisr.degradation.interpolation import INTERPOLATION_ORDERS, interpolate
from mrisr.errors import ConfigError
from mrisr.grid import ScaleLike, as_scales
from mrisr.registry import Registry


@dataclass(frozen=True)
class Degradation:
    """A named degradation: ``apply(image, scales, n_spatial)`` degrades the last
    ``n_spatial`` axes of ``image`` by the per-axis ``scales``."""

    name: str
    description: str
    apply: Callable[[np.ndarray, tuple, int], np.ndarray]


#: Degradation name -> :class:`Degradation`, in the order ``mrisr info`` lists them.
DEGRADATIONS: Registry[Degradation] = Registry("degradation", ConfigError, sort_known=False)


def register_degradation(name: str, description: str) -> Callable:
    """Decorator: register ``apply(image, scales, n_spatial)`` as degradation ``name``."""
    def decorate(apply: Callable) -> Callable:
        DEGRADATIONS.register(name, Degradation(name, description, apply))
        return apply
    return decorate


def _kspace(window: Optional[str] = None, kept: float = 1.0, align: str = "grid",
            magnitude: bool = False) -> Callable:
    """A k-space crop: apodisation ``window``, ``kept`` share of the last axis (partial
    Fourier), ``align`` as :func:`kspace_downsample`; complex64, or its magnitude."""
    def apply(image: np.ndarray, scales: tuple, n_spatial: int) -> np.ndarray:
        out = kspace_downsample(np.asarray(image), scales, n_spatial, align, window,
                                kept).astype(np.complex64)
        return np.abs(out).astype(np.float32) if magnitude else out
    return apply


register_degradation(
    "kspace", "central k-space crop (Dual-ArbNet protocol), complex output on the smaller "
    "pixel-centre grid (phase-aligned to the FOV-preserving convention)")(_kspace())
register_degradation(
    "kspace_magnitude", "as kspace, magnitude of the result")(_kspace(magnitude=True))
register_degradation(
    "kspace_centre", "central k-space crop exactly as the reference code (structures "
    "displaced by (s - 1)/2 pixels for even sizes); complex output")(_kspace(align="centre"))


@register_degradation("bicubic", "cubic B-spline downsampling without anti-aliasing "
                      "(CSR-dMRI / ArSSR protocol)")
def _bicubic(image: np.ndarray, scales: tuple, n_spatial: int) -> np.ndarray:
    return spline_downsample(np.asarray(image, dtype=np.float32), scales, n_spatial,
                             order=3, antialias=False).astype(np.float32)


@register_degradation("bicubic_aa", "Gaussian anti-aliasing, then cubic B-spline "
                      "downsampling")
def _bicubic_aa(image: np.ndarray, scales: tuple, n_spatial: int) -> np.ndarray:
    return spline_downsample(np.asarray(image, dtype=np.float32), scales, n_spatial,
                             order=3, antialias=True).astype(np.float32)


register_degradation(
    "kspace_hamming", "as kspace, the kept samples apodised by a Hamming window")(
    _kspace(window="hamming"))
register_degradation(
    "kspace_tukey", "as kspace, the kept samples apodised by a Tukey window (flat centre)")(
    _kspace(window="tukey"))
register_degradation(
    "kspace_partial", "as kspace with 5/8 partial Fourier along the last axis (zero-filled)")(
    _kspace(kept=0.625))


@register_degradation("gaussian", "image-domain Gaussian point-spread function (FWHM = the "
                      "scale in input voxels) sampled on the smaller pixel-centre grid")
def _gaussian(image: np.ndarray, scales: tuple, n_spatial: int) -> np.ndarray:
    return gaussian_downsample(np.asarray(image, dtype=np.float32), scales, n_spatial)


def _thick(profile: str) -> Callable:
    def apply(image: np.ndarray, scales: tuple, n_spatial: int) -> np.ndarray:
        axis = int(np.argmax(scales))
        off_axis = [s for i, s in enumerate(scales) if i != axis]
        if any(abs(s - 1.0) > 1e-9 for s in off_axis):
            raise ConfigError("thick_slice degrades one axis; other axes' scales must be 1")
        return thick_slice(np.asarray(image, dtype=np.float32), scales[axis],
                           axis=image.ndim - n_spatial + axis, profile=profile)
    return apply


register_degradation(
    "thick_slice", "box slice-profile averaging along the most-degraded axis")(_thick("box"))
register_degradation(
    "thick_slice_gaussian", "Gaussian slice profile (FWHM = the slice spacing) along the "
    "most-degraded axis")(_thick("gaussian"))


def degrade(image: np.ndarray, scale: ScaleLike, kind: str = "kspace",
            n_spatial: int | None = None) -> np.ndarray:
    """Degrade the last ``n_spatial`` axes of ``image`` (default: all) by ``scale`` per axis
    with the degradation ``kind`` (:data:`DEGRADATIONS`).

    Returns complex64 for ``kspace``, float32 otherwise. A scale of 1 on every axis returns the
    image unchanged (as complex for ``kspace``, so a full-resolution reference has the same form
    as a degraded one).
    """
    n_spatial = image.ndim if n_spatial is None else n_spatial
    scales = as_scales(scale, n_spatial)
    return DEGRADATIONS.lookup(kind).apply(image, scales, n_spatial)


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


__all__ = ["degrade_volume", "DEGRADATIONS", "Degradation", "register_degradation", "degrade",
           "interpolate", "INTERPOLATION_ORDERS", "kspace_resize", "kspace_downsample",
           "kspace_lowpass_mask", "centered_fft", "centered_ifft", "spline_resize",
           "spline_downsample", "thick_slice", "gaussian_downsample"]
