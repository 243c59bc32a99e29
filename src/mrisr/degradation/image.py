"""Image-domain degradations: spline (e.g. bicubic) resampling and thick-slice simulation.

Both follow the grid convention of :mod:`mrisr.grid`: the field of view is preserved, so voxel
``i`` of the output sits at the centre of its larger (or smaller) voxel in world space.
Arrays are channel-first: the last ``n_spatial`` axes are resampled, leading axes are batched.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from mrisr.errors import InputError
from mrisr.grid import ScaleLike, as_scales, downscaled_shape


def spline_resize(image: np.ndarray, out_shape: Sequence[int], order: int = 3,
                  antialias: bool = False, mode: str = "reflect") -> np.ndarray:
    """Resample the last ``len(out_shape)`` axes with a B-spline of ``order`` (0 nearest,
    1 linear, 3 cubic), FOV-preserving (``scipy.ndimage.zoom(grid_mode=True)``).

    ``antialias`` low-pass filters before downsampling (Gaussian, sigma = 0.5 * (f - 1) input
    voxels along an axis shrunk by ``f``), as an acquisition at the lower resolution would;
    without it the result matches ``scipy.ndimage.zoom(order=3)`` as used by ArSSR.
    Complex input is resampled as real and imaginary parts.
    """
    arr = np.asarray(image)
    if np.iscomplexobj(arr):
        return (spline_resize(arr.real, out_shape, order, antialias, mode)
                + 1j * spline_resize(arr.imag, out_shape, order, antialias, mode)).astype(
                    np.complex64 if arr.dtype == np.complex64 else np.complex128)
    n_spatial = len(out_shape)
    lead = arr.shape[:-n_spatial]
    in_shape = arr.shape[-n_spatial:]
    factors = [float(m) / float(n) for n, m in zip(in_shape, out_shape)]
    out_dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.float32
    flat = arr.reshape((-1,) + tuple(in_shape)).astype(np.float64, copy=False)
    result = np.empty((flat.shape[0],) + tuple(out_shape), dtype=out_dtype)
    # scipy's "reflect" is half-sample symmetric, the extension that matches pixel-centre grids.
    zoom_mode = {"reflect": "reflect", "nearest": "nearest", "constant": "grid-constant"}[mode]
    for i, item in enumerate(flat):
        if antialias:
            sigma = [0.5 * (1.0 / f - 1.0) if f < 1 else 0.0 for f in factors]
            if any(s > 0 for s in sigma):
                item = ndimage.gaussian_filter(item, sigma, mode="reflect")
        result[i] = ndimage.zoom(item, factors, order=order, mode=zoom_mode, grid_mode=True,
                                 prefilter=order > 1)
    return result.reshape(tuple(lead) + tuple(out_shape))


def spline_downsample(image: np.ndarray, scale: ScaleLike, n_spatial: int, order: int = 3,
                      antialias: bool = False) -> np.ndarray:
    """Degrade by ``scale`` per axis with spline resampling (the CSR-dMRI/ArSSR protocol)."""
    shape = image.shape[-n_spatial:]
    return spline_resize(image, downscaled_shape(shape, scale), order=order, antialias=antialias)


def gaussian_downsample(image: np.ndarray, scale: ScaleLike, n_spatial: int,
                        fwhm: float = 1.0) -> np.ndarray:
    """An image-domain acquisition model: a Gaussian point-spread function of full width at
    half maximum ``fwhm * s`` input voxels along each axis shrunk by ``s``, sampled at the
    centres of the smaller pixel-centre grid (linear interpolation of the blurred image)."""
    arr = np.asarray(image, dtype=np.float32)
    scales = as_scales(scale, n_spatial)
    lead = arr.ndim - n_spatial
    sigma = [0.0] * lead + [fwhm * s / (2 * np.sqrt(2 * np.log(2))) if s > 1 else 0.0
                            for s in scales]
    blurred = ndimage.gaussian_filter(arr, sigma, mode="reflect")
    return spline_resize(blurred, downscaled_shape(arr.shape[lead:], scales), order=1)


def slice_profile_weights(n: int, scale: float, profile: str = "box",
                          thickness: float = 1.0) -> np.ndarray:
    """Weight matrix ``W`` of a thick-slice acquisition of ``n`` thin voxels along one axis.

    Returns ``W`` of shape ``(m, n)``, float64, ``m = round(n / scale)``: output slice ``j`` is
    ``sum_i W[j, i] * x[i]``, each row sums to 1. The slices are spaced ``f = n / m`` input
    voxels apart (the FOV-preserving grid of :mod:`mrisr.grid`) and each weighs the whole extent
    of every input voxel with its slice profile centred on the slice position: ``box`` of full
    width ``thickness * f`` voxels (``thickness`` > 1: overlapping slices, < 1: a slice gap), or
    ``gaussian`` with that full width at half maximum.
    """
    (s,) = as_scales(scale, 1)
    m = max(1, int(round(n / s)))
    f = n / m
    width = thickness * f
    if width <= 0:
        raise InputError(f"slice thickness must be positive, got {thickness}")
    if profile not in ("box", "gaussian"):
        raise InputError(f"unknown slice profile '{profile}' (known: box, gaussian)")
    centres = (np.arange(m) + 0.5) * f  # in input-voxel units, edges at 0..n
    lo = np.arange(n)[None, :]
    hi = lo + 1.0
    if profile == "box":
        a = centres[:, None] - width / 2
        b = centres[:, None] + width / 2
        weights = np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0.0, None)
    else:
        from scipy.special import erf
        sigma = width / (2 * np.sqrt(2 * np.log(2)))
        cdf = lambda x: 0.5 * (1 + erf((x - centres[:, None]) / (np.sqrt(2) * sigma)))  # noqa: E731
        weights = cdf(hi) - cdf(lo)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights


def thick_slice(image: np.ndarray, scale: float, axis: int, profile: str = "box",
                thickness: float = 1.0) -> np.ndarray:
    """Simulate a thick-slice 2D acquisition along ``axis``.

    The output has ``round(N / scale)`` slices spaced ``f = N / N'`` input voxels apart; each is
    the input weighted by a slice profile centred on the slice position: ``box`` of full width
    ``thickness * f`` voxels (``thickness`` > 1 means overlapping slices, < 1 a slice gap), or
    ``gaussian`` with that full width at half maximum (:func:`slice_profile_weights`). Other
    axes are untouched.
    """
    arr = np.asarray(image)
    axis = axis % arr.ndim
    weights = slice_profile_weights(arr.shape[axis], scale, profile, thickness)
    moved = np.moveaxis(arr, axis, -1)
    out = moved @ weights.T.astype(moved.dtype if moved.dtype.kind in "fc" else np.float64)
    return np.moveaxis(out, -1, axis).astype(arr.dtype if arr.dtype.kind in "fc" else np.float32)
