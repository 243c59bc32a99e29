"""Keep a model's detail from changing a diffusion series' fitted anisotropy.

A model upscales each volume of a series on its own, so its detail (its output less the cubic
interpolation of the same volume) differs between gradient directions, and a tensor fit reads
part of that difference as anisotropy: on six held-out series the fold models' FA error at x2
was 0.1095 against cubic's 0.1035 while their PSNR was higher (docs/benchmarks/dmri.md, "The
tensor loss"). Per shell, the detail relative to the cubic signal, ``d_v = (out_v - cubic_v) /
cubic_v``, is split by :func:`~mrisr.data.tensor_design.anisotropic_projection` into the part a
log-linear tensor fit reads as anisotropy and the rest (its mean over the shell, which moves
``S_0`` and the mean diffusivity, and what no tensor explains). A weight ``w`` of the first part
is taken out: ``out_v - w cubic_v e_v``. ``w = 1`` leaves the fitted anisotropy to first order
as cubic interpolation's; ``w = 0`` is the model as it is.

The step works on whole shells of the output series, held in ``(N, X, Y, Z)`` arrays (memmaps
in the upscaling path), a slab of rows at a time.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from mrisr.data.dwi import shells
from mrisr.data.tensor_design import anisotropic_projection
from mrisr.degradation import spline_resize

__all__ = ["MIN_DIRECTIONS", "AUTO_WEIGHT", "MAX_RELATIVE", "cubic_base", "usable_shells",
           "remove_anisotropic_detail"]

#: Fewest directions of a shell the step works on: the design has 7 columns, and with fewer
#: volumes every difference between directions would count as anisotropy.
MIN_DIRECTIONS = 7
#: ``tensor_consistency: auto``'s weight for a learned model on a series with its b-tables.
#: Measured on six held-out series (fold models, x2, without the T1w): the PSNR gain over cubic
#: of the model as it is (+0.14 dB) and an FA error of 0.1049 against its 0.1095 (cubic's
#: 0.1035); at x3 / x4 +0.23 / +0.15 dB against +0.25 / +0.19, with FA errors 0.1495 / 0.1745
#: against 0.1692 / 0.2001 (docs/benchmarks/dmri.md, "The tensor loss").
AUTO_WEIGHT = 0.5
#: Bound of the relative detail ``|d_v|``: where the cubic signal is near 0 the ratio says
#: nothing about the tensor.
MAX_RELATIVE = 1.0
#: Bytes of float32 work arrays for one slab of a shell.
_SLAB_BYTES = 2 ** 27


def cubic_base(volume: np.ndarray, out_shape) -> np.ndarray:
    """The base the detail is measured from: the cubic B-spline interpolant of one input volume
    on the output grid, float32, not clipped at 0 (what the 3D models' correction is added to,
    :class:`~mrisr.inference.volume3d.SeriesUpscaler3D`)."""
    return spline_resize(np.asarray(volume, dtype=np.float32), tuple(out_shape), order=3)


def usable_shells(bvals: np.ndarray, bvecs: np.ndarray) -> tuple[list[np.ndarray], list[dict]]:
    """The shells of a series (:func:`~mrisr.data.dwi.shells`) the step can work on, and a
    description of every shell: ``{"bvalue", "volumes", "used"}`` (``bvalue`` the median,
    s/mm^2). Volumes with a zero b-vector are left out of their shell; a shell with fewer than
    :data:`MIN_DIRECTIONS` others is not used. ``bvecs``: ``(3, N)``."""
    length = np.linalg.norm(np.asarray(bvecs, dtype=np.float64), axis=0)
    used, described = [], []
    for shell in shells(bvals):
        shell = shell[length[shell] > 0]
        ok = shell.size >= MIN_DIRECTIONS
        if shell.size:
            described.append({"bvalue": float(np.median(np.asarray(bvals)[shell])),
                              "volumes": int(shell.size), "used": bool(ok)})
        if ok:
            used.append(shell)
    return used, described


def remove_anisotropic_detail(outputs: np.ndarray, bases: np.ndarray, bvals: np.ndarray,
                              bvecs: np.ndarray, weight: float,
                              progress: Optional[Callable[[int], None]] = None) -> dict:
    """Take weight ``weight`` of the anisotropic part of the detail out of ``outputs``.

    Args:
        outputs: ``(N, X, Y, Z)`` float32 upscaled series, changed in place (a memmap works).
        bases: ``(N, X, Y, Z)`` :func:`cubic_base` of the same input volumes.
        bvals: ``(N,)`` b-values (s/mm^2); bvecs: ``(3, N)`` gradient directions (any frame: the
            span of the design does not change under a rotation or reflection of all of them).
        weight: in ``[0, 1]``.
        progress: called with 1 after each shell.

    Returns:
        ``{"weight", "shells": [...]}`` (:func:`usable_shells`) with, per used shell,
        ``"detail_removed"``: the RMS of what was taken out relative to the RMS of the detail,
        over that shell's voxels.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    used, described = usable_shells(bvals, bvecs)
    report = iter(d for d in described if d["used"])
    bvecs = np.asarray(bvecs, dtype=np.float64)
    bvals = np.asarray(bvals, dtype=np.float64)
    for shell in used:
        entry = next(report)
        projection = anisotropic_projection(torch.from_numpy(bvecs[:, shell].T[None].copy()),
                                            torch.from_numpy(bvals[shell][None].copy())
                                            )[0].numpy().astype(np.float32)
        floor = 1e-6 * max(float(np.max(bases[v])) for v in shell)
        row = int(np.prod(outputs.shape[2:])) * shell.size * 4 * 4
        rows = max(1, _SLAB_BYTES // max(row, 1))
        removed_sq = detail_sq = 0.0
        for start in range(0, outputs.shape[1], rows):
            part = slice(start, min(start + rows, outputs.shape[1]))
            out = np.stack([outputs[v, part] for v in shell])
            base = np.stack([bases[v, part] for v in shell])
            detail = out - base
            relative = np.clip(detail / np.maximum(base, floor), -MAX_RELATIVE, MAX_RELATIVE)
            anisotropic = np.tensordot(projection, relative, axes=(1, 0))
            taken = weight * base * anisotropic
            new = np.maximum(out - taken, 0.0)
            removed_sq += float(np.sum((new - out) ** 2, dtype=np.float64))
            detail_sq += float(np.sum(detail ** 2, dtype=np.float64))
            for k, v in enumerate(shell):
                outputs[v, part] = new[k]
        entry["detail_removed"] = round(float(np.sqrt(removed_sq / detail_sq))
                                        if detail_sq > 0 else 0.0, 4)
        if progress:
            progress(1)
    return {"weight": float(weight), "shells": described}
