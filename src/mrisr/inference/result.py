"""What an upscaling returns, shared by the 2D (:mod:`mrisr.inference.upscale`) and 3D
(:mod:`mrisr.inference.volume3d`) paths."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from mrisr.grid import voxel_sizes


@dataclass
class UpscaleResult:
    """Output data (float32, voxel axes first), its affine and a description for the sidecar."""

    data: np.ndarray
    affine: np.ndarray
    info: dict = field(default_factory=dict)
    #: ``(model, description)`` after test-time adaptation (``adapt`` > 0), for reuse
    adapted_model: Optional[tuple] = None


def grid_info(desc: dict, in_shape: Sequence[int], in_affine: np.ndarray,
              out_shape: Sequence[int], out_affine: np.ndarray) -> dict:
    """Sidecar fields shared by the 2D and 3D paths: version, model and the two grids."""
    from mrisr import __version__

    return {"mrisr_version": __version__, **desc, "input_shape": list(in_shape),
            "output_shape": list(out_shape),
            "input_voxel_size": [float(z) for z in voxel_sizes(in_affine)],
            "output_voxel_size": [float(z) for z in voxel_sizes(out_affine)],
            "scale": [o / i for i, o in zip(in_shape, out_shape)],
            "grid_convention": "pixel-centre, field of view preserved: "
                               "A' = A @ [[diag(f), (f-1)/2], [0, 1]], f = N/N'"}
