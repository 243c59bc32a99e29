"""Implicit-representation queries shared by every model: where an output sample lies on a
low-resolution feature grid, and how features are read there.

Positions are *continuous voxel indices* of the low-resolution grid along each axis: the centre
of LR voxel ``i`` is at ``i``; with the FOV-preserving convention of :mod:`mrisr.grid`, output
voxel ``J`` of ``N`` lies at ``(J + 0.5) * n / N - 0.5`` on an LR axis of ``n`` voxels
(:func:`grid_positions`). Two query layouts exist:

* separable grids (per-axis position vectors, ``(B, L_axis)``): a whole output grid or tile,
  used by models with convolutions at output resolution (Dual-ArbNet);
* point sets (``(B, P, dims)``): arbitrary query voxels, used by pointwise decoders
  (LIIF, ArSSR, CSR-dMRI).
"""
from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def grid_positions(n_in: int, n_out: int, start: int = 0, stop: int | None = None,
                   device=None, dtype=torch.float64) -> torch.Tensor:
    """Positions on an ``n_in`` grid of output voxels ``start .. stop-1`` of an ``n_out`` grid."""
    stop = n_out if stop is None else stop
    j = torch.arange(start, stop, device=device, dtype=dtype)
    return (j + 0.5) * (n_in / n_out) - 0.5


def nearest_index(positions: torch.Tensor, n: int) -> torch.Tensor:
    """Index of the nearest voxel centre (ties round up), clamped to ``[0, n - 1]``."""
    return torch.floor(positions + 0.5).clamp_(0, n - 1).long()


def relative_offset(positions: torch.Tensor, n: int) -> torch.Tensor:
    """Offset to the nearest voxel centre in units of half a voxel: ``2 (u - round(u))``,
    in ``[-1, 1)`` inside the grid (the reference code's relative coordinate)."""
    return 2.0 * (positions - nearest_index(positions, n).to(positions.dtype))


def _gather_axis(x: torch.Tensor, index: torch.Tensor, axis: int) -> torch.Tensor:
    """``x`` (B, C, *sp) indexed along spatial ``axis`` by per-sample ``index`` (B, L)."""
    dim = 2 + axis
    if index.shape[0] == 1 and x.shape[0] > 1:
        index = index.expand(x.shape[0], -1)
    shape = [1] * x.ndim
    shape[0], shape[dim] = index.shape[0], index.shape[1]
    expand = list(x.shape)
    expand[dim] = index.shape[1]
    return torch.gather(x, dim, index.reshape(shape).expand(expand))


def sample_axis(x: torch.Tensor, positions: torch.Tensor, axis: int,
                mode: str = "nearest") -> torch.Tensor:
    """Resample spatial ``axis`` of ``x`` at ``positions`` (B, L) or (1, L).

    ``nearest`` copies the nearest voxel; ``linear`` interpolates between the two neighbours
    (edge values beyond the first/last centre); ``cubic`` is Keys' cubic convolution
    (a = -0.5, the kernel of bicubic image resizing) over four neighbours, edge voxels
    replicated. Exact and deterministic: the same position always gives the same result,
    whichever tile it is computed in.
    """
    n = x.shape[2 + axis]
    if mode == "nearest":
        return _gather_axis(x, nearest_index(positions, n), axis)
    if mode == "cubic":
        return _sample_axis_cubic(x, positions, axis)
    if mode != "linear":
        raise ValueError(f"unknown sampling mode {mode!r}")
    u = positions.clamp(0, n - 1)
    i0 = torch.floor(u).clamp_(0, max(n - 2, 0)).long()
    w = (u - i0.to(u.dtype)).to(x.dtype)
    i1 = (i0 + 1).clamp_(max=n - 1)
    shape = [1] * x.ndim
    shape[0], shape[2 + axis] = w.shape[0], w.shape[1]
    w = w.reshape(shape)
    return _gather_axis(x, i0, axis) * (1 - w) + _gather_axis(x, i1, axis) * w


