"""Detail carried over from the reference where it matches the input: a local linear fit.

A 2D model with a reference learns how a reference's detail maps onto the target's, from the
pairs it was trained on. On pairs unlike those (another contrast pair, a whole head with
skull, another anatomy) it transfers less than the reference holds. Within a small window,
however, two contrasts of the same anatomy are often related by a line, ``target ~ a ref + b``
(the guided filter, He et al. 2013). The line can be fitted on the band the input measured:
the zero-filled input ``z`` against the reference cropped to the same band, ``r_low``. Where
it holds, the reference's detail beyond that band predicts the target's:
``g = z + a (r - r_low)``.

Where it does not hold (tissue whose contrasts are not related by a line, noise in the
reference, a misaligned reference), the fit says so itself: its local coefficient of
determination ``c`` (0 .. 1, measured on the same band) is low. The output moves towards
``g`` by ``weight * c`` in each voxel, ``x + weight c (g - x)``, and is then projected onto
the input's k-space again (the transferred detail leaks into the measured band).

Measured on whole volumes as ``mrisr upscale`` runs them (docs/benchmarks/cross_dataset.md,
"Detail from the reference by a local linear fit"), with :func:`auto_weight`.

Shapes: ``data`` ``(X, Y, Z)`` on the output grid, ``target`` the input volume with the same
slices along ``slice_axis`` and fewer pixels along the upscaled axes, ``reference`` on any
in-plane grid with the input's slices (:func:`~mrisr.inference.upscale.reference_grid`);
intensities in the input's units.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np
from scipy.ndimage import uniform_filter

from mrisr.data.intensity import to_magnitude
from mrisr.degradation.consistency import project
from mrisr.degradation.image import slice_profile_weights
from mrisr.degradation.kspace import kspace_resize

__all__ = ["auto_weight", "THICK_SLICE_WEIGHT", "WINDOW_INPUT_PIXELS", "REGULARISATION",
           "local_linear_fit", "transfer_reference_detail"]

#: ``auto``'s weight for thick slices (3 to 5 mm to 1 mm: the best weight was 0.3 on brats18,
#: 0.2-0.3 on ixi002 and 0.6 on the whole head; 0.3 was above the model alone on all three).
THICK_SLICE_WEIGHT = 0.3


def auto_weight(factor: float, consistency: str = "kspace") -> float:
    """The share of the way towards the reference's prediction that ``auto`` goes where the
    fit is perfect (``c = 1``). For an in-plane job (``consistency`` ``kspace``) it grows with
    the factor: 0.4 at x2, 0.6 at x4, 0.8 at x8 (``0.2 + 0.2 log2(factor)``, within
    [0.2, 0.8]); the larger the factor, the less the input tells the model and the more the
    reference's prediction is worth, and on the whole-volume test sets the best weight rose
    with the factor on every set. For thick slices (``slice_box``) it is
    :data:`THICK_SLICE_WEIGHT` at every thickness: there the model sees every in-plane detail
    and its output is already close; weights of 0.4 or more fell below the model alone on
    ixi002's 5 mm slices, 0.66 on brats' (docs/benchmarks/cross_dataset.md, "Detail from the
    reference by a local linear fit")."""
    if consistency == "slice_box":
        return THICK_SLICE_WEIGHT
    return round(float(np.clip(0.2 + 0.2 * np.log2(max(factor, 1.0)), 0.2, 0.8)), 3)


#: The window's side in input pixels: twice the factor in output pixels, made odd (3 pixels
#: along an axis that is not upscaled, such as the in-plane axis of a thick-slice plane).
WINDOW_INPUT_PIXELS = 2.0
#: Added to each window's reference variance, relative to the reference's mean square: a flat
#: reference (background, noise only) gets a slope near 0 rather than a noisy one.
REGULARISATION = 1e-3


def _window(factors: Sequence[float]) -> list[int]:
    return [int(round(WINDOW_INPUT_PIXELS * f)) | 1 for f in factors]


def local_linear_fit(signal: np.ndarray, guide: np.ndarray, size: Sequence[int],
                     eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The slope ``a`` of ``signal ~ a guide + b`` in every box window of ``size`` (one side
    per axis) and the fit's coefficient of determination ``c`` in [0, 1], both averaged over
    the windows that hold each pixel. ``eps`` is added to the guide's variance."""
    def mean(x):
        return uniform_filter(x, size=list(size), mode="reflect")

    m_s, m_g = mean(signal), mean(guide)
    cov = mean(signal * guide) - m_s * m_g
    var_g = np.maximum(mean(guide * guide) - m_g * m_g, 0) + eps
    var_s = np.maximum(mean(signal * signal) - m_s * m_s, 0) + eps
    slope = cov / var_g
    determination = np.clip(cov * cov / (var_g * var_s), 0.0, 1.0)
    return mean(slope), mean(determination)


class _Acquisition:
    """What the input's acquisition does to a 2D slice on the output grid: the in-plane k-space
    crop (followed by the magnitude, as the input is stored), or a box slice profile along one
    thick axis (of the slice's two axes) with the other axis kept."""

    def __init__(self, model: str, out_plane: tuple, in_plane: tuple):
        self.model, self.out_plane, self.in_plane = model, out_plane, in_plane
        if model == "slice_box":
            self.thick = int(np.argmax([o / i for o, i in zip(out_plane, in_plane)]))
            n, m = out_plane[self.thick], in_plane[self.thick]
            weights = slice_profile_weights(n, n / m, "box", 1.0)
            self.weights, self.inverse = weights, np.linalg.pinv(weights, rcond=1e-10)

    def _along_thick(self, matrix: np.ndarray, image: np.ndarray) -> np.ndarray:
        return np.moveaxis(np.tensordot(matrix, np.moveaxis(image, self.thick, 0), axes=1),
                           0, self.thick)

    def back(self, lr: np.ndarray) -> np.ndarray:
        """The measured slice on the output grid with nothing added (the zero-filled
        interpolation; for slices, the minimum-norm spread of each thick slice)."""
        if self.model == "kspace":
            return to_magnitude(kspace_resize(lr, self.out_plane))
        return self._along_thick(self.inverse, lr)

    def measured(self, image: np.ndarray) -> np.ndarray:
        """``image`` (on the output grid) acquired as the input was, then brought back."""
        if self.model == "kspace":
            return self.back(to_magnitude(kspace_resize(image, self.in_plane)))
        return self.back(self._along_thick(self.weights, image))


def transfer_reference_detail(data: np.ndarray, target: np.ndarray, reference: np.ndarray,
                              slice_axis: int, weight: Optional[float] = None,
                              consistency: str = "kspace", progress=None) -> dict:
    """Move ``data`` (in place) towards the reference's locally fitted prediction, slice by
    slice along ``slice_axis`` (see the module docstring), and project each slice onto the
    input under ``consistency``: ``kspace`` (an in-plane job) or ``slice_box`` (thick slices
    along one of the slice's axes, the other not upscaled). ``weight`` in [0, 1] (``None``:
    :func:`auto_weight` of the largest factor and ``consistency``); ``progress(n)`` is called
    per slice. Only the band the reference holds moves: a reference coarser than the output
    predicts nothing beyond its own resolution, and one no finer than the input changes
    nothing.
    Returns the sidecar's evidence: ``weight``, ``window`` (output pixels per axis of the
    slice), ``mean_confidence`` (the mean of ``c`` over the voxels with signal) and
    ``seconds``; or ``{"reason": ...}`` where nothing was done."""
    axis = slice_axis
    plane = [a for a in range(3) if a != axis]
    if data.shape[axis] != target.shape[axis] or reference.shape[axis] != target.shape[axis]:
        return {"reason": "the slice axis is upscaled too"}
    out_plane = tuple(data.shape[a] for a in plane)
    in_plane = tuple(target.shape[a] for a in plane)
    ref_plane = tuple(min(reference.shape[a], n) for a, n in zip(plane, out_plane))
    factors = [o / i for o, i in zip(out_plane, in_plane)]
    if consistency not in ("kspace", "slice_box"):
        return {"reason": f"needs the k-space or box slice-profile projection, not "
                          f"'{consistency}'"}
    if consistency == "slice_box" and sorted(factors)[0] != 1.0:
        return {"reason": "thick slices upscaled in-plane too"}
    if weight is None:
        weight = auto_weight(max(factors), consistency)
    if not weight > 0:
        return {"reason": "weight 0"}
    if all(r <= i for r, i in zip(ref_plane, in_plane)):
        return {"reason": "the reference is no finer than the input"}
    t0 = time.perf_counter()
    acquisition = _Acquisition(consistency, out_plane, in_plane)
    window = _window(factors)
    eps = REGULARISATION * float(np.mean(np.square(reference, dtype=np.float64)))
    confidence_sum, signal_voxels = 0.0, 0
    for k in range(data.shape[axis]):
        index = [slice(None)] * 3
        index[axis] = k
        out = data[tuple(index)]  # a view
        lr = np.take(target, k, axis=axis).astype(np.float32)
        ref = np.take(reference, k, axis=axis)
        if progress:
            progress(1)
        if not np.any(ref) or not np.any(lr):
            continue
        if ref.shape != out_plane:
            ref = to_magnitude(kspace_resize(ref.astype(np.float32), out_plane))
        ref = ref.astype(np.float64)
        # The reference goes through what the input went through.
        ref_low = acquisition.measured(ref)
        zero_filled = acquisition.back(lr).astype(np.float64)
        slope, confidence = local_linear_fit(zero_filled, ref_low, window, eps)
        predicted = zero_filled + slope * (ref - ref_low)
        step = (weight * confidence) * (predicted - out)
        if ref_plane != out_plane:
            step = kspace_resize(kspace_resize(step, ref_plane), out_plane).real
        project((out + step).astype(np.float32), lr, consistency, out=out)
        live = out > 0
        confidence_sum += float(confidence[live].sum())
        signal_voxels += int(live.sum())
    return {"weight": float(weight), "window": window,
            "mean_confidence": round(confidence_sum / signal_voxels, 4) if signal_voxels else 0.0,
            "seconds": round(time.perf_counter() - t0, 3)}
