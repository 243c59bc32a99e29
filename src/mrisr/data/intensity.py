"""Intensity normalisation shared by training and inference.

Images are divided by a robust maximum computed from the *low-resolution input* (never from
the unknown high-resolution truth), so the same rule applies when a user upscales a scan.
"""
from __future__ import annotations

import numpy as np

FOREGROUND_FRACTION = 0.02
PERCENTILE = 99.5


def robust_max(image: np.ndarray) -> float:
    """99.5th percentile of the magnitude over the foreground (values above 2 % of the maximum);
    1.0 for an all-zero image."""
    mag = np.abs(np.asarray(image))
    peak = float(mag.max()) if mag.size else 0.0
    if peak <= 0:
        return 1.0
    values = mag[mag > FOREGROUND_FRACTION * peak]
    return float(np.percentile(values, PERCENTILE)) or peak


def to_magnitude(image: np.ndarray) -> np.ndarray:
    """A method's output as a magnitude image: ``|x|`` of complex data; real data clipped at 0
    (a negative estimate of a magnitude means "close to zero": folding it with ``|x|`` would
    turn ringing and noise around zero into spurious positive signal)."""
    if np.iscomplexobj(image):
        return np.abs(image)
    return np.clip(image, 0, None)


def as_channels(image: np.ndarray, kind: str) -> np.ndarray:
    """``(*sp)`` real or complex -> ``(C, *sp)`` float32: ``magnitude`` (C=1) or ``complex``
    (C=2, real and imaginary)."""
    if kind == "magnitude":
        return np.abs(image).astype(np.float32)[None]
    if kind == "complex":
        z = np.asarray(image).astype(np.complex64)
        return np.stack([z.real, z.imag]).astype(np.float32)
    raise ValueError(f"unknown input kind {kind!r}")
