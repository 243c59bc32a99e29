"""Domain randomisation of 2D training images: what differs between scanners and sites.

Each function takes a magnitude image ``(H, W)`` float32 (in any intensity units) and a numpy
``Generator``, and returns a new image of the same shape. They model the scan, not the
degradation: a bias field, noise and a contrast change belong to the high-resolution truth too,
so they are applied *before* the low-resolution acquisition is simulated.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from mrisr.data.intensity import robust_max
from mrisr.degradation.image import spline_resize


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def bias_field(shape: tuple[int, int], rng: np.random.Generator, strength: float,
               control_points: int = 4) -> np.ndarray:
    """A smooth multiplicative field ``exp(b)`` whose log ``b`` spans ``[-strength, strength]``:
    random values on a ``control_points``-square grid, interpolated by a cubic spline."""
    coarse = rng.standard_normal((control_points, control_points))
    field = spline_resize(coarse, shape, order=3)
    field = field / max(float(np.abs(field).max()), 1e-6)
    return np.exp(strength * field).astype(np.float32)


def add_noise(image: np.ndarray, rng: np.random.Generator, snr: float,
              rician: bool = True) -> np.ndarray:
    """Noise of standard deviation ``robust_max(image) / snr``: Rician (the magnitude of a
    complex image with Gaussian noise in both channels, as a magnitude reconstruction gives)
    or Gaussian (clipped at zero)."""
    sigma = robust_max(image) / snr
    real = image + sigma * rng.standard_normal(image.shape)
    if rician:
        imag = sigma * rng.standard_normal(image.shape)
        return np.hypot(real, imag).astype(np.float32)
    return np.clip(real, 0, None).astype(np.float32)


def gamma(image: np.ndarray, power: float) -> np.ndarray:
    """``(x / m) ** power * m`` with ``m`` the robust maximum: a contrast change that keeps the
    intensity scale."""
    m = robust_max(image)
    return (np.power(np.clip(image, 0, None) / m, power) * m).astype(np.float32)


def rotate(images: list[np.ndarray], degrees: float) -> list[np.ndarray]:
    """Rotate co-registered images by the same small angle (linear interpolation, zero fill)."""
    return [ndimage.rotate(im, degrees, reshape=False, order=1, mode="constant").astype(
        np.float32) for im in images]


def shift(image: np.ndarray, offset: tuple[float, float]) -> np.ndarray:
    """Translate by ``offset`` pixels (sub-pixel, linear interpolation): a misregistration."""
    return ndimage.shift(image, offset, order=1, mode="nearest").astype(np.float32)
