"""k-space resizing: the Dual-ArbNet degradation (central crop) and zero-filled (sinc)
interpolation (zero padding), one operation with two directions.

An image with ``N`` samples per axis is transformed with the orthonormal, centred FFT; the
central ``M`` samples are kept (``M < N``, a low-resolution acquisition of the same field of
view) or the spectrum is zero-padded to ``M`` (``M > N``); the inverse FFT then gives the image
on the ``M``-sample grid. The result is multiplied by ``sqrt(M_total / N_total)`` so that the
mean intensity is unchanged (the orthonormal FFT otherwise scales it by the change in size;
the reference code divides by ``sqrt(s1 * s2)`` for the same reason).

Two alignments of the two grids are offered:

* ``align="grid"`` (default): a linear phase puts the output samples on the field-of-view
  preserving pixel-centre grid of :mod:`mrisr.grid` (output sample ``j`` lies at input position
  ``(j + 0.5) * N / M - 0.5``). The magnitudes of the kept k-space samples are exactly those of
  the plain crop; only their phase differs. This is the geometry of NIfTI affines, so models
  trained on it place structures correctly in world space, and a crop followed by a pad back to
  ``N`` is an ideal low-pass filter of the original.
* ``align="centre"``: the reference code's plain crop; the spectrum centre ``N // 2`` maps to
  ``M // 2``, so for even sizes structures on the low-resolution grid appear displaced by
  ``(N / M - 1) / 2`` input pixels relative to the pixel-centre grid (1.5 pixels at x4). Use
  it to reproduce published numbers; interpolation baselines evaluated on it pay for that shift.

Either way a pad followed by a crop (same alignment) is the identity.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import numpy as np
import torch

from mrisr.grid import ScaleLike, downscaled_shape

ArrayLike = Union[np.ndarray, torch.Tensor]


def _spatial_dims(ndim_total: int, n_spatial: int) -> tuple[int, ...]:
    return tuple(range(ndim_total - n_spatial, ndim_total))


def centered_fft(image: torch.Tensor, n_spatial: int) -> torch.Tensor:
    """Orthonormal FFT over the last ``n_spatial`` axes with DC at index ``N // 2``."""
    dims = _spatial_dims(image.ndim, n_spatial)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(image, dim=dims), dim=dims,
                                             norm="ortho"), dim=dims)


def centered_ifft(kspace: torch.Tensor, n_spatial: int) -> torch.Tensor:
    """Inverse of :func:`centered_fft`."""
    dims = _spatial_dims(kspace.ndim, n_spatial)
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(kspace, dim=dims), dim=dims,
                                              norm="ortho"), dim=dims)


def _crop_or_pad_centre(k: torch.Tensor, out_shape: Sequence[int]) -> torch.Tensor:
    n_spatial = len(out_shape)
    for axis, m in zip(_spatial_dims(k.ndim, n_spatial), out_shape):
        n = k.shape[axis]
        if m < n:
            start = n // 2 - m // 2
            k = k.narrow(axis, start, m)
        elif m > n:
            before = m // 2 - n // 2
            shape = list(k.shape)
            shape[axis] = m
            padded = k.new_zeros(shape)
            padded.narrow(axis, before, n).copy_(k)
            k = padded
    return k


def _as_tensor(x: ArrayLike) -> tuple[torch.Tensor, bool]:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)), True
    return x, False


