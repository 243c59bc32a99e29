"""How much of a model's unmeasured detail to keep, measured on the input itself.

After the k-space projection (:mod:`mrisr.degradation.consistency`) an output ``x`` is the
zero-filled interpolation ``z`` of the input plus what the model adds beyond the measured
band, ``d = x - z``. On scans unlike its training data that detail can be worse than none
(docs/BENCHMARKS.md: on a whole head with skull `liif_s` was 0.23 dB below zero-filling at
x2).
The gain ``g`` in ``z + g d`` is fitted on a pair made from the input, in the spirit of
ZSSR/SMORE: the input degraded once more by the same in-plane k-space crop is upscaled back to
the input's grid by the same model and projected; its detail ``d'`` and the true detail
``t' = input - z'`` give the least-squares gain ``<d', t'> / <d', d'>``, clipped to ``[0, 1]``
(``0``: the output is the zero-filled interpolation; ``1``: the model's output unchanged).
It assumes that the model treats the band one octave below as it treats the one it fills.
The 3D series path fits the same gain for a 3D model's correction to cubic interpolation
(:meth:`mrisr.inference.volume3d.SeriesUpscaler3D.calibrate`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from mrisr.data.intensity import to_magnitude
from mrisr.degradation.consistency import project
from mrisr.degradation.kspace import kspace_resize

__all__ = ["MIN_PAIR_SIZE", "least_squares_gain", "detail_gain", "apply_detail_gain"]

#: The degraded-again pair must keep at least this many pixels along each upscaled axis.
MIN_PAIR_SIZE = 16


def _zero_filled(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    return to_magnitude(kspace_resize(image, tuple(shape))).astype(np.float32)


def least_squares_gain(detail: np.ndarray, truth: np.ndarray) -> dict:
    """The gain ``g`` minimising ``|truth - g detail|^2`` (same-shaped arrays, e.g. the voxels
    of a mask): ``{"gain": g clipped to [0, 1], "fitted_gain": g}``; 1 when ``detail`` is 0."""
    detail = np.asarray(detail, np.float64).ravel()
    truth = np.asarray(truth, np.float64).ravel()
    power = float(np.dot(detail, detail))
    gain = float(np.dot(detail, truth)) / power if power > 0 else 1.0
    return {"gain": round(float(np.clip(gain, 0.0, 1.0)), 4), "fitted_gain": round(gain, 4)}


def detail_gain(upscaler, target: np.ndarray, out_shape: Sequence[int], slice_axis: int,
                reference: Optional[np.ndarray] = None, max_slices: int = 12) -> dict:
    """The gain of the detail beyond the measured band for upscaling ``target`` ``(X, Y, Z)``
    to ``out_shape`` in-plane (``out_shape[slice_axis]`` equal to the input's) with
    ``upscaler`` (a :class:`~mrisr.inference.upscale.SliceUpscaler`; ``reference`` on its
    reference grid, same slices as ``target``). Fitted on at most ``max_slices`` slices spread
    over those with signal. Returns ``{"gain": g, "slices": n, "pair_shape": [...]}``, or
    ``{"gain": 1.0, "reason": ...}`` where no pair can be made."""
    axis = slice_axis
    if out_shape[axis] != target.shape[axis]:
        return {"gain": 1.0, "reason": "the slice axis is upscaled too"}
    factors = [o / n for n, o in zip(target.shape, out_shape)]
    pair_shape = [max(1, int(round(n / f))) for n, f in zip(target.shape, factors)]
    if any(pair_shape[a] < MIN_PAIR_SIZE for a in range(3) if factors[a] > 1):
        return {"gain": 1.0, "reason": f"the input degraded again would have fewer than "
                                       f"{MIN_PAIR_SIZE} pixels along an axis"}
    energy = np.moveaxis(np.abs(target), axis, 0).reshape(target.shape[axis], -1).mean(axis=1)
    live = np.flatnonzero(energy > 0.1 * energy.max()) if energy.max() > 0 else []
    if len(live) == 0:
        return {"gain": 1.0, "reason": "no signal"}
    picks = live[np.unique(np.linspace(0, len(live) - 1, min(max_slices, len(live))
                                       ).round().astype(int))]
    sub = np.take(np.abs(target).astype(np.float32), picks, axis=axis)
    ref = np.take(reference, picks, axis=axis) if reference is not None else None
    pair_shape[axis] = len(picks)
    lr2 = _zero_filled(sub, pair_shape)
    pred = upscaler.upscale(lr2, sub.shape, axis, ref)
    project(pred, lr2, "kspace", out=pred)
    zf2 = _zero_filled(lr2, sub.shape)
    return {**least_squares_gain(pred - zf2, sub - zf2), "slices": int(len(picks)),
            "pair_shape": [int(n) for n in pair_shape]}


def apply_detail_gain(data: np.ndarray, target: np.ndarray, gain: float,
                      slice_axis: int) -> None:
    """``data <- z + gain (data - z)`` in place, ``z`` the zero-filled interpolation of
    ``target`` onto ``data``'s grid, slice by slice along ``slice_axis`` (not upscaled), and
    clipped at 0."""
    if gain >= 1.0:
        return
    inplane = tuple(n for a, n in enumerate(data.shape) if a != slice_axis)
    for k in range(data.shape[slice_axis]):
        index = [slice(None)] * data.ndim
        index[slice_axis] = k
        out = data[tuple(index)]  # a view
        zf = _zero_filled(np.take(target, k, axis=slice_axis), inplane)
        out -= zf
        out *= gain
        out += zf
        np.maximum(out, 0, out=out)
