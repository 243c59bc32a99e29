"""Axes that the output samples more coarsely than the input: reduced before upscaling.

A request such as a 0.47 x 0.47 x 5 mm T2 asked for 0.94 x 0.94 x 1 mm shrinks two axes and
enlarges the third. The 2D models and the data-consistency projection assume an output at least
as fine as the input on every axis, and running a model on 0.47 mm slices whose detail the
output then discards costs four times the work for nothing. So those axes are reduced first,
as an acquisition at the output's resolution would have measured them: the central k-space
samples along each such axis are kept (anti-aliased by construction, the degradation the
in-plane models and the k-space projection assume), on the field-of-view-preserving grid.
What remains is an ordinary upscaling job with factors >= 1 on every axis.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from mrisr.degradation.kspace import kspace_resize
from mrisr.grid import resample_affine
from mrisr.io.nifti import Volume

__all__ = ["coarser_axes", "reduce_to_output"]


def coarser_axes(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[int]:
    """The spatial axes along which ``out_shape`` has fewer voxels than ``in_shape``."""
    return [a for a in range(3) if int(out_shape[a]) < int(in_shape[a])]


def reduce_to_output(volume: Volume, out_shape: Sequence[int]
                     ) -> tuple[Volume, Optional[dict]]:
    """``volume`` with every axis that ``out_shape`` samples more coarsely reduced to the
    output's size along it (k-space crop along those axes, magnitude, float32), and the
    sidecar entry that says so; ``(volume, None)`` when no axis is coarser.

    volume: a 3D :class:`Volume` ``(X, Y, Z)``; out_shape: the output grid ``(X', Y', Z')``
    over the same field of view. The reduced volume covers that field of view too.
    """
    in_shape = tuple(int(n) for n in volume.data.shape[:3])
    axes = coarser_axes(in_shape, out_shape)
    if not axes:
        return volume, None
    new_shape = tuple(int(out_shape[a]) if a in axes else in_shape[a] for a in range(3))
    keep = [a for a in range(3) if a not in axes]
    # kspace_resize acts on trailing axes: the reduced ones are moved last.
    moved = np.moveaxis(np.asarray(volume.data, dtype=np.float32), axes, range(3 - len(axes), 3))
    reduced = np.abs(kspace_resize(moved, [new_shape[a] for a in axes]))
    data = np.ascontiguousarray(np.moveaxis(reduced, range(3 - len(axes), 3), axes),
                                dtype=np.float32)
    assert data.shape == new_shape and all(data.shape[a] == in_shape[a] for a in keep)
    affine = resample_affine(volume.affine, in_shape, new_shape)
    entry = {"axes": axes, "shape": list(new_shape),
             "method": "k-space crop along the axes that the output samples more coarsely, "
                       "before the model (anti-aliased; the output's resolution there)"}
    return Volume(data, affine, volume.header, volume.path), entry
