"""Plain interpolation onto a finer grid: the way back from a degradation without a model (the
interpolation baselines of evaluation and of ``mrisr upscale --model cubic``)."""
from __future__ import annotations

import numpy as np

from mrisr.degradation.image import spline_resize
from mrisr.degradation.kspace import kspace_resize
from mrisr.errors import ConfigError

INTERPOLATION_ORDERS = {"nearest": 0, "linear": 1, "cubic": 3}


def interpolate(lr: np.ndarray, out_shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Upsample ``lr`` (real or complex, spatial axes only) to ``out_shape``.

    ``nearest``/``linear``/``cubic``: B-spline interpolation of order 0/1/3 on pixel centres;
    ``sinc``: zero-filled k-space interpolation (the natural inverse of k-space cropping).
    Complex input stays complex.
    """
    if kind == "sinc":
        return kspace_resize(lr, out_shape)
    if kind not in INTERPOLATION_ORDERS:
        raise ConfigError(f"unknown interpolation '{kind}' "
                          f"(known: {', '.join([*INTERPOLATION_ORDERS, 'sinc'])})")
    return spline_resize(lr, out_shape, order=INTERPOLATION_ORDERS[kind])
