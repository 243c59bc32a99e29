"""Rigid registration of one image to another, and the evidence that a header placement is off.

A *transform* here is a world-to-world map ``(4, 4)`` (mm) from the static image's world to the
moving image's world: the moving image read at ``transform @ p`` (through its own header)
shows the anatomy the static image shows at ``p``; the identity means the headers are right.
Correcting a header is then ``inv(transform) @ affine`` (:func:`corrected`).

Used by ``mrisr upscale`` for a 2D model's reference (:func:`assess_registration`, whose evidence
:mod:`mrisr.inference.decisions` turns into a decision), by the 3D models' T1w placement
(:func:`mrisr.data.dwi.place_t1_on_dwi_grid`) and by datasets with ``register_reference``.

dipy does the optimisation (mutual information); it is imported when used.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from mrisr.degradation import spline_resize
from mrisr.errors import InputError
from mrisr.grid import resample_affine, shape_for_voxel_size, voxel_sizes
from mrisr.io.nifti import Volume
from mrisr.resample import resample_to_grid

__all__ = ["acquire_like", "register_rigid", "corrected", "foreground_points",
           "foreground_corners", "largest_displacement", "rotation_degrees", "rigid_map",
           "RegistrationEvidence", "assess_registration"]

#: Histogram bins of the mutual information, as in the registration itself.
MI_BINS = 32
#: Moving-image samples (static voxels times their sub-voxels) behind one mutual information
#: of :func:`assess_registration`: a histogram needs no more, and it bounds the time.
MI_SAMPLES = 1_000_000
#: Foreground voxels whose displacement measures how far a transform moves the anatomy.
FOREGROUND_POINTS = 4000


def acquire_like(moving: Volume, static_shape: Sequence[int], static_affine: np.ndarray
                 ) -> np.ndarray:
    """``moving`` as the static grid would have measured it: resampled (through the headers,
    linearly) onto that grid subdivided into sub-voxels no larger than the moving image's
    smallest voxel, then averaged over each static voxel (a box point-spread function of the
    static voxel size, e.g. a thick slice). Returns float32 ``static_shape``."""
    static_shape = tuple(int(n) for n in static_shape[:3])
    finest = float(voxel_sizes(moving.affine).min())
    sub = [max(1, int(np.ceil(v / finest - 1e-6))) for v in voxel_sizes(static_affine)]
    fine_shape = tuple(n * k for n, k in zip(static_shape, sub))
    fine_affine = resample_affine(static_affine, static_shape, fine_shape)
    fine, _ = resample_to_grid(np.asarray(moving.data, dtype=np.float32), moving.affine,
                               fine_affine, fine_shape, order=1, name=str(moving.path),
                               min_overlap=0.0)
    blocks = fine.reshape(static_shape[0], sub[0], static_shape[1], sub[1], static_shape[2],
                          sub[2])
    return blocks.mean(axis=(1, 3, 5)).astype(np.float32)


def _centring(points: np.ndarray) -> np.ndarray:
    """World-to-world translation ``(4, 4)`` that puts the centre of ``points`` (homogeneous
    ``(4, n)``) at the origin."""
    shift = np.eye(4)
    shift[:3, 3] = -points[:3].mean(axis=1)
    return shift


def register_rigid(moving: Volume, static: np.ndarray, static_affine: np.ndarray,
                   pipeline: Sequence[str] = ("translation", "rigid"),
                   match_acquisition: bool = False,
                   start: Optional[np.ndarray] = None) -> np.ndarray:
    """World-to-world rigid map ``(4, 4)`` (static world -> moving world) by mutual information
    (dipy), e.g. a T1w (``moving``) to the mean b=0 (``static`` on the grid ``static_affine``).

    ``pipeline``: dipy stages. The default starts from the header alignment (or ``start``, a
    transform), which is close for images of one session; ``center_of_mass`` would be pulled
    away by the neck and face of a T1 that the EPI does not cover.
    ``match_acquisition``: register :func:`acquire_like` of the moving image (the static
    grid's voxel averaging applied to it) instead of an isotropic copy at about the static
    resolution: for a low-resolution or thick-slice static image, whose partial volume an
    isotropic copy lacks and which then pulls the estimate off (on already aligned brats18
    thick slices by enough to cost 1-1.6 dB downstream).

    Rotations are about the centre of the static image's foreground, not the world origin:
    dipy rotates about the origin, which in some headers (brats: the corner of the grid) lies
    180 mm from the brain, so that a small rotation there is a large translation and the
    optimiser stops in the long valley between them (docs/benchmarks/cross_dataset.md,
    "Registration that does not invent motion").
    """
    try:
        from dipy.align import affine_registration
    except ImportError:
        raise InputError("registration needs dipy (pip install dipy)") from None
    static = np.asarray(static, dtype=np.float64)
    static_affine = np.asarray(static_affine, dtype=np.float64)
    if match_acquisition:
        small = acquire_like(moving, static.shape, static_affine)
        small_affine = static_affine
    else:
        # Register a copy of the moving image at about the static resolution: full-resolution
        # MI on a 1 mm T1 costs minutes and adds nothing at 2 mm. Isotropic, because the two
        # grids' axes need not correspond (sagittal T1, axial EPI).
        size = max(float(np.mean(voxel_sizes(static_affine))),
                   float(voxel_sizes(moving.affine).max()))
        shape = shape_for_voxel_size(moving.data.shape, moving.affine, size)
        small = spline_resize(moving.data, shape, order=1, antialias=True)
        small_affine = resample_affine(moving.affine, moving.data.shape, shape)
    centre = _centring(foreground_corners(static, static_affine))
    begin = None if start is None else centre @ np.asarray(start, np.float64) @ \
        np.linalg.inv(centre)
    # Sparse MI sampling (20 % of the voxels) is ~6x faster than dense sampling and agrees with
    # it to ~0.2 mm on 2 mm data; dipy jitters the samples with numpy's global generator, which
    # is seeded here (and restored) so that a subject always gets the same transform. dipy
    # announces every stage on stdout (through the progress bar): quiet while it runs.
    state = np.random.get_state()
    np.random.seed(0)
    announcer = logging.getLogger("dipy")
    level = announcer.level
    announcer.setLevel(logging.WARNING)
    try:
        _, transform = affine_registration(
            np.asarray(small, dtype=np.float64), static, moving_affine=centre @ small_affine,
            static_affine=centre @ static_affine, pipeline=list(pipeline),
            starting_affine=begin, metric="MI", nbins=MI_BINS, sampling_proportion=0.2,
            level_iters=[200, 100], sigmas=[1.0, 0.0], factors=[2, 1])
    finally:
        np.random.set_state(state)
        announcer.setLevel(level)
    return np.linalg.inv(centre) @ np.asarray(transform, dtype=np.float64) @ centre


def corrected(moving: Volume, transform: np.ndarray) -> Volume:
    """``moving`` with its header corrected by ``transform`` (reading it at ``transform @ p``
    is reading it through ``inv(transform) @ affine``)."""
    return Volume(moving.data, np.linalg.solve(transform, moving.affine), moving.header,
                  moving.path)


def _foreground(image: np.ndarray) -> np.ndarray:
    """Voxel indices ``(n, 3)`` above a tenth of the 99th percentile of ``|image|``."""
    magnitude = np.abs(image)
    peak = float(np.percentile(magnitude, 99)) if magnitude.size else 0.0
    return np.argwhere(magnitude > 0.1 * peak) if peak > 0 else np.empty((0, 3), int)


def foreground_corners(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates ``(4, 8)`` (homogeneous, mm) of the corners of the bounding box of
    ``image``'s foreground (above a tenth of its 99th percentile; the whole grid if empty)."""
    idx = _foreground(image)
    lo, hi = ((idx.min(0), idx.max(0)) if len(idx)
              else (np.zeros(3, int), np.asarray(image.shape[:3]) - 1))
    corners = np.array([[a[0], b[1], c[2], 1.0] for a in (lo, hi) for b in (lo, hi)
                        for c in (lo, hi)], dtype=np.float64).T
    return np.asarray(affine, dtype=np.float64) @ corners


def foreground_points(image: np.ndarray, affine: np.ndarray,
                      count: int = FOREGROUND_POINTS) -> np.ndarray:
    """World coordinates ``(4, n)`` (homogeneous, mm) of up to ``count`` foreground voxels of
    ``image`` (evenly spread over them; the bounding-box corners of the grid if none)."""
    idx = _foreground(image)
    if not len(idx):
        return foreground_corners(image, affine)
    idx = idx[np.linspace(0, len(idx) - 1, min(count, len(idx))).round().astype(int)]
    return np.asarray(affine, np.float64) @ np.vstack([idx.T.astype(np.float64),
                                                       np.ones(len(idx))])


def largest_displacement(transform: np.ndarray, points: np.ndarray,
                         other: Optional[np.ndarray] = None) -> float:
    """Largest distance (mm) between ``transform @ p`` and ``other @ p`` (default: ``p``)
    over the homogeneous ``points`` ``(4, n)``."""
    diff = np.asarray(transform) - (np.eye(4) if other is None else np.asarray(other))
    return float(np.linalg.norm(diff @ points, axis=0).max())


def rotation_degrees(transform: np.ndarray) -> float:
    """Angle (degrees) of the rotation part of a rigid ``transform``."""
    cos = float(np.clip((np.trace(transform[:3, :3]) - 1) / 2, -1.0, 1.0))
    return float(np.degrees(np.arccos(cos)))


def rigid_map(translation=(0.0, 0.0, 0.0), axis: Optional[int] = None, angle: float = 0.0,
              centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Rigid world map ``(4, 4)``: a rotation by ``angle`` radians about world ``axis``
    through ``centre``, then ``translation`` (mm)."""
    rotation = np.eye(3)
    if axis is not None:
        i, j = [a for a in range(3) if a != axis]
        c, s = np.cos(angle), np.sin(angle)
        rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = np.asarray(centre) - rotation @ np.asarray(centre) + np.asarray(translation)
    return out


class _MutualInformation:
    """Mutual information between the static image and the moving image as the static grid
    would have measured it after a transform (:func:`acquire_like` at each sampled static
    voxel: the mean of the moving image, read linearly at sub-voxels no larger than its
    smallest voxel, over the static voxel), on a regular subgrid of the static voxels whose
    sub-voxels number about :data:`MI_SAMPLES`.

    Acquiring anew for every transform, not interpolating one acquired copy, matters for thick
    slices: interpolating between 5 mm slices blurs, which would make every transform but the
    identity look worse. For the same reason :meth:`compare` scores transforms on the voxels
    that every one of them places inside the moving image: a moving image no larger than the
    static one (a slab with the slab's reference) would otherwise favour the identity, the only
    transform that loses no voxel at the edge."""

    def __init__(self, static: np.ndarray, static_affine: np.ndarray, moving: Volume):
        zooms = voxel_sizes(static_affine)
        finest = float(voxel_sizes(moving.affine).min())
        sub = np.array([max(1, int(np.ceil(v / finest - 1e-6))) for v in zooms])
        stride = max(1, int(np.ceil((static.size * sub.prod() / MI_SAMPLES) ** (1 / 3))))
        grid = np.indices(static.shape)[(slice(None),) + (slice(None, None, stride),) * 3]
        centres = grid.reshape(3, -1).astype(np.float64)
        # Sub-voxel offsets (static voxel units) of a box spanning each voxel.
        offsets = np.stack(np.meshgrid(*[(np.arange(k) + 0.5) / k - 0.5 for k in sub],
                                       indexing="ij")).reshape(3, -1)
        points = (centres[:, :, None] + offsets[:, None, :]).reshape(3, -1)
        self.n_sub = offsets.shape[1]
        self.world = np.asarray(static_affine, np.float64) @ np.vstack(
            [points, np.ones((1, points.shape[1]))])
        self.moving = np.asarray(moving.data, np.float32)
        self.moving_affine = np.asarray(moving.affine, np.float64)
        self.static_values = np.asarray(static, np.float32)[tuple(grid)].ravel()
        top = float(np.percentile(self.moving, 99.9))
        self.moving_range = (float(self.moving.min()), top if top > 0 else 1.0)

    def _source(self, transform: np.ndarray) -> np.ndarray:
        """Moving-image voxel coordinates ``(3, samples)`` of the sub-voxels."""
        return np.linalg.solve(self.moving_affine, transform @ self.world)[:3]

    def _inside(self, transform: np.ndarray) -> np.ndarray:
        """Sampled static voxels whose every sub-voxel lies inside the moving image."""
        src = self._source(transform)
        upper = np.asarray(self.moving.shape, np.float64)[:, None] - 1
        inside = np.all((src >= 0) & (src <= upper), axis=0)
        return inside.reshape(-1, self.n_sub).all(axis=1)

    @staticmethod
    def _bins(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
        # The top 0.1 % share the last bin, so that a few bright voxels do not squeeze the rest.
        scaled = (values - lo) / (hi - lo if hi > lo else 1.0) * MI_BINS
        return np.clip(scaled, 0, MI_BINS - 1).astype(np.int64)

    def compare(self, transforms: Sequence[np.ndarray]) -> list[float]:
        """MI (nats) with the moving image read at ``transform @ p``, for each transform, on
        the sampled voxels inside the moving image under all of them (NaN if none is)."""
        kept = np.logical_and.reduce([self._inside(t) for t in transforms])
        if not kept.any():
            return [float("nan")] * len(transforms)
        static = self.static_values[kept]
        static_bins = self._bins(static, float(static.min()),
                                 float(np.percentile(static, 99.9)))
        out = []
        for transform in transforms:
            src = self._source(transform).reshape(3, -1, self.n_sub)[:, kept].reshape(3, -1)
            moving = ndimage.map_coordinates(self.moving, src, order=1, mode="nearest")
            moving = moving.reshape(-1, self.n_sub).mean(axis=1)
            joint = np.bincount(static_bins * MI_BINS + self._bins(moving, *self.moving_range),
                                minlength=MI_BINS * MI_BINS).reshape(MI_BINS, MI_BINS)
            p = joint / joint.sum()
            outer = p.sum(axis=1, keepdims=True) @ p.sum(axis=0, keepdims=True)
            nonzero = p > 0
            out.append(float((p[nonzero] * np.log(p[nonzero] / outer[nonzero])).sum()))
        return out


@dataclass
class RegistrationEvidence:
    """What a registration found and how much the data back it.

    transform: the rigid estimate ``(4, 4)`` (static world -> moving world), NaN if it failed.
    moves_mm: the largest displacement it causes over the static image's foreground.
    tolerance_mm: the displacement the evidence is weighed against (one reference voxel).
    mi_header, mi_estimate: mutual information (nats) of the header placement and of the
        estimate; ``None`` when not measured (``moves_mm`` within the tolerance).
    mi_drop_at_tolerance: how much the MI of the estimate falls, on average, when it is moved by
        the tolerance (a translation along, or a rotation about, each world axis that moves
        the foreground by ``tolerance_mm``, both signs): the scale of the MI's sensitivity to
        that much motion in this pair of images.
    seconds: the time it took.
    """

    transform: np.ndarray
    moves_mm: float
    tolerance_mm: float
    mi_header: Optional[float] = None
    mi_estimate: Optional[float] = None
    mi_drop_at_tolerance: Optional[float] = None
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return not np.isfinite(self.transform).all()

    @property
    def mi_gain(self) -> Optional[float]:
        """How much the estimate raises the MI above the header placement's."""
        if self.mi_header is None or self.mi_estimate is None:
            return None
        return self.mi_estimate - self.mi_header

    def as_dict(self) -> dict:
        if self.failed:
            return {"seconds": round(self.seconds, 2)}
        out = {"translation_mm": [round(float(t), 3) for t in self.transform[:3, 3]],
               "rotation_deg": round(rotation_degrees(self.transform), 3),
               "moves_mm": round(self.moves_mm, 3), "tolerance_mm": round(self.tolerance_mm, 3)}
        if self.mi_gain is not None:
            out.update(mi_gain=round(self.mi_gain, 5),
                       mi_drop_at_tolerance=round(float(self.mi_drop_at_tolerance), 5))
        out["seconds"] = round(self.seconds, 2)
        return out


def assess_registration(reference: Volume, static: np.ndarray, static_affine: np.ndarray,
                        tolerance_mm: Optional[float] = None) -> RegistrationEvidence:
    """Register ``reference`` to ``static`` (the input, on its grid ``static_affine``;
    :func:`register_rigid` with ``match_acquisition``) and measure the evidence for its
    correction (:class:`RegistrationEvidence`). ``tolerance_mm``: default one voxel of the
    reference (its largest size). The MI evidence is measured only when the estimate moves the
    foreground by more than the tolerance. A registration that fails (no overlap or no
    contrast on the input's grid) gives a NaN transform."""
    t0 = time.perf_counter()
    static = np.abs(np.asarray(static)).astype(np.float32)
    tolerance = float(voxel_sizes(reference.affine).max()) if tolerance_mm is None \
        else float(tolerance_mm)
    try:
        # A reference without overlap or contrast on the input's grid gives dipy 0/0.
        with np.errstate(invalid="ignore", divide="ignore"):
            transform = register_rigid(reference, static, static_affine,
                                       match_acquisition=True)
    except InputError as exc:  # no dipy: say so, not that the registration failed
        raise InputError(f"{reference.path}: {exc}; without it, --no-register places the "
                         "reference through the headers") from None
    except (ValueError, np.linalg.LinAlgError):
        transform = np.full((4, 4), np.nan)
    if not np.isfinite(transform).all():
        return RegistrationEvidence(transform, float("nan"), tolerance,
                                    seconds=time.perf_counter() - t0)
    points = foreground_points(static, static_affine)
    evidence = RegistrationEvidence(transform, largest_displacement(transform, points),
                                    tolerance)
    if evidence.moves_mm > tolerance:
        centre = points[:3].mean(axis=1)
        radius = float(np.linalg.norm(points[:3] - centre[:, None], axis=0).max())
        steps = []
        for axis in range(3):
            for sign in (-1.0, 1.0):
                shift = np.zeros(3)
                shift[axis] = sign * tolerance
                steps += [rigid_map(shift),
                          rigid_map(axis=axis, angle=sign * tolerance / radius, centre=centre)]
        scores = _MutualInformation(static, static_affine, reference).compare(
            [np.eye(4), transform] + [transform @ step for step in steps])
        evidence.mi_header, evidence.mi_estimate = scores[0], scores[1]
        drops = [scores[1] - score for score in scores[2:]]
        evidence.mi_drop_at_tolerance = float(np.mean(drops))
    evidence.seconds = time.perf_counter() - t0
    return evidence
