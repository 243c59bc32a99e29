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

That assumption fails where an image's finest band is unlike its coarser ones: on a smooth
average template (ICBM152, T2 <- PD at x2) the one-octave-lower fit kept 0.45-0.69 of a
detail whose best weight was 0.05-0.09, and the default was 2.5 dB below zero-filling.
A reference at full resolution allows a check at the octave the job fills
(:func:`reference_check`): the reference itself, brought to the output's in-plane resolution
and degraded by the job's k-space crop, is upscaled back by a model that reads no reference.
Where that model adds far more detail than the reference has at this octave, the image is
smoother there than the models learned, and the gain fitted on the reference weighs the job's
detail.
The 3D series path fits the same gain for a 3D model's correction to cubic interpolation
(:meth:`mrisr.inference.volume3d.SeriesUpscaler3D.calibrate`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from mrisr.data.intensity import to_magnitude
from mrisr.degradation.consistency import project
from mrisr.degradation.kspace import kspace_resize

__all__ = ["MIN_PAIR_SIZE", "SMOOTHER_THAN_EXPECTED", "least_squares_gain", "detail_gain",
           "reference_check", "apply_detail_gain"]

#: The degraded-again pair must keep at least this many pixels along each upscaled axis.
MIN_PAIR_SIZE = 16
#: :func:`reference_check` weighs the detail when a model without the reference adds more than
#: this many times the reference's own detail energy at the job's octave (and does worse than
#: zero-filling there). On the whole-volume test sets that ratio was 5.4 on the ICBM152
#: template at x2 and at most 1.03 elsewhere (docs/benchmarks/cross_dataset.md, "The reference
#: check"); below it the fitted gain was as likely to cost as to gain.
SMOOTHER_THAN_EXPECTED = 2.0


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
    picks = _slices_with_signal(target, axis, max_slices)
    if len(picks) == 0:
        return {"gain": 1.0, "reason": "no signal"}
    sub = np.take(np.abs(target).astype(np.float32), picks, axis=axis)
    ref = np.take(reference, picks, axis=axis) if reference is not None else None
    pair_shape[axis] = len(picks)
    lr2 = _zero_filled(sub, pair_shape)
    pred = upscaler.upscale(lr2, sub.shape, axis, ref)
    project(pred, lr2, "kspace", out=pred)
    zf2 = _zero_filled(lr2, sub.shape)
    return {**least_squares_gain(pred - zf2, sub - zf2), "slices": int(len(picks)),
            "pair_shape": [int(n) for n in pair_shape]}


def _slices_with_signal(image: np.ndarray, axis: int, count: int) -> np.ndarray:
    """Up to ``count`` slice indices along ``axis`` spread over those whose mean magnitude is
    at least a tenth of the largest."""
    energy = np.moveaxis(np.abs(image), axis, 0).reshape(image.shape[axis], -1).mean(axis=1)
    if not energy.max() > 0:
        return np.zeros(0, dtype=int)
    live = np.flatnonzero(energy > 0.1 * energy.max())
    return live[np.unique(np.linspace(0, len(live) - 1, min(count, len(live))
                                      ).round().astype(int))]


def reference_check(upscaler, reference: np.ndarray, in_shape: Sequence[int],
                    out_shape: Sequence[int], slice_axis: int, max_slices: int = 12) -> dict:
    """The detail gain measured on the reference at the octave an in-plane job fills.

    ``reference`` ``(X, Y, Z)`` is on its own in-plane grid with the input's slices along
    ``slice_axis`` (:func:`~mrisr.inference.upscale.reference_grid`); ``in_shape`` and
    ``out_shape`` are the job's input and output shapes (equal along ``slice_axis``);
    ``upscaler`` a :class:`~mrisr.inference.upscale.SliceUpscaler` of a model that reads no
    reference. At most ``max_slices`` slices of the reference, cropped in k-space to the
    output's in-plane shape and then to the input's, are upscaled back and projected. Returns
    ``{"gain", "fitted_gain", "error_ratio", "energy_ratio", "slices", "reason"}``:
    ``error_ratio`` is the squared error of the model's output over zero-filling's,
    ``energy_ratio`` the energy of the model's detail beyond the measured band over the
    reference's own; ``gain`` is the least-squares gain in [0, 1] where the first exceeds 1 and
    the second :data:`SMOOTHER_THAN_EXPECTED` (the reference is smoother than the model
    expects), else 1 (the detail kept as it is)."""
    axis = slice_axis
    plane = [a for a in range(3) if a != axis]
    # 5 %: the reference grid's size is rounded from the field of view and its spacing.
    if any(reference.shape[a] < 0.95 * out_shape[a] for a in plane):
        return {"gain": 1.0, "reason": "the reference is coarser than the output in-plane"}
    picks = _slices_with_signal(reference, axis, max_slices)
    if len(picks) == 0:
        return {"gain": 1.0, "reason": "the reference has no signal"}
    sub = np.take(np.abs(reference).astype(np.float32), picks, axis=axis)
    truth_shape = [len(picks) if a == axis else int(out_shape[a]) for a in range(3)]
    lr_shape = [len(picks) if a == axis else int(in_shape[a]) for a in range(3)]
    truth = _zero_filled(sub, truth_shape)
    lr = _zero_filled(truth, lr_shape)
    pred = upscaler.upscale(lr, truth.shape, axis, None)
    project(pred, lr, "kspace", out=pred)
    zf = _zero_filled(lr, truth.shape)
    # Zero-filling's error is the reference's own detail at this octave.
    truth_energy = float(np.sum((truth - zf) ** 2, dtype=np.float64))
    if not truth_energy > 1e-8 * float(np.sum(truth.astype(np.float64) ** 2)):
        return {"gain": 1.0, "slices": int(len(picks)),
                "reason": "the reference has no detail at this octave to check against"}
    ratio = float(np.sum((pred - truth) ** 2, dtype=np.float64)) / truth_energy
    energy = float(np.sum((pred - zf) ** 2, dtype=np.float64)) / truth_energy
    fit = least_squares_gain(pred - zf, truth - zf)
    smoother = ratio > 1.0 and energy > SMOOTHER_THAN_EXPECTED
    return {"gain": fit["gain"] if smoother else 1.0, "fitted_gain": fit["fitted_gain"],
            "error_ratio": round(ratio, 4), "energy_ratio": round(energy, 4),
            "slices": int(len(picks)),
            "reason": ("the reference is smoother at this octave than a model without it "
                       "expects (its detail has more than twice the reference's energy, and "
                       "its error exceeds zero-filling's): the detail weighed by the gain "
                       "fitted there") if smoother else
                      ("the reference's detail at this octave is as a model without it "
                       "expects: the detail kept")}


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
