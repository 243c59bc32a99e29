"""Diffusion-MRI data for CSR-dMRI: shell selection, b=0 normalisation, the T1w image placed on
the DWI grid, a brain mask, and one subject bundled as :class:`DwiSubject`.

Layouts follow NIfTI: a diffusion series is ``(X, Y, Z, N)`` (volume axis last), b-values are
``(N,)`` in s/mm^2 and b-vectors ``(3, N)`` (FSL files, see :mod:`mrisr.io.dwi`). The paper's
recipe (CSR-dMRI Sec. 3.1): keep the b=1000 volumes and divide them by the mean of the b=0
volumes, so every voxel holds the attenuation ``S_b / S_0`` in about ``[0, 1]``; put the T1w
image onto the DWI grid.

dipy is only needed for the optional rigid registration (:mod:`mrisr.data.registration`) and
the ``median_otsu`` mask; it is imported when used.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence

import numpy as np
from scipy import ndimage

from mrisr.data.intensity import robust_max
from mrisr.errors import InputError
from mrisr.grid import voxel_sizes
from mrisr.io.dwi import companion_paths, read_bval_bvec
from mrisr.io.nifti import Volume, load_nifti
from mrisr.resample import resample_to_grid

if TYPE_CHECKING:
    from mrisr.data.phantom import DwiPhantom

__all__ = ["DwiSubject", "PlacedImage", "b0_indices", "select_shell", "shells", "normalise_by_b0",
           "denormalise", "attenuation_level", "place_t1_on_dwi_grid",
           "brain_mask", "scale_t1", "load_dwi_subject", "phantom_dwi_subject",
           "simulate_shells"]

#: Relative level (of the robust maximum of the mean b=0) below which a voxel is treated as
#: having no signal: dividing by such a b=0 only amplifies noise.
MIN_B0_FRACTION = 0.02
#: Upper bound of the attenuation ``S_b / S_0`` kept by :func:`load_dwi_subject` (and applied
#: at inference): ratios far above 1 are noise or motion at the brain edge, not diffusion.
MAX_ATTENUATION = 2.0
#: :func:`attenuation_level` ignores voxels below this fraction of the 99th percentile.
LEVEL_FLOOR = 0.2


def _present_bvalues(bvals: np.ndarray) -> str:
    # Scanners jitter b-values by a few s/mm^2 per direction (HCP: 990..1010); rounding to 50
    # names the shells rather than listing every value.
    shells = np.unique(np.round(np.asarray(bvals, dtype=np.float64) / 50.0) * 50.0)
    return ", ".join(f"{b:g}" for b in shells)


def b0_indices(bvals: np.ndarray, threshold: float = 50.0) -> np.ndarray:
    """Indices of the b=0 volumes: b-values ``<= threshold`` s/mm^2 (an int array, maybe empty)."""
    return np.flatnonzero(np.asarray(bvals, dtype=np.float64) <= threshold)


def select_shell(bvals: np.ndarray, bvalue: Optional[float] = 1000.0, tolerance: float = 100.0,
                 b0_threshold: float = 50.0) -> np.ndarray:
    """Indices of the volumes of one shell: ``|b - bvalue| <= tolerance`` and not b=0;
    ``bvalue=None``: every diffusion-weighted volume (``b > b0_threshold``), whatever its shell.

    Raises :class:`InputError` naming the shells present when no volume matches.
    """
    b = np.asarray(bvals, dtype=np.float64).reshape(-1)
    weighted = b > b0_threshold
    if bvalue is None:
        idx = np.flatnonzero(weighted)
        if idx.size == 0:
            raise InputError("no diffusion-weighted volume (b > "
                             f"{b0_threshold:g}) among the b-values present: "
                             f"{_present_bvalues(b)}")
        return idx
    idx = np.flatnonzero((np.abs(b - float(bvalue)) <= float(tolerance)) & weighted)
    if idx.size == 0:
        raise InputError(f"no b={bvalue:g} shell (tolerance {tolerance:g}) among the b-values "
                         f"present: {_present_bvalues(b)}")
    return idx


def shells(bvals: np.ndarray, tolerance: float = 100.0,
           b0_threshold: float = 50.0) -> list[np.ndarray]:
    """The diffusion-weighted volumes grouped into shells: sorted by b-value and split where
    two neighbours differ by more than ``tolerance`` s/mm^2 (scanners jitter b-values by a few
    per direction). A list of int index arrays, lowest shell first; b=0 volumes
    (``b <= b0_threshold``) are in none."""
    b = np.asarray(bvals, dtype=np.float64).reshape(-1)
    weighted = np.flatnonzero(b > b0_threshold)
    order = weighted[np.argsort(b[weighted], kind="stable")]
    if order.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(b[order]) > tolerance) + 1
    return [np.sort(part) for part in np.split(order, cuts)]


def normalise_by_b0(dwi: np.ndarray, bvals: np.ndarray, bvalue: Optional[float] = 1000.0,
                    tolerance: float = 100.0, b0_threshold: float = 50.0,
                    mask: Optional[np.ndarray] = None, clip: Optional[float] = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Divide the volumes of one shell by the mean b=0 volume.

    Args:
        dwi: ``(X, Y, Z, N)`` series, any positive intensity units.
        bvals: ``(N,)`` b-values (s/mm^2).
        bvalue, tolerance, b0_threshold: the shell and the b=0 definition (see
            :func:`select_shell`, :func:`b0_indices`); ``bvalue=None``: every
            diffusion-weighted volume.
        mask: optional boolean ``(X, Y, Z)``; voxels outside it are set to 0.
        clip: optional upper bound of the attenuation (noise and motion between the b=0 and
            the diffusion-weighted volumes can produce ratios far above 1 near the brain edge).

    Returns:
        ``(normalised, mean_b0)``: float32 ``(X, Y, Z, n_shell)`` attenuations, 0 where the
        mean b=0 is below ``MIN_B0_FRACTION`` of its robust maximum or outside ``mask``, and the
        float32 ``(X, Y, Z)`` mean b=0 in the input's units.
    """
    dwi = np.asarray(dwi)
    b = np.asarray(bvals, dtype=np.float64).reshape(-1)
    if dwi.ndim != 4 or dwi.shape[3] != b.size:
        raise InputError(f"diffusion series of shape {dwi.shape} does not match {b.size} "
                         "b-values")
    zero = b0_indices(b, b0_threshold)
    if zero.size == 0:
        raise InputError(f"no b=0 volume (b <= {b0_threshold:g}) among the b-values present: "
                         f"{_present_bvalues(b)}")
    shell = select_shell(b, bvalue, tolerance, b0_threshold)
    mean_b0 = dwi[..., zero].astype(np.float64).mean(axis=-1)
    valid = mean_b0 > MIN_B0_FRACTION * robust_max(mean_b0)
    if mask is not None:
        if mask.shape != mean_b0.shape:
            raise InputError(f"mask shape {mask.shape} does not match the series' "
                             f"{mean_b0.shape}")
        valid &= mask.astype(bool)
    out = np.zeros(mean_b0.shape + (shell.size,), dtype=np.float32)
    out[valid] = dwi[..., shell][valid] / mean_b0[valid][:, None]
    if clip is not None:
        np.clip(out, 0.0, clip, out=out)
    return out, mean_b0.astype(np.float32)


