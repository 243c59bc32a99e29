"""The one place that defines sampling grids, normalised coordinates and affine updates.

Convention (shared by every model, degradation and inference path in mrisr):

* A volume with ``N`` voxels along an axis covers the normalised interval ``[-1, 1]`` and voxel
  ``i`` sits at its *centre*, ``c_i = -1 + (2 i + 1) / N``. This is the convention of
  ``torch.nn.functional.grid_sample(align_corners=False)`` and of LIIF/ArSSR ``make_coord``.
* Resampling ``N`` voxels to ``N'`` voxels keeps the field of view (FOV): the new voxel size is
  ``f = N / N'`` times the old one, and the voxel-to-world affine becomes
  ``A' = A @ [[diag(f), (f - 1) / 2], [0, 1]]``. Downsampling and upsampling back therefore
  returns exactly the original grid.
* A *scale* ``s`` means "upsample by s": ``N' = round(N * s)``; a degradation by ``s`` gives
  ``N' = round(N / s)``. Scales are per axis; a single number applies to all axes.

Arrays are channel-first and spatial axes are in array order (``(H, W)`` or ``(X, Y, Z)`` as
stored), and coordinate vectors follow that same order. ``grid_sample`` wants the reverse order
(x = last axis), which :func:`to_grid_sample_order` provides.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

from mrisr.errors import InputError

ScaleLike = Union[float, int, Sequence[float]]


def as_scales(scale: ScaleLike, ndim: int, name: str = "scale") -> tuple[float, ...]:
    """Expand a scalar or per-axis scale to a tuple of ``ndim`` positive floats.

    Raises :class:`InputError` for non-finite, non-positive or wrongly sized scales.
    """
    if isinstance(scale, (int, float, np.floating, np.integer)):
        values = (float(scale),) * ndim
    else:
        values = tuple(float(s) for s in scale)
        if len(values) == 1:
            values = values * ndim
    if len(values) != ndim:
        raise InputError(f"{name} has {len(values)} values but the data has {ndim} spatial axes")
    for v in values:
        if not np.isfinite(v) or v <= 0:
            raise InputError(f"{name} must be a positive finite number, got {v}")
    return values


def upscaled_shape(shape: Sequence[int], scale: ScaleLike) -> tuple[int, ...]:
    """Shape after upsampling by ``scale`` per axis: ``round(N * s)`` (at least 1)."""
    scales = as_scales(scale, len(shape))
    return tuple(max(1, int(round(n * s))) for n, s in zip(shape, scales))


def downscaled_shape(shape: Sequence[int], scale: ScaleLike) -> tuple[int, ...]:
    """Shape after degrading by ``scale`` per axis: ``round(N / s)`` (at least 1)."""
    scales = as_scales(scale, len(shape))
    return tuple(max(1, int(round(n / s))) for n, s in zip(shape, scales))


def effective_scale(shape_from: Sequence[int], shape_to: Sequence[int]) -> tuple[float, ...]:
    """The exact per-axis upsampling factor ``N_to / N_from`` between two grids of one FOV."""
    return tuple(float(b) / float(a) for a, b in zip(shape_from, shape_to))


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes (mm) of a 4x4 voxel-to-world affine: the norms of its first three columns."""
    affine = np.asarray(affine, dtype=np.float64)
    return np.sqrt((affine[:3, :3] ** 2).sum(axis=0))


def shape_for_voxel_size(shape: Sequence[int], affine: np.ndarray,
                         voxel_size: ScaleLike) -> tuple[int, ...]:
    """Number of voxels per axis that best realises ``voxel_size`` (mm) over the same FOV.

    The achieved voxel size is ``FOV / N'`` exactly; it differs from the request by rounding.
    """
    sizes = as_scales(voxel_size, len(shape), name="voxel size")
    zooms = voxel_sizes(affine)[: len(shape)]
    return tuple(max(1, int(round(n * z / v))) for n, z, v in zip(shape, zooms, sizes))


def resample_affine(affine: np.ndarray, old_shape: Sequence[int],
                    new_shape: Sequence[int]) -> np.ndarray:
    """Voxel-to-world affine of the FOV-preserving resampling of ``old_shape`` to ``new_shape``.

    Only the first ``len(old_shape)`` (at most 3) spatial axes are changed.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise InputError(f"affine must be 4x4, got {affine.shape}")
    ndim = len(old_shape)
    if len(new_shape) != ndim or ndim > 3:
        raise InputError(f"cannot resample shape {tuple(old_shape)} to {tuple(new_shape)}")
    step = np.eye(4)
    for axis, (n_old, n_new) in enumerate(zip(old_shape, new_shape)):
        f = float(n_old) / float(n_new)
        step[axis, axis] = f
        step[axis, 3] = (f - 1.0) / 2.0
    return affine @ step


def pixel_centres(n: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised pixel-centre coordinates ``-1 + (2 i + 1) / n`` for ``i = 0 .. n-1``."""
    return (torch.arange(n, dtype=torch.float64, device=device) * 2 + 1) / n - 1


def make_coord(shape: Sequence[int], dtype=torch.float32, device=None,
               flatten: bool = False) -> torch.Tensor:
    """Pixel-centre coordinates of a grid, in array axis order.

    Returns a tensor of shape ``(*shape, ndim)`` (or ``(prod(shape), ndim)`` with ``flatten``)
    whose last axis holds the normalised coordinate of each axis in ``[-1, 1]``.
    """
    axes = [pixel_centres(int(n), device=device) for n in shape]
    coord = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).to(dtype)
    return coord.reshape(-1, len(shape)) if flatten else coord


def to_grid_sample_order(coord: torch.Tensor) -> torch.Tensor:
    """Reverse the last axis: array-order coordinates -> ``grid_sample``'s (x, y[, z]) order."""
    return coord.flip(-1)


def voxel_to_normalized(index: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Map (fractional) voxel indices ``(..., ndim)`` to normalised coordinates."""
    shape_arr = np.asarray(shape, dtype=np.float64)
    return (2.0 * np.asarray(index, dtype=np.float64) + 1.0) / shape_arr - 1.0


def normalized_to_voxel(coord: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`voxel_to_normalized`."""
    shape_arr = np.asarray(shape, dtype=np.float64)
    return ((np.asarray(coord, dtype=np.float64) + 1.0) * shape_arr - 1.0) / 2.0


def world_to_voxel(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm, ``(..., 3)``) to fractional voxel indices of ``affine``."""
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    pts = np.asarray(points, dtype=np.float64)
    return pts @ inv[:3, :3].T + inv[:3, 3]


def voxel_to_world(index: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Fractional voxel indices ``(..., 3)`` to world coordinates (mm)."""
    aff = np.asarray(affine, dtype=np.float64)
    idx = np.asarray(index, dtype=np.float64)
    return idx @ aff[:3, :3].T + aff[:3, 3]
