"""Data consistency: project a super-resolved image onto the images that reproduce the input.

A super-resolved output ``x`` (``N`` samples per axis) is *consistent* with the measured
low-resolution input ``y`` (``M`` samples per axis) when the input's own acquisition model
``A`` gives the input back: ``A x = y``. The models are those of :mod:`mrisr.degradation`,
each acting along one or more axes:

* ``kspace``: the grid-aligned central k-space crop of :func:`~mrisr.degradation.kspace_resize`
  (``align="grid"``, intensity compensation ``sqrt(M/N)``), separable over its axes;
* ``slice``: the slice-profile weights ``W`` (``(M, N)`` per axis, box or Gaussian) of
  :func:`~mrisr.degradation.thick_slice`.

The projection is the smallest change that makes ``x`` consistent:
``x <- x + A^+ (y - A x)``, with ``A^+`` the pseudo-inverse. For the k-space crop ``A^+`` is
the grid-aligned zero padding back to ``N`` samples, so the projection *replaces the central
k-space block that the crop keeps* by the input's spectrum and leaves the rest of the spectrum
(the part that the model added) alone. For slice profiles ``A^+ = W^T (W W^T)^-1``. Operators
on different axes commute and ``(A (x) B)^+ = A^+ (x) B^+``, so a k-space crop in-plane
combined with a slice profile through-plane is projected exactly as well.

For an output made by a model that did not see the acquisition model exactly (or by
interpolation), the projection moves it towards the truth whenever the input was made by that
model: the consistent images form an affine set that contains the truth, and projecting onto it
never increases the distance to any of its points (nor does clipping at 0, a projection onto a
convex set that holds every magnitude image). For magnitudes with k-space crops the constraint
set is not convex and this holds in practice rather than by proof
(``benchmarks/consistency.py``). The ``spline`` correction for slice profiles
(:func:`slice_profile_consistency`) is an oblique, not an orthogonal, projection.

Magnitude inputs. NIfTI holds real magnitude images: the measured ``y`` is then
``|A x_true|`` and the phase of ``A x_true`` is lost. When both ``sr`` and ``lr`` are real, they
are treated as magnitudes: for k-space crops the data become ``y * exp(i angle(A x))`` (the
input magnitudes with the current estimate's phase; the nearest point of ``{z: |z| = y}``),
the projection is computed in complex arithmetic and **the real part** of the result is
returned, clipped at 0. The real part of the complex projection is the consistent image's
best real approximation (the imaginary part is what a real image cannot carry); taking the
magnitude instead would also fold ringing below zero into positive signal. Neither discarding
the imaginary part nor clipping keeps the consistency exact: ``|A x|`` then matches ``y`` only
approximately (on brats18 T2 at x2 the relative mismatch drops from about 2 % to 0.5 %), so
projecting twice is not exactly projecting once for magnitudes. Slice profiles on real data are
real and linear: there the data are ``y`` themselves and the result is exact up to float error
before clipping; clipping at 0 only changes voxels that the correction made negative (near
edges of the object along the thick axis; about 1 % mismatch remains on brats18 T2).

Complex inputs (``sr`` or ``lr`` complex) are projected linearly and exactly; nothing is
clipped and the result is complex.

Memory: when an axis is left alone (the slice axis of in-plane k-space crops), the whole
projection runs on blocks of about ``2**20`` voxels along it, so its temporary memory is a few
tens of MB whatever the volume size (480x480x155 float32 in place: about 80 MB, 2.5 s on one
thread). When every axis is projected, each operator is applied along its axis in blocks of the
others; the largest temporaries are then the images on partly reduced grids (about ``N / f``
complex samples for the largest per-axis factor ``f``, i.e. ``2 / f`` copies of the float32
output). With ``out=sr`` the projection is done in place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from mrisr.degradation.image import slice_profile_weights, spline_resize
from mrisr.degradation.kspace import kspace_resize
from mrisr.errors import InputError

ArrayLike = Union[np.ndarray, torch.Tensor]

#: Names accepted by :func:`project` (and ``mrisr upscale --consistency``).
CONSISTENCY_MODELS = {
    "none": "no projection",
    "kspace": "grid-aligned central k-space crop along every upscaled axis",
    "slice_box": "box slice profile along the thick axis, k-space crop along other upscaled axes",
    "slice_gaussian": "Gaussian slice profile (FWHM = slice spacing) along the thick axis, "
                      "k-space crop along other upscaled axes",
    "auto": "slice_box when there is a thick axis (factor >= 2 and >= 1.5x every other "
            "upscaled axis's factor), kspace otherwise",
}

#: A thick axis (for ``auto``) has an upscaling factor of at least this ...
THICK_MIN_FACTOR = 2.0
#: ... and at least this many times the factor of every other upscaled axis.
THICK_RATIO = 1.5

_BLOCK_ELEMENTS = 2 ** 20  # elements per block (an FFT makes several complex temporaries)


@dataclass(frozen=True)
class _AxisOp:
    """A linear acquisition operator along one axis: ``n`` samples -> ``m`` samples."""

    kind: str            # "kspace" or "slice"
    axis: int
    n: int
    m: int
    weights: Optional[np.ndarray] = None   # slice: W (m, n)
    pinv: Optional[np.ndarray] = None      # slice: a right inverse of W (n, m), W^+ or oblique

    @property
    def complex(self) -> bool:
        return self.kind == "kspace"

    def forward(self, v: np.ndarray) -> np.ndarray:
        """``(..., n) -> (..., m)`` along the last axis."""
        if self.kind == "kspace":
            return kspace_resize(v, (self.m,))
        return v @ self.weights.T.astype(v.real.dtype)

    def adjoint_inverse(self, v: np.ndarray) -> np.ndarray:
        """The pseudo-inverse (or the chosen right inverse), ``(..., m) -> (..., n)`` along
        the last axis."""
        if self.kind == "kspace":
            # The grid-aligned zero padding is exactly the crop's pseudo-inverse (its adjoint
            # divided by M/N): it puts the kept block back where the crop took it from.
            return kspace_resize(v, (self.n,))
        return v @ self.pinv.T.astype(v.real.dtype)


#: How a slice-profile correction is spread over the thin slices (see
#: :func:`slice_profile_consistency`).
CORRECTIONS = ("min_norm", "spline")


def _slice_op(axis: int, n: int, m: int, profile: str, thickness: float,
              correction: str = "min_norm") -> _AxisOp:
    if correction not in CORRECTIONS:
        raise InputError(f"unknown correction '{correction}' (known: {', '.join(CORRECTIONS)})")
    weights = slice_profile_weights(n, n / m, profile, thickness)
    if weights.shape != (m, n):  # pragma: no cover - n / m always rounds back to m
        raise InputError(f"slice profile gives {weights.shape[0]} slices, expected {m}")
    if correction == "min_norm":
        # W^T (W W^T)^-1 for a full-row-rank W; pinv also copes with near-degenerate profiles.
        inverse = np.linalg.pinv(weights, rcond=1e-10)
    else:
        # C (W C)^-1 with C the cubic B-spline interpolation (m -> n samples, FOV-preserving):
        # the residual interpolated smoothly, rescaled so that W applied to it gives it back.
        spline = spline_resize(np.eye(m), (n,), order=3).T  # (n, m)
        inverse = spline @ np.linalg.inv(weights @ spline)
    return _AxisOp("slice", axis, n, m, weights, inverse)


def _blocks(shape: Sequence[int], axis: int, extra: int = 1):
    """Index tuples cutting ``shape`` into blocks along its largest axis other than ``axis``
    (whole array when it has one axis), each of about ``_BLOCK_ELEMENTS / extra`` elements."""
    others = [a for a in range(len(shape)) if a != axis]
    if not others:
        yield (slice(None),)
        return
    b = max(others, key=lambda a: shape[a])
    per_unit = max(1, int(np.prod(shape)) // max(1, shape[b]))
    step = max(1, _BLOCK_ELEMENTS // (per_unit * extra))
    for start in range(0, shape[b], step):
        index = [slice(None)] * len(shape)
        index[b] = slice(start, min(start + step, shape[b]))
        yield tuple(index)


def _apply(x: np.ndarray, op: _AxisOp, fn: Callable[[np.ndarray], np.ndarray], m: int,
           dtype) -> np.ndarray:
    """Apply the 1D map ``fn`` along ``op.axis`` of ``x``, block by block."""
    shape = list(x.shape)
    shape[op.axis] = m
    out = np.empty(shape, dtype)
    for index in _blocks(x.shape, op.axis):
        res = fn(np.moveaxis(x[index], op.axis, -1))
        out[index] = np.moveaxis(res, -1, op.axis)
    return out


def _factors(sr_shape: Sequence[int], lr_shape: Sequence[int]) -> tuple[float, ...]:
    if len(sr_shape) != len(lr_shape):
        raise InputError(f"output {tuple(sr_shape)} and input {tuple(lr_shape)} have different "
                         "numbers of axes")
    factors = tuple(n / m for n, m in zip(sr_shape, lr_shape))
    if any(f < 1 for f in factors):
        raise InputError(f"data consistency needs an output at least as fine as the input on "
                         f"every axis; got output {tuple(sr_shape)} for input {tuple(lr_shape)}")
    return factors


def _as_numpy(x: ArrayLike) -> tuple[np.ndarray, bool]:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy(), True
    # Any ndarray (a np.memmap too) is used as it is, so that ``out=sr`` works in place.
    return (x if isinstance(x, np.ndarray) else np.asarray(x)), False


def _free_axis_blocks(x_shape: Sequence[int], y_shape: Sequence[int], ops: list[_AxisOp]):
    """Index tuples (valid in ``x`` and ``y`` alike) along the longest axis that no operator
    touches (a batch axis, e.g. the slice axis of in-plane k-space crops), so the whole
    projection runs on small blocks; one whole-array block when every axis is projected."""
    used = {o.axis for o in ops}
    free = [a for a in range(len(x_shape)) if a not in used and x_shape[a] == y_shape[a]]
    if not free:
        yield (slice(None),) * len(x_shape)
        return
    b = max(free, key=lambda a: x_shape[a])
    per_unit = max(1, int(np.prod(x_shape)) // max(1, x_shape[b]))
    step = max(1, _BLOCK_ELEMENTS // per_unit)
    for start in range(0, x_shape[b], step):
        index = [slice(None)] * len(x_shape)
        index[b] = slice(start, min(start + step, x_shape[b]))
        yield tuple(index)


def _work_dtype(x: np.ndarray, y: np.ndarray, ops: list[_AxisOp]):
    double = np.float64 in (x.dtype, y.dtype) or np.complex128 in (x.dtype, y.dtype)
    if any(o.complex for o in ops) or np.iscomplexobj(x) or np.iscomplexobj(y):
        return np.complex128 if double else np.complex64
    return np.float64 if double else np.float32


def _forward(x: np.ndarray, ops: list[_AxisOp], dtype) -> np.ndarray:
    a = x
    for op in ops:
        a = _apply(a, op, op.forward, op.m, dtype)
    return a


def _project_block(out: np.ndarray, y: np.ndarray, ops: list[_AxisOp], magnitude: bool,
                   dtype) -> tuple[float, float]:
    """Project the block ``out`` (a view, updated in place) onto consistency with ``y``.
    Returns the squared norms of the residual before and of the data."""
    a = _forward(out, ops, dtype)
    if a.shape != y.shape:
        raise InputError(f"input {y.shape} is not the model's degradation {a.shape} of the "
                         "output")
    if magnitude and np.iscomplexobj(a):
        # Measured magnitudes with the estimate's phase (phase 0 where the estimate is 0).
        size = np.abs(a)
        phase = np.divide(a, size, out=np.ones_like(a), where=size > 0)
        del size
        data = phase
        data *= y
    else:
        data = y
    residual = data - a
    del a
    sums = (float(np.vdot(residual, residual).real), float(np.vdot(data, data).real))
    del data
    for op in reversed(ops[1:]):
        residual = _apply(residual, op, op.adjoint_inverse, op.n, dtype)
    last = ops[0]
    for index in _blocks(residual.shape, last.axis, extra=max(1, last.n // last.m)):
        corr = np.moveaxis(last.adjoint_inverse(np.moveaxis(residual[index], last.axis, -1)),
                           -1, last.axis)
        target = out[index]  # a view: updated in place
        target += corr.real if magnitude else corr
        if magnitude:
            np.maximum(target, 0, out=target)
    return sums


def _run(sr: ArrayLike, lr: ArrayLike, ops: list[_AxisOp], out: Optional[np.ndarray],
         report: Optional[dict]) -> ArrayLike:
    """``sr + A^+ (data - A sr)`` for the separable operator ``A`` made of ``ops`` (``lr``
    itself when ``ops`` is empty: then the acquisition is the identity)."""
    x, was_torch = _as_numpy(sr)
    y, _ = _as_numpy(lr)
    magnitude = not (np.iscomplexobj(x) or np.iscomplexobj(y))
    if out is None:
        out = x.astype(np.float64 if magnitude and x.dtype == np.float64 else np.float32
                       if magnitude else np.result_type(x.dtype, y.dtype, np.complex64),
                       copy=True)
    elif out is not x:
        if out.shape != x.shape:
            raise InputError(f"out has shape {out.shape}, expected {x.shape}")
        out[...] = x
    if not ops:
        if y.shape != x.shape:
            raise InputError(f"input {y.shape} and output {x.shape} differ but nothing is "
                             "projected")
        before = _mismatch(out, y, ops) if report is not None else 0.0
        out[...] = np.maximum(y, 0) if magnitude else y
    else:
        # Largest factor first: the first step shrinks the data most, and its pseudo-inverse
        # (the only step on the full output grid) is applied last, in blocks, into ``out``.
        ops = sorted(ops, key=lambda o: -o.n / o.m)
        dtype = _work_dtype(out, y, ops)
        res_sq = data_sq = 0.0
        for index in _free_axis_blocks(out.shape, y.shape, ops):
            r, d = _project_block(out[index], y[index], ops, magnitude, dtype)
            res_sq, data_sq = res_sq + r, data_sq + d
        before = float(np.sqrt(res_sq / data_sq)) if data_sq > 0 else 0.0
    if report is not None:
        report["mismatch_before"] = before
        report["mismatch_after"] = _mismatch(out, y, ops)
    return torch.from_numpy(out) if was_torch else out


def _mismatch(x: np.ndarray, y: np.ndarray, ops: list[_AxisOp]) -> float:
    magnitude = not (np.iscomplexobj(x) or np.iscomplexobj(y))
    ops = sorted(ops, key=lambda o: -o.n / o.m)
    dtype = _work_dtype(x, y, ops)
    diff_sq = ref_sq = 0.0
    for index in _free_axis_blocks(x.shape, y.shape, ops):
        a = _forward(x[index], ops, dtype) if ops else x[index]
        if magnitude:
            a = np.abs(a)
        diff = y[index] - a
        diff_sq += float(np.vdot(diff, diff).real)
        ref_sq += float(np.vdot(y[index], y[index]).real)
    return float(np.sqrt(diff_sq / ref_sq)) if ref_sq > 0 else float(np.sqrt(diff_sq))


def _kspace_ops(sr_shape, lr_shape, axes: Optional[Sequence[int]]) -> list[_AxisOp]:
    ndim = len(sr_shape)
    factors = _factors(sr_shape, lr_shape)
    axes = [a for a in range(ndim) if factors[a] > 1] if axes is None else \
        sorted({int(a) % ndim for a in axes})
    for a in range(ndim):
        if a not in axes and sr_shape[a] != lr_shape[a]:
            raise InputError(f"axis {a} differs in size ({sr_shape[a]} vs {lr_shape[a]}) but "
                             "is not one of the projected axes")
    return [_AxisOp("kspace", a, sr_shape[a], lr_shape[a]) for a in axes if factors[a] > 1]


def kspace_consistency(sr: ArrayLike, lr: ArrayLike, axes: Optional[Sequence[int]] = None, *,
                       out: Optional[np.ndarray] = None,
                       report: Optional[dict] = None) -> ArrayLike:
    """Replace the central k-space block of ``sr`` that the grid-aligned k-space crop keeps by
    the spectrum of ``lr``.

    ``sr``: the super-resolved image, any shape ``(N_0, ..., N_d)``; ``lr``: the measured image,
    ``M_a = N_a`` on axes not in ``axes``, ``M_a <= N_a`` on ``axes`` (default: every axis
    where the two differ). Arbitrary, non-integer factors ``N/M`` and odd or even sizes.
    Numpy arrays or torch tensors; intensities in the input's units.

    Complex ``sr`` or ``lr``: returns the complex ``x`` with
    ``kspace_resize(x, lr.shape) == lr`` (float error, axes in ``axes``). Real ``sr`` and ``lr``
    (magnitudes): returns the float32 (float64 for float64 ``sr``) real part of the projection
    onto ``|kspace_resize(x)| = lr`` clipped at 0, which is consistent only approximately (see
    the module docstring). ``out``: write the result there (may be ``sr`` itself, in place).
    ``report``: a dict that receives ``mismatch_before`` and ``mismatch_after``, the relative
    RMS difference between ``lr`` and the degraded image before and after.
    """
    x, _ = _as_numpy(sr)
    y, _ = _as_numpy(lr)
    return _run(sr, lr, _kspace_ops(x.shape, y.shape, axes), out, report)


def slice_profile_consistency(sr: ArrayLike, lr: ArrayLike, axis: int, profile: str = "box",
                              thickness: float = 1.0, *, correction: str = "min_norm",
                              out: Optional[np.ndarray] = None,
                              report: Optional[dict] = None) -> ArrayLike:
    """The minimum-norm correction along ``axis`` that makes ``thick_slice(result, N / M,
    axis, profile, thickness) == lr``: ``x + W^T (W W^T)^-1 (lr - W x)``.

    ``correction="spline"`` spreads the residual differently: ``x + C (W C)^-1 (lr - W x)``
    with ``C`` the cubic B-spline interpolation from the ``M`` to the ``N`` slice positions.
    Equally consistent, but a smooth correction instead of one constant per thick slice (box);
    not an orthogonal projection, so it is not guaranteed to move towards the truth.

    ``sr``: ``(..., N, ...)`` with ``N`` thin slices along ``axis``; ``lr``: the same shape
    except ``M <= N`` thick slices along ``axis``. ``profile`` (``box``/``gaussian``) and
    ``thickness`` (slice width in slice spacings) as in
    :func:`~mrisr.degradation.image.slice_profile_weights`. Real inputs are treated as
    magnitudes: the result is float32 (float64 for float64 ``sr``) clipped at 0, exact up to
    float error where nothing was clipped. ``out`` and ``report`` as in
    :func:`kspace_consistency`.
    """
    x, _ = _as_numpy(sr)
    y, _ = _as_numpy(lr)
    _factors(x.shape, y.shape)
    axis = int(axis) % x.ndim
    for a in range(x.ndim):
        if a != axis and x.shape[a] != y.shape[a]:
            raise InputError(f"axis {a} differs in size ({x.shape[a]} vs {y.shape[a]}) but only "
                             f"axis {axis} is projected")
    return _run(sr, lr, [_slice_op(axis, x.shape[axis], y.shape[axis], profile, thickness,
                                   correction)], out, report)


def thick_axis(factors: Sequence[float]) -> Optional[int]:
    """The axis that ``auto`` treats as thick-slice: a factor >= ``THICK_MIN_FACTOR`` (2) and
    >= ``THICK_RATIO`` (1.5) times the factor of every other upscaled axis; ``None`` if none."""
    for a, f in enumerate(factors):
        others = [g for b, g in enumerate(factors) if b != a and g > 1 + 1e-9]
        if f >= THICK_MIN_FACTOR and all(f >= THICK_RATIO * g for g in others):
            return a
    return None


def resolve(model: str, sr_shape: Sequence[int], lr_shape: Sequence[int]) -> dict:
    """What :func:`project` does for ``model`` on these shapes: ``{"model": name,
    "kspace_axes": [...], "slice_axis": int or None, "slice_profile": str or None}``.

    ``auto``: factors ``f_a = N_a / M_a``; if an axis is thick (:func:`thick_axis`), a box
    slice profile along it and the k-space crop along the other axes with ``f > 1``; otherwise
    the k-space crop along every axis with ``f > 1``.
    ``slice_box``/``slice_gaussian``: the slice axis is the one with the largest factor (it
    must be unique), the other upscaled axes get the k-space crop. With no upscaled axis
    (every model but ``none``) the acquisition is the identity: the result is ``lr`` itself.
    """
    if model not in CONSISTENCY_MODELS:
        raise InputError(f"unknown consistency model '{model}' (known: "
                         f"{', '.join(CONSISTENCY_MODELS)})")
    factors = _factors(sr_shape, lr_shape)
    upscaled = [a for a, f in enumerate(factors) if f > 1]
    plan = {"model": model, "kspace_axes": [], "slice_axis": None, "slice_profile": None}
    if model == "none":
        return plan
    if model == "auto":
        axis = thick_axis(factors)
        model = "kspace" if axis is None else "slice_box"
        plan["model"] = model
    if model == "kspace" or not upscaled:
        plan["kspace_axes"] = upscaled
        return plan
    top = max(factors)
    if sum(1 for f in factors if f == top) > 1:
        raise InputError(f"{model}: factors {tuple(round(f, 4) for f in factors)} have no "
                         "single thick axis; use kspace or none")
    axis = factors.index(top)
    plan.update(slice_axis=axis, slice_profile=model.split("_", 1)[1],
                kspace_axes=[a for a in upscaled if a != axis])
    return plan


def project(sr: ArrayLike, lr: ArrayLike, model: str = "auto", *, thickness: float = 1.0,
            correction: str = "min_norm", out: Optional[np.ndarray] = None,
            report: Optional[dict] = None) -> ArrayLike:
    """Make ``sr`` consistent with the measured ``lr`` under the acquisition ``model``.

    ``sr``: super-resolved image ``(N_0, ..., N_d)`` (e.g. a 3D volume, voxel axes first);
    ``lr``: the input it was made from, ``(M_0, ..., M_d)`` with ``M_a <= N_a`` on the same
    field of view (:mod:`mrisr.grid`). ``model``: one of :data:`CONSISTENCY_MODELS` (see
    :func:`resolve` for the ``auto`` rule); ``thickness``: slice width in slice spacings for
    the slice profiles; ``correction``: ``min_norm`` or ``spline`` for slice profiles
    (:func:`slice_profile_consistency`). Real inputs are magnitudes and the result is clipped
    at 0 (see the module docstring: exact for slice profiles up to the clipping, approximate
    for k-space crops). ``out``: where to write (``sr`` itself for in place); ``report``: receives the
    resolved plan and the mismatch before and after.
    """
    x, _ = _as_numpy(sr)
    y, _ = _as_numpy(lr)
    plan, ops = _plan_ops(model, x.shape, y.shape, thickness, correction)
    if report is not None:
        report.update(plan)
    if plan["model"] == "none":
        return _run(sr, sr, [], out, None)
    return _run(sr, lr, ops, out, report)


def _plan_ops(model: str, sr_shape, lr_shape, thickness: float,
              correction: str = "min_norm") -> tuple[dict, list[_AxisOp]]:
    plan = resolve(model, sr_shape, lr_shape)
    ops = [_AxisOp("kspace", a, sr_shape[a], lr_shape[a]) for a in plan["kspace_axes"]]
    if plan["slice_axis"] is not None:
        a = plan["slice_axis"]
        ops.append(_slice_op(a, sr_shape[a], lr_shape[a], plan["slice_profile"], thickness,
                             correction))
        plan.update(thickness=float(thickness), correction=correction)
    return plan, ops


def consistency_mismatch(sr: ArrayLike, lr: ArrayLike, model: str = "auto",
                         thickness: float = 1.0) -> float:
    """How far ``sr`` is from reproducing ``lr`` under ``model`` (as in :func:`project`):
    the relative RMS difference ``||lr - D(sr)|| / ||lr||``, ``D(sr) = |A sr|`` for real
    (magnitude) inputs and ``A sr`` for complex ones; 0 for ``none``."""
    x, _ = _as_numpy(sr)
    y, _ = _as_numpy(lr)
    plan, ops = _plan_ops(model, x.shape, y.shape, thickness)
    return 0.0 if plan["model"] == "none" else _mismatch(x, y, ops)


__all__ = ["CONSISTENCY_MODELS", "CORRECTIONS", "consistency_mismatch", "kspace_consistency",
           "slice_profile_consistency", "project", "resolve", "thick_axis"]
