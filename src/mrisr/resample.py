"""World-space resampling of one image onto another image's grid through their affines."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from mrisr.errors import InputError
from mrisr.grid import voxel_to_world, world_to_voxel


def grid_world_points(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """World coordinates (mm) of every voxel centre of a 3D grid, shape ``(*shape, 3)``."""
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"),
                   axis=-1)
    return voxel_to_world(idx, affine)


def overlap_fraction(src_affine: np.ndarray, src_shape: Sequence[int],
                     dst_affine: np.ndarray, dst_shape: Sequence[int]) -> float:
    """Fraction of the destination grid's voxel centres that fall inside the source's FOV."""
    idx = world_to_voxel(grid_world_points(dst_affine, dst_shape[:3]), src_affine)
    inside = np.all((idx >= -0.5) & (idx <= np.asarray(src_shape[:3]) - 0.5), axis=-1)
    return float(inside.mean())


def resample_to_grid(data: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray,
                     dst_shape: Sequence[int], order: int = 3, name: str = "reference",
                     min_overlap: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Resample a 3D array given on ``src_affine`` onto the grid ``(dst_affine, dst_shape)``.

    Returns ``(resampled, inside)``: float32 data (0 outside the source FOV) and a boolean map
    of destination voxels that the source covers. Raises :class:`InputError` when the two
    grids do not overlap at all.
    """
    idx = world_to_voxel(grid_world_points(dst_affine, dst_shape[:3]), src_affine)
    src_shape = np.asarray(data.shape[:3])
    inside = np.all((idx >= -0.5) & (idx <= src_shape - 0.5), axis=-1)
    if inside.mean() < min_overlap:
        raise InputError(f"{name}: no spatial overlap with the target's field of view")
    coords = np.moveaxis(idx, -1, 0)
    out = ndimage.map_coordinates(np.asarray(data, dtype=np.float32), coords, order=order,
                                  mode="nearest", prefilter=order > 1)
    out[~inside] = 0.0
    return out.astype(np.float32), inside