def denormalise(normalised: np.ndarray, mean_b0: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalise_by_b0`: ``(X, Y, Z, N)`` attenuations times the mean b=0."""
    return (np.asarray(normalised) * np.asarray(mean_b0)[..., None]).astype(np.float32)


def attenuation_level(volume: np.ndarray) -> float:
    """Typical attenuation of one diffusion volume: the median of its positive voxels above
    ``LEVEL_FLOOR`` times their 99th percentile (1.0 for a volume without positive voxels).

    Attenuations are 0 outside the brain by convention, so the positive voxels are the brain;
    the floor drops CSF and the small values that cubic downsampling spreads across the mask
    border, so the level of an LR volume is within a few percent of its HR volume's at x2-x4
    (0.95-1.01 on the shared Philips and Siemens series, benchmarks/dmri_domain_stats.py). It
    is about 0.45 at b=1000 and 0.2 at b=2500: dividing by it makes shells alike.
    """
    values = np.asarray(volume, dtype=np.float32)
    values = values[values > 0]
    if values.size == 0:
        return 1.0
    kept = values[values > LEVEL_FLOOR * np.percentile(values, 99)]
    level = float(np.median(kept)) if kept.size else 0.0
    return level if level > 0 else 1.0


def _antialias_sigma(src_affine: np.ndarray, dst_affine: np.ndarray) -> list[float]:
    """Gaussian sigma (source voxels) per source axis before sampling on a coarser grid.

    The destination's spacing is measured along each source axis, so oblique grids are
    handled; the rule is :func:`mrisr.degradation.spline_resize`'s (0.5 * (ratio - 1)).
    """
    zooms = voxel_sizes(src_affine)
    sigmas = []
    for axis in range(3):
        direction = src_affine[:3, axis] / zooms[axis]
        steps = np.linalg.solve(dst_affine[:3, :3], direction)  # dst voxels per mm
        ratio = 1.0 / np.linalg.norm(steps) / zooms[axis]
        sigmas.append(0.5 * (ratio - 1.0) if ratio > 1.0 else 0.0)
    return sigmas


class PlacedImage(NamedTuple):
    """An image resampled onto another grid.

    data: float32 ``(X, Y, Z)`` on the destination grid (0 outside the source FOV).
    coverage: bool ``(X, Y, Z)``, voxels the source covers.
    transform: float64 ``(4, 4)`` world-to-world map applied on top of the two affines
        (destination world point ``p`` was read at source world point ``transform @ p``);
        the identity without registration.
    """

    data: np.ndarray
    coverage: np.ndarray
    transform: np.ndarray


def place_t1_on_dwi_grid(t1: Volume, dwi_affine: np.ndarray, dwi_shape: Sequence[int],
                         register: bool = False, static: Optional[np.ndarray] = None,
                         pipeline: Sequence[str] = ("translation", "rigid"),
                         antialias: bool = True, order: int = 3,
                         transform: Optional[np.ndarray] = None) -> PlacedImage:
    """Resample a T1w volume onto the DWI grid through the two voxel-to-world affines.

    Args:
        t1: the T1w image at its own resolution and orientation.
        dwi_affine, dwi_shape: the DWI grid (4x4, mm; the first three sizes are used).
        register: refine the header alignment with a rigid mutual-information registration
            (:func:`mrisr.data.registration.register_rigid`) of the T1 to ``static``.
        static: image on the DWI grid to register to (e.g. the mean b=0); required with
            ``register``.
        pipeline: dipy stages (see :func:`mrisr.data.registration.register_rigid`).
        transform: a world-to-world map already found (e.g. by registering to the mean b=0 on
            another grid of the same field of view); ``register`` must then be false.
        antialias: Gaussian pre-filter when the DWI grid is coarser than the T1 (without it a
            1 mm T1 sampled every 2 mm aliases).
        order: spline order of the resampling.

    Returns:
        :class:`PlacedImage` (float32 data in the T1's units, coverage, world transform).
    """
    dwi_affine = np.asarray(dwi_affine, dtype=np.float64)
    shape = tuple(int(n) for n in dwi_shape[:3])
    if register and transform is not None:
        raise ValueError("pass either register or a transform, not both")
    transform = np.eye(4) if transform is None else np.asarray(transform, dtype=np.float64)
    if register:
        if static is None or tuple(static.shape[:3]) != shape:
            raise InputError(f"registration needs a static image of the DWI grid shape {shape}")
        from mrisr.data.registration import register_rigid

        transform = register_rigid(t1, static, dwi_affine, pipeline)
    data = np.asarray(t1.data, dtype=np.float32)
    if antialias:
        sigma = _antialias_sigma(t1.affine, dwi_affine)
        if any(s > 0 for s in sigma):
            data = ndimage.gaussian_filter(data, sigma, mode="nearest")
    # Reading the T1 at transform @ p equals reading it through the affine inv(T) @ A_t1.
    src_affine = np.linalg.solve(transform, np.asarray(t1.affine, dtype=np.float64))
    name = str(t1.path) if t1.path is not None else "T1w"
    placed, coverage = resample_to_grid(data, src_affine, dwi_affine, shape, order=order,
                                        name=name)
    return PlacedImage(placed, coverage, transform)


def brain_mask(mean_b0: np.ndarray, method: str = "auto") -> np.ndarray:
    """Brain mask ``(X, Y, Z)`` bool from the mean b=0 volume.

    method: ``median_otsu`` (dipy), ``threshold`` (above 10 % of the robust maximum, holes
    filled, largest connected component) or ``auto`` (``median_otsu`` when dipy is installed).
    """
    b0 = np.asarray(mean_b0, dtype=np.float32)
    if method == "auto":
        try:
            import dipy.segment.mask  # noqa: F401
            method = "median_otsu"
        except ImportError:
            method = "threshold"
    if method == "median_otsu":
        try:
            from dipy.segment.mask import median_otsu
        except ImportError:
            raise InputError("brain mask method 'median_otsu' needs dipy") from None
        # Smaller filter than dipy's default (4, 4): enough for 2-3 mm EPI and several times
        # faster; the hole filling below repairs what the lighter smoothing leaves.
        _, mask = median_otsu(b0, median_radius=2, numpass=2)
    elif method == "threshold":
        mask = b0 > 0.1 * robust_max(b0)
    else:
        raise InputError(f"unknown brain mask method '{method}' (auto, median_otsu, threshold)")
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n > 1:
        # Keep the brain, not eyes or scalp islands that survive the threshold.
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    if not mask.any():
        raise InputError("brain mask is empty (is the b=0 image blank?)")
    return mask.astype(bool)


@dataclass
class DwiSubject:
    """One subject's single-shell data on the DWI grid.

    Attributes:
        name: subject label.
        shell: float32 ``(X, Y, Z, N)`` attenuations ``S_b / mean S_0`` (0 outside ``mask``).
        bvals: float64 ``(N,)`` s/mm^2 of the shell volumes. bvecs: float64 ``(3, N)``.
        mean_b0: float32 ``(X, Y, Z)`` mean b=0 in scanner units (to undo the normalisation).
        t1: float32 ``(X, Y, Z)`` T1w on the DWI grid divided by its median inside the mask
            (:func:`scale_t1`), or ``None``.
        mask: bool ``(X, Y, Z)`` brain mask.
        affine: float64 ``(4, 4)`` DWI voxel-to-world (mm).
    """

    name: str
    shell: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    mean_b0: np.ndarray
    t1: Optional[np.ndarray]
    mask: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.shell.shape[:3])


def scale_t1(t1: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """T1w divided by its median inside ``mask`` (brain tissue about 1).

    A tissue statistic, not the maximum: a coarse DWI mask takes in some scalp, whose fat sets
    the maximum of one T1w sequence and not another's (the robust maximum put the brain median
    at 0.62 of it on the Philips MPRAGE and at 0.16 on the Siemens TFL)."""
    values = np.asarray(t1)[np.asarray(mask, dtype=bool)]
    values = values[values > 0]
    level = float(np.median(values)) if values.size else 0.0
    if level <= 0:
        level = robust_max(t1)
    return (t1 / level).astype(np.float32)


def load_dwi_subject(dwi_path: str | os.PathLike, t1_path: Optional[str | os.PathLike] = None,
                     bvalue: Optional[float] = 1000.0, tolerance: float = 100.0,
                     register: bool = False,
                     bval_path: Optional[str | os.PathLike] = None,
                     bvec_path: Optional[str | os.PathLike] = None,
                     mask_method: str = "auto", clip: Optional[float] = MAX_ATTENUATION,
                     name: Optional[str] = None) -> DwiSubject:
    """Load a DWI series (with its ``.bval``/``.bvec``) and optionally a T1w image.

    The b=0 volumes (interleaved or not) give the mean b=0 and the brain mask; the ``bvalue``
    shell (``None``: every diffusion-weighted volume) is divided by the mean b=0 (clipped at
    ``clip``); the T1w is resampled onto the DWI grid (rigidly registered
    to the mean b=0 with ``register``). See :class:`DwiSubject` for the result.
    """
    series = load_nifti(dwi_path, ndim=(4,))
    default_bval, default_bvec = companion_paths(dwi_path)
    bvals, bvecs = read_bval_bvec(bval_path or default_bval, bvec_path or default_bvec,
                                  n_volumes=series.data.shape[3])
    zero = b0_indices(bvals)
    if zero.size == 0:
        raise InputError(f"{dwi_path}: no b=0 volume among the b-values present: "
                         f"{_present_bvalues(bvals)}")
    try:
        shell_idx = select_shell(bvals, bvalue, tolerance)
    except InputError as exc:
        raise InputError(f"{dwi_path}: {exc}") from None
    mean_b0 = series.data[..., zero].mean(axis=-1)
    mask = brain_mask(mean_b0, mask_method)
    shell, mean_b0 = normalise_by_b0(series.data, bvals, bvalue, tolerance, mask=mask, clip=clip)
    t1 = None
    if t1_path is not None:
        placed = place_t1_on_dwi_grid(load_nifti(t1_path), series.affine, series.data.shape,
                                      register=register, static=mean_b0)
        t1 = scale_t1(placed.data, mask)
    return DwiSubject(name=name or Path(dwi_path).name.split(".")[0], shell=shell,
                      bvals=bvals[shell_idx], bvecs=bvecs[:, shell_idx], mean_b0=mean_b0,
                      t1=t1, mask=mask, affine=series.affine)


def phantom_dwi_subject(phantom: "DwiPhantom", bvalue: float = 1000.0, tolerance: float = 100.0,
                        name: str = "phantom") -> DwiSubject:
    """The embedded :class:`~mrisr.data.phantom.DwiPhantom` as a :class:`DwiSubject` (its
    ground-truth brain mask, its T1w already on the DWI grid)."""
    shell_idx = select_shell(phantom.bvals, bvalue, tolerance)
    shell, mean_b0 = normalise_by_b0(phantom.dwi, phantom.bvals, bvalue, tolerance,
                                     mask=phantom.brain_mask)
    return DwiSubject(name=name, shell=shell, bvals=phantom.bvals[shell_idx],
                      bvecs=phantom.bvecs[:, shell_idx], mean_b0=mean_b0,
                      t1=scale_t1(phantom.t1w, phantom.brain_mask), mask=phantom.brain_mask,
                      affine=phantom.affine)


def simulate_shells(subject: DwiSubject, bvalues: Sequence[float], per_bvalue: int,
                    seed: int = 0) -> DwiSubject:
    """``subject`` with volumes of other shells added, simulated from its own.

    A diffusion tensor ``D`` is fitted (dipy, WLS) to the subject's shell in every brain voxel;
    each new volume is ``exp(-b g^T D g)`` for one of ``bvalues`` and a random unit direction
    ``g``, plus the fit residual of a random measured volume (so it keeps the measured noise,
    which in attenuation units does not depend on b: a b=2500 volume is noisier relative to its
    level, as on a scanner). The tensor model ignores kurtosis, so high-b attenuations come out
    somewhat low; the aim is a training set that has seen other contrasts and noise levels, not
    a signal model. Outside the mask the new volumes are 0, as the measured ones.

    Returns a new :class:`DwiSubject` whose ``shell``, ``bvals`` and ``bvecs`` hold the measured
    volumes followed by ``len(bvalues) * per_bvalue`` simulated ones.
    """
    try:
        from dipy.core.gradients import gradient_table
        from dipy.reconst.dti import TensorModel
    except ImportError:
        raise InputError("dmri.simulate_bvalues needs dipy (pip install dipy)") from None
    mask = subject.mask
    measured = subject.shell[mask].astype(np.float64)  # (V, N)
    data = np.concatenate([np.ones((measured.shape[0], 1)), np.maximum(measured, 1e-4)], 1)
    gtab = gradient_table(np.concatenate([[0.0], subject.bvals]),
                          bvecs=np.concatenate([np.zeros((1, 3)), subject.bvecs.T]))
    tensors = TensorModel(gtab, fit_method="WLS").fit(data).quadratic_form  # (V, 3, 3)
    fitted = np.exp(-np.einsum("n,ni,vij,nj->vn", subject.bvals, subject.bvecs.T, tensors,
                               subject.bvecs.T))
    residual = measured - fitted
    rng = np.random.default_rng(seed)
    b_new = np.repeat(np.asarray(bvalues, dtype=np.float64), int(per_bvalue))
    g = rng.normal(size=(b_new.size, 3))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    adc = np.einsum("ni,vij,nj->vn", g, tensors, g)  # (V, K) mm^2/s
    noise = residual[:, rng.integers(measured.shape[1], size=b_new.size)]
    simulated = np.exp(-np.clip(adc, 0.0, None) * b_new) + noise
    shell = np.zeros(subject.shape + (b_new.size,), np.float32)
    shell[mask] = np.clip(simulated, 0.0, MAX_ATTENUATION)
    return DwiSubject(name=f"{subject.name}+sim", shell=np.concatenate([subject.shell, shell], -1),
                      bvals=np.concatenate([subject.bvals, b_new]),
                      bvecs=np.concatenate([subject.bvecs, g.T], 1), mean_b0=subject.mean_b0,
                      t1=subject.t1, mask=mask, affine=subject.affine)