def _keys_weights(t: torch.Tensor) -> list[torch.Tensor]:
    """Weights of the taps at offsets -1, 0, 1, 2 for a fractional position ``t`` in [0, 1)."""
    a = -0.5

    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(1 + t), near(t), near(1 - t), far(2 - t)]


def _sample_axis_cubic(x: torch.Tensor, positions: torch.Tensor, axis: int) -> torch.Tensor:
    n = x.shape[2 + axis]
    base = torch.floor(positions)
    t = (positions - base).to(x.dtype)
    base = base.long()
    shape = [1] * x.ndim
    shape[0], shape[2 + axis] = t.shape[0], t.shape[1]
    out = 0
    for offset, w in zip((-1, 0, 1, 2), _keys_weights(t)):
        index = (base + offset).clamp(0, n - 1)
        out = out + _gather_axis(x, index, axis) * w.reshape(shape)
    return out


def sample_grid(x: torch.Tensor, positions: Sequence[torch.Tensor],
                mode: str = "nearest") -> torch.Tensor:
    """Separable resampling of every spatial axis: ``(B, C, *sp) -> (B, C, *L)``."""
    for axis, pos in enumerate(positions):
        x = sample_axis(x, pos, axis, mode)
    return x


def sample_points(x: torch.Tensor, points: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Read features at arbitrary points.

    x: ``(B, C, *sp)`` with 2 or 3 spatial axes. points: ``(B, P, dims)`` continuous voxel
    indices in array axis order. Returns ``(B, P, C)``. ``bilinear`` is trilinear in 3D;
    positions beyond the outer voxel centres take border values.
    """
    dims = points.shape[-1]
    sizes = torch.tensor(x.shape[2:], dtype=points.dtype, device=points.device)
    norm = (2 * points + 1) / sizes - 1  # pixel-centre convention of grid_sample(False)
    grid = norm.flip(-1).reshape(points.shape[0], points.shape[1], *([1] * (dims - 1)), dims)
    out = F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode="border",
                        align_corners=False)
    return out.reshape(x.shape[0], x.shape[1], points.shape[1]).transpose(1, 2)


def bspline_coefficients(x: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline coefficients of ``x`` ``(B, C, *sp)`` (same shape): the coefficients whose
    spline passes through every voxel value, with the half-sample symmetric extension of
    ``scipy.ndimage`` (``mode="reflect"``). Computed per axis by the exact inverse of the
    spline's (1, 4, 1) / 6 interpolation matrix, so it is differentiable and runs on any
    device; meant for images of up to a few hundred voxels per axis."""
    for axis in range(x.ndim - 2):
        inverse = _prefilter_inverse(x.shape[2 + axis]).to(device=x.device, dtype=x.dtype)
        x = _apply_axis_matrix(x, inverse, axis)
    return x


def _apply_axis_matrix(x: torch.Tensor, matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """``matrix`` ``(m, n)`` applied along spatial ``axis`` (of length ``n``) of ``x``."""
    return torch.movedim(torch.movedim(x, 2 + axis, -1) @ matrix.T, -1, 2 + axis)


@functools.lru_cache(maxsize=64)
def _prefilter_inverse(n: int) -> torch.Tensor:
    """The inverse of the cubic B-spline's (1, 4, 1) / 6 interpolation matrix on ``n`` voxels
    with the half-sample symmetric extension; float64 on the CPU (MPS has no float64)."""
    m = torch.zeros(n, n, dtype=torch.float64)
    idx = torch.arange(n)
    m[idx, idx] = 4.0 / 6.0
    m[idx[:-1], idx[1:]] = 1.0 / 6.0
    m[idx[1:], idx[:-1]] = 1.0 / 6.0
    m[0, 0] += 1.0 / 6.0  # the voxel before the first mirrors the first
    m[n - 1, n - 1] += 1.0 / 6.0
    return torch.linalg.inv(m)


@functools.lru_cache(maxsize=64)
def bspline_resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The ``(n_out, n_in)`` float64 matrix of cubic B-spline resampling along one axis,
    prefilter included (the FOV-preserving grid of :func:`grid_positions`, half-sample
    symmetric extension): ``scipy.ndimage.zoom(order=3, mode="reflect", grid_mode=True)``."""
    positions = grid_positions(n_in, n_out)
    base = torch.floor(positions)
    sampling = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    for offset, weight in zip((-1, 0, 1, 2), _bspline_weights(positions - base)):
        index = torch.remainder(base.long() + offset, 2 * n_in)
        index = torch.where(index >= n_in, 2 * n_in - 1 - index, index)
        sampling.index_put_((rows, index), weight, accumulate=True)
    return sampling @ _prefilter_inverse(n_in)


def bspline_resize(x: torch.Tensor, out_shape: Sequence[int]) -> torch.Tensor:
    """Cubic B-spline resampling of every spatial axis of ``x`` ``(B, C, *sp)`` to
    ``out_shape`` over the same field of view, axis by axis (the spline is separable); equals
    :func:`sample_bspline` on the whole output grid at a fraction of its cost."""
    for axis, n_out in enumerate(out_shape):
        matrix = bspline_resize_matrix(int(x.shape[2 + axis]), int(n_out))
        x = _apply_axis_matrix(x, matrix.to(device=x.device, dtype=x.dtype), axis)
    return x


def _bspline_weights(t: torch.Tensor) -> list[torch.Tensor]:
    """Cubic B-spline weights of the taps at offsets -1, 0, 1, 2 for ``t`` in [0, 1)."""
    t2, t3 = t * t, t * t * t
    return [(1 - t) ** 3 / 6, (3 * t3 - 6 * t2 + 4) / 6, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6,
            t3 / 6]


def sample_bspline(coefficients: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline interpolation at arbitrary points from :func:`bspline_coefficients`.

    coefficients: ``(B, C, *sp)`` (2 or 3 spatial axes); points: ``(B, P, dims)`` or
    ``(1, P, dims)`` continuous voxel indices. Returns ``(B, P, C)``; on a full output grid it
    equals ``scipy.ndimage.zoom(order=3, mode="reflect", grid_mode=True)``.
    """
    b, c = coefficients.shape[:2]
    sizes = coefficients.shape[2:]
    points = points.expand(b, -1, -1)
    flat = coefficients.reshape(b, c, -1)
    base = torch.floor(points)
    frac = (points - base).to(coefficients.dtype)
    base = base.long()
    taps = []  # per axis: (flat-index contributions, weights) of the four taps
    stride = 1
    strides = []
    for n in reversed(sizes):
        strides.append(stride)
        stride *= n
    strides = strides[::-1]
    for axis, n in enumerate(sizes):
        weights = _bspline_weights(frac[..., axis])
        index = [torch.remainder(base[..., axis] + k, 2 * n) for k in (-1, 0, 1, 2)]
        index = [torch.where(i >= n, 2 * n - 1 - i, i) * strides[axis] for i in index]
        taps.append(list(zip(index, weights)))
    out = 0
    for combo in itertools.product(*taps):
        index = sum(i for i, _ in combo)
        weight = combo[0][1]
        for _, w in combo[1:]:
            weight = weight * w
        values = torch.gather(flat, 2, index[:, None, :].expand(b, c, -1))
        out = out + values * weight[:, None, :]
    return out.transpose(1, 2)


def unfold_neighbourhood(x: torch.Tensor) -> torch.Tensor:
    """Stack each voxel's 3x3 (2D) or 3x3x3 (3D) neighbourhood along channels (zero padded):
    ``(B, C, *sp) -> (B, C * 3**dims, *sp)``."""
    dims = x.ndim - 2
    if dims == 2:
        b, c, h, w = x.shape
        return F.unfold(x, 3, padding=1).reshape(b, c * 9, h, w)
    padded = F.pad(x, [1, 1] * dims)
    sp = x.shape[2:]
    parts = []
    for dz in range(3):
        for dy in range(3):
            for dx in range(3):
                parts.append(padded[:, :, dz:dz + sp[0], dy:dy + sp[1], dx:dx + sp[2]])
    return torch.cat(parts, dim=1)
