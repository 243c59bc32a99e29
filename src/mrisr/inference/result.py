"""What an upscaling returns, shared by the 2D (:mod:`mrisr.inference.upscale`) and 3D
(:mod:`mrisr.inference.volume3d`) paths, and the files it writes beside an output. Importing
it needs no torch."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np


@dataclass
class UpscaleResult:
    """Output data (float32, voxel axes first), its affine and a description for the sidecar."""

    data: np.ndarray
    affine: np.ndarray
    info: dict = field(default_factory=dict)
    #: ``(model, description)`` after test-time adaptation (``adapt`` > 0), for reuse
    adapted_model: Optional[tuple] = None


#: The ending of the QC picture's name (:mod:`mrisr.inference.qc`): ``t2_sr_qc.png``.
QC_SUFFIX = "_qc.png"


def written_companions(target_path, n_volumes: int, qc: bool = False) -> tuple[str, ...]:
    """Endings of the files that ``mrisr upscale`` writes beside an output and names after
    it: the JSON sidecar, for a series (``n_volumes`` > 1) the ``.bval``/``.bvec`` beside the
    input (:func:`mrisr.io.dwi.b_table_files`), copied, and with ``qc`` the QC picture. Each
    is an output like the image: checked before any work and refused when it exists (without
    ``overwrite``)."""
    from mrisr.io.dwi import b_table_files

    tables = zip((".bval", ".bvec"), b_table_files(target_path)) if n_volumes > 1 else ()
    return (".json",) + tuple(ext for ext, found in tables if found is not None) + \
        ((QC_SUFFIX,) if qc else ())


def grid_info(desc: dict, in_shape: Sequence[int], in_affine: np.ndarray,
              out_shape: Sequence[int], out_affine: np.ndarray,
              reduced: Optional[dict] = None) -> dict:
    """Sidecar fields shared by the 2D and 3D paths: version, model and the two grids;
    ``reduced``: how the input was first reduced along axes the output samples more coarsely
    (:func:`mrisr.inference.coarsen.reduce_to_output`)."""
    from mrisr import __version__
    from mrisr.grid import voxel_sizes  # imports torch, which batches check inputs without

    return {"mrisr_version": __version__, **desc, "input_shape": list(in_shape),
            "output_shape": list(out_shape),
            "input_voxel_size": [float(z) for z in voxel_sizes(in_affine)],
            "output_voxel_size": [float(z) for z in voxel_sizes(out_affine)],
            "scale": [o / i for i, o in zip(in_shape, out_shape)],
            "grid_convention": "pixel-centre, field of view preserved: "
                               "A' = A @ [[diag(f), (f-1)/2], [0, 1]], f = N/N'",
            **({"input_reduced": reduced} if reduced else {})}
