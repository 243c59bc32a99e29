"""Synthetic second contrasts: the same anatomy under another, random contrast.

A whole-head T1w has no partner contrast in the data; a random remapping of its intensities
gives one. The map is a smooth, generally non-monotonic function of the (normalised) intensity,
so every tissue keeps its shape and partial-volume voxels stay between their tissues' values,
while which tissue is bright and which is dark changes from draw to draw. A model trained on
such pairs cannot rely on a fixed relation between the reference's and the target's intensities;
it has to take *edges* from the reference, whatever its contrast.
"""
from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator

from mrisr.data.intensity import robust_max

#: Intensities above this multiple of the robust maximum share the value there.
_TOP = 1.25


def random_intensity_map(rng: np.random.Generator, n_knots: int = 7) -> PchipInterpolator:
    """A random smooth map of normalised intensity ``[0, 1.25] -> [0, 1]`` with ``f(0) = 0``
    (air stays dark, as it is in every MR contrast). Shape-preserving cubic (PCHIP) through
    knots at even spacing with values drawn uniformly, so it does not overshoot its knots."""
    knots = np.linspace(0.0, _TOP, n_knots)
    values = rng.uniform(0.05, 1.0, n_knots)
    values[0] = 0.0
    return PchipInterpolator(knots, values)


def random_contrast(image: np.ndarray, rng: np.random.Generator,
                    n_knots: int = 7) -> np.ndarray:
    """``image`` (any shape, magnitude) under a random contrast, in its own intensity units.

    The intensity is divided by the image's robust maximum, mapped through
    :func:`random_intensity_map` and multiplied back, so the result has the original's scale.
    """
    scale = robust_max(image)
    x = np.clip(np.abs(image) / scale, 0.0, _TOP)
    return (random_intensity_map(rng, n_knots)(x) * scale).astype(np.float32)