def _grid_alignment_phase(k: torch.Tensor, in_shape: Sequence[int],
                          out_shape: Sequence[int]) -> torch.Tensor:
    # Shift the image by delta input pixels so that the centred-FFT output grid (sample j at
    # (j - M//2) * N/M from the input's N//2) becomes the pixel-centre grid.
    n_spatial = len(in_shape)
    for axis, n, m in zip(_spatial_dims(k.ndim, n_spatial), in_shape, out_shape):
        if n == m:
            continue
        delta = (m // 2 + 0.5) * n / m - 0.5 - n // 2
        freq = torch.arange(n, dtype=torch.float64, device=k.device) - n // 2
        ramp = torch.polar(torch.ones_like(freq), 2 * np.pi * freq * delta / n).to(k.dtype)
        shape = [1] * k.ndim
        shape[axis] = n
        k = k * ramp.reshape(shape)
    return k


KSPACE_WINDOWS = ("hamming", "tukey")


def _window_1d(kind: str, m: int, device) -> torch.Tensor:
    """A symmetric apodisation window over ``m`` kept samples (peak 1 at the centre)."""
    t = (torch.arange(m, dtype=torch.float64, device=device) + 0.5) / m  # (0, 1)
    if kind == "hamming":
        return 0.54 - 0.46 * torch.cos(2 * np.pi * t)
    if kind == "tukey":  # flat centre, cosine tapers over the outer quarter on each side
        taper = 0.25
        edge = torch.minimum(t, 1 - t) / taper
        return torch.where(edge >= 1, torch.ones_like(t), 0.5 * (1 - torch.cos(np.pi * edge)))
    raise ValueError(f"unknown k-space window {kind!r} (known: {', '.join(KSPACE_WINDOWS)})")


def _acquisition_weights(k: torch.Tensor, n_spatial: int, window: Optional[str],
                         partial_fourier: float) -> torch.Tensor:
    """Apodise the kept block (``window``) and zero the unacquired share of the last axis
    (``partial_fourier`` < 1: that fraction of the samples is kept, the missing ones at the
    start of the axis; reconstructed by zero filling)."""
    for axis in _spatial_dims(k.ndim, n_spatial):
        m = k.shape[axis]
        shape = [1] * k.ndim
        shape[axis] = m
        if window is not None:
            k = k * _window_1d(window, m, k.device).to(k.dtype).reshape(shape)
    if partial_fourier < 1.0:
        axis = k.ndim - 1
        m = k.shape[axis]
        missing = int(round((1.0 - partial_fourier) * m))
        if missing:
            keep = torch.ones(m, dtype=k.real.dtype, device=k.device)
            keep[:missing] = 0
            k = k * keep.reshape([1] * (k.ndim - 1) + [m]).to(k.dtype)
    return k


def kspace_resize(image: ArrayLike, out_shape: Sequence[int], align: str = "grid",
                  window: Optional[str] = None, partial_fourier: float = 1.0) -> ArrayLike:
    """Resample the last ``len(out_shape)`` axes of ``image`` to ``out_shape`` in k-space.

    ``image`` may be real or complex (numpy or torch, any leading batch/channel axes). The
    result is always complex (complex64 for single-precision input) and of the same array type.
    ``align``: ``"grid"`` or ``"centre"``, see the module docstring. ``window``
    (``hamming``/``tukey``) apodises the samples kept and ``partial_fourier`` (0.5 .. 1) keeps
    only that share of the last axis's samples (zero-filled), as scanners often acquire; both
    act on the output's spectrum (after cropping or padding).
    """
    if align not in ("grid", "centre"):
        raise ValueError(f"align must be 'grid' or 'centre', got {align!r}")
    if not 0.5 <= partial_fourier <= 1.0:
        raise ValueError(f"partial_fourier must be in [0.5, 1], got {partial_fourier}")
    x, was_numpy = _as_tensor(image)
    n_spatial = len(out_shape)
    in_shape = tuple(x.shape[-n_spatial:])
    if not x.is_complex():
        x = x.to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)
    k = centered_fft(x, n_spatial)
    if align == "grid":
        k = _grid_alignment_phase(k, in_shape, out_shape)
    k = _crop_or_pad_centre(k, out_shape)
    if window is not None or partial_fourier < 1.0:
        k = _acquisition_weights(k, n_spatial, window, partial_fourier)
    out = centered_ifft(k, n_spatial) * float(np.sqrt(np.prod(out_shape) / np.prod(in_shape)))
    return out.numpy() if was_numpy else out


def kspace_downsample(image: ArrayLike, scale: ScaleLike, n_spatial: int = 2,
                      align: str = "grid", window: Optional[str] = None,
                      partial_fourier: float = 1.0) -> ArrayLike:
    """The Dual-ArbNet degradation: keep the central ``round(N / s)`` k-space samples per axis.

    ``scale`` is a number or one value per spatial axis, any real value >= 1 (1 leaves the
    axis alone). Returns the complex low-resolution image on its smaller grid.
    """
    shape = tuple(image.shape[-n_spatial:])
    return kspace_resize(image, downscaled_shape(shape, scale), align=align, window=window,
                         partial_fourier=partial_fourier)


def kspace_lowpass_mask(hr_shape: Sequence[int], lr_shape: Sequence[int],
                        device=None) -> torch.Tensor:
    """Boolean mask on the centred HR spectrum: True where an LR acquisition of ``lr_shape``
    sampled k-space (the central block that :func:`kspace_downsample` keeps)."""
    mask = torch.zeros(tuple(hr_shape), dtype=torch.bool, device=device)
    index = []
    for n, m in zip(hr_shape, lr_shape):
        m = min(m, n)
        start = n // 2 - m // 2
        index.append(slice(start, start + m))
    mask[tuple(index)] = True
    return mask
