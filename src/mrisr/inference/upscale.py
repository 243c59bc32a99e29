"""Whole-volume super-resolution of NIfTI images in world space (``mrisr upscale``).

A 3D target is super-resolved slice by slice with a 2D model. The output grid keeps the
target's field of view and orientation (:mod:`mrisr.grid`); the requested scale, voxel size or
shape fixes its size per axis. The slice axis is the one with the smallest upscaling factor
(ties: the thickest voxels), so for in-plane upscaling the model runs in the acquisition plane,
and for through-plane upscaling of thick slices it runs in a plane that contains the thick axis.
Any remaining factor along the slice axis is applied by cubic interpolation afterwards. The
whole output volume is then projected onto consistency with the input (``consistency``:
degraded by the input's acquisition model, a k-space crop in-plane or a slice profile along a
thick axis, it gives the input back; :mod:`mrisr.degradation.consistency`).

The reference may have any resolution, orientation and field of view. It is resampled through
the affines onto a grid in the target's orientation that covers the target's field of view at
the reference's *own* in-plane resolution, with one reference slice per target slice, and is
fed to the model at its own scale. Output voxels whose slice has no reference coverage are
reported (the reference is zero there).

Memory: the LR slice is encoded once; the output slice is decoded in tiles or, for
Dual-ArbNet, layer by layer over bands of rows (equal to an untiled decode up to float
rounding; :mod:`mrisr.inference.tiling`); the result goes into one preallocated (optionally
memory-mapped) array.
4D series are processed volume by volume and streamed to disk as they finish.

3D models (``model.dims == 3``, the CSR-dMRI family) take whole volumes instead of slices: see
:mod:`mrisr.inference.volume3d` (the dispatch is marked "3D models" below). Which model runs
(defaults, interpolation baselines, checkpoints) is :mod:`mrisr.inference.selection`; the
default model of a 4D series with a reference is ``csr_dmri_s`` once its weights are shipped.
Folders and list files of inputs: :func:`mrisr.inference.batch.upscale_batch`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import nibabel as nib
import numpy as np
import torch

from mrisr.data.intensity import to_magnitude
from mrisr.degradation import spline_resize
from mrisr.errors import InputError, MrisrWarning
from mrisr.grid import (ScaleLike, as_scales, resample_affine, shape_for_voxel_size,
                        upscaled_shape, voxel_sizes)
from mrisr.inference.predict import predict_slices
from mrisr.inference.result import UpscaleResult, grid_info
from mrisr.inference.selection import (DEFAULT_DMRI_MODEL, DEFAULT_DMRI_MODEL_NO_T1,
                                       INTERPOLATION_MODELS, VolumeInterpolation,
                                       default_model_name, is_series_file, load_upscale_model)
from mrisr.inference.volume3d import SeriesUpscaler3D, is_volume_model, read_series_bvals
from mrisr.io.nifti import Volume, load_nifti
from mrisr.models.base import SRModel

__all__ = ["PLANES", "DEFAULT_TILE", "DEFAULT_SLICE_BATCH", "DEFAULT_CONSISTENCY", "output_grid",
           "choose_slice_axis", "reference_grid", "estimate_bytes", "available_memory",
           "check_resources", "SliceUpscaler", "check_consistency", "apply_consistency",
           "upscale", "is_thick_slice", "register_reference", "register_mode", "REGISTER_MODES",
           "SWITCH_MODES", "switch_mode", "calibrate_applies", "foreground_corners",
           "adapt_steps", "check_adaptable", "adapt_to_input", "consistency_not_applied",
           "sidecar_path", "upscale_file", "UpscaleResult", "grid_info", "load_model",
           # the model choice (mrisr.inference.selection), where older code finds it
           "DEFAULT_DMRI_MODEL", "DEFAULT_DMRI_MODEL_NO_T1", "INTERPOLATION_MODELS",
           "VolumeInterpolation", "default_model_name", "is_series_file", "load_upscale_model"]

PLANES = {"sagittal": 0, "coronal": 1, "axial": 2}
DEFAULT_TILE = 256
#: Slices of a volume encoded together by a 2D model (:class:`SliceUpscaler`).
DEFAULT_SLICE_BATCH = 1
#: Data-consistency projection of 2D-model outputs (:mod:`mrisr.degradation.consistency`).
DEFAULT_CONSISTENCY = "auto"


def output_grid(shape: Sequence[int], affine: np.ndarray, scale: Optional[ScaleLike] = None,
                voxel_size: Optional[ScaleLike] = None,
                out_shape: Optional[Sequence[int]] = None) -> tuple[tuple[int, ...], np.ndarray]:
    """Output shape and affine for exactly one of ``scale``, ``voxel_size`` or ``out_shape``."""
    given = [x is not None for x in (scale, voxel_size, out_shape)]
    if sum(given) != 1:
        raise InputError("give exactly one of --scale, --voxel-size or --shape")
    shape = tuple(int(n) for n in shape[:3])
    if scale is not None:
        new = upscaled_shape(shape, as_scales(scale, 3))
    elif voxel_size is not None:
        new = shape_for_voxel_size(shape, affine, voxel_size)
    else:
        new = tuple(int(n) for n in out_shape)
        if len(new) != 3 or any(n < 1 for n in new):
            raise InputError(f"--shape must be three positive integers, got {out_shape}")
    return new, resample_affine(affine, shape, new)


def choose_slice_axis(in_shape: Sequence[int], out_shape: Sequence[int], zooms: Sequence[float],
                      plane: Optional[str] = None) -> int:
    """Axis along which 2D slices are taken (see the module docstring)."""
    if plane is not None and plane != "auto":
        if plane in PLANES:
            return PLANES[plane]
        if plane in ("0", "1", "2"):
            return int(plane)
        raise InputError(f"unknown plane '{plane}' (auto, axial, coronal, sagittal, 0, 1, 2)")
    factors = [o / i for i, o in zip(in_shape, out_shape)]
    return min(range(3), key=lambda a: (round(factors[a], 6), -zooms[a], -a))


def _spacing_along(ref_affine: np.ndarray, direction: np.ndarray) -> float:
    """The reference's voxel size along a world direction (its sampling step along it)."""
    steps = np.linalg.solve(ref_affine[:3, :3], direction)
    return float(1.0 / np.abs(steps).max())


def reference_grid(target: Volume, reference: Volume, slice_axis: int
                   ) -> tuple[tuple[int, ...], np.ndarray]:
    """Grid in the target's orientation and FOV with the reference's own in-plane resolution
    and the target's slices along ``slice_axis``."""
    shape = list(target.spatial_shape)
    zooms = voxel_sizes(target.affine)
    for axis in range(3):
        if axis == slice_axis:
            continue
        direction = target.affine[:3, axis] / zooms[axis]
        size = _spacing_along(reference.affine, direction)
        shape[axis] = max(1, int(round(target.spatial_shape[axis] * zooms[axis] / size)))
    return tuple(shape), resample_affine(target.affine, target.spatial_shape, shape)


def estimate_bytes(out_shape: Sequence[int], n_volumes: int = 1) -> int:
    return int(np.prod(out_shape)) * 4 * n_volumes


def available_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_resources(out_path: Path, out_shape: Sequence[int], n_volumes: int,
                    memmap: bool) -> None:
    """Refuse, before any work, an output that would not fit in memory or on disk (with
    ``memmap``, one output volume also lives in a scratch file beside the output)."""
    from mrisr.io.atomic import format_size

    one = estimate_bytes(out_shape)
    total = one * n_volumes + (one if memmap else 0)
    free_disk = shutil.disk_usage(out_path.parent).free
    if total > 0.95 * free_disk:
        raise InputError(f"{out_path}: output needs {format_size(total)} on disk but only "
                         f"{format_size(free_disk)} are free")
    mem = available_memory()
    if not memmap and mem is not None and 2 * one > 0.9 * mem:
        raise InputError(f"{out_path}: one output volume needs {format_size(one)} (x2 while "
                         f"processing) but {format_size(mem)} of memory are available; use "
                         "--memmap or a smaller scale")


class SliceUpscaler:
    """Applies a 2D model to the slices of a volume (see the module docstring)."""

    def __init__(self, model: SRModel, device: torch.device, input_kind: str = "magnitude",
                 tile: Optional[int] = DEFAULT_TILE, amp: bool = False,
                 batch: int = DEFAULT_SLICE_BATCH):
        self.model = model.eval().to(device)
        self.device = device
        self.input_kind = input_kind
        self.tile = tile
        self.amp = amp and device.type == "cuda"
        self.uses_reference = model.uses_reference
        #: slices encoded together in one forward pass (each decoded on its own)
        self.batch = max(1, int(batch))

    def _slice(self, lr: np.ndarray, out_shape, ref: Optional[np.ndarray]) -> np.ndarray:
        return self._batch([lr], out_shape, [ref])[0]

    def _batch(self, lrs: list, out_shape, refs: list) -> list:
        """Outputs of the slices ``lrs`` (with ``refs``, items may be ``None``): empty slices
        give zeros, slices without reference coverage (for a model that needs one) cubic
        interpolation, and the others go through the model in one batch."""
        results: list = [None] * len(lrs)
        todo = []
        for k, (lr, ref) in enumerate(zip(lrs, refs)):
            if not np.any(lr):
                results[k] = np.zeros(out_shape, np.float32)
            elif self.uses_reference and (ref is None or not np.any(ref)):
                # No reference in this slice (outside its FOV): cubic interpolation.
                from mrisr.degradation.interpolation import interpolate
                results[k] = to_magnitude(interpolate(lr, out_shape, "cubic")).astype(np.float32)
            else:
                todo.append(k)
        if todo:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                outs = predict_slices(self.model, [lrs[k] for k in todo], out_shape,
                                      [refs[k] for k in todo] if self.uses_reference else None,
                                      self.input_kind, self.device, self.tile)
            for k, o in zip(todo, outs):
                results[k] = o
        return results

    def upscale(self, target: np.ndarray, out_shape: Sequence[int], slice_axis: int,
                reference: Optional[np.ndarray] = None, out: Optional[np.ndarray] = None,
                progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """target ``(X, Y, Z)`` -> ``out_shape``; ``reference`` on :func:`reference_grid`."""
        axis = slice_axis
        n_slices = target.shape[axis]
        inplane = tuple(n for a, n in enumerate(out_shape) if a != axis)
        inter_shape = list(out_shape)
        inter_shape[axis] = n_slices
        direct = out_shape[axis] == n_slices
        inter = out if (direct and out is not None) else np.zeros(inter_shape, np.float32)
        for start in range(0, n_slices, self.batch):
            ks = range(start, min(start + self.batch, n_slices))
            lrs = [np.take(target, k, axis=axis) for k in ks]
            refs = [np.take(reference, k, axis=axis) if reference is not None else None
                    for k in ks]
            for k, result in zip(ks, self._batch(lrs, inplane, refs)):
                index = [slice(None)] * 3
                index[axis] = k
                inter[tuple(index)] = result
            if progress:
                progress(len(ks))
        if direct:
            return inter
        # The remaining factor along the slice axis: cubic interpolation, in blocks of rows.
        result = out if out is not None else np.empty(tuple(out_shape), np.float32)
        other = [a for a in range(3) if a != axis][0]
        block = max(1, 2 ** 24 // max(1, int(np.prod(out_shape)) // out_shape[other]))
        for start in range(0, out_shape[other], block):
            index = [slice(None)] * 3
            index[other] = slice(start, min(start + block, out_shape[other]))
            part = np.moveaxis(inter[tuple(index)], axis, -1)
            res = spline_resize(part, (out_shape[axis],), order=3)
            result[tuple(index)] = np.moveaxis(np.clip(res, 0, None), -1, axis)
        return result


#: The name benchmarks and older code use for :func:`load_upscale_model`.
load_model = load_upscale_model


def check_consistency(model: str) -> str:
    from mrisr.degradation.consistency import CONSISTENCY_MODELS

    if model not in CONSISTENCY_MODELS:
        raise InputError(f"unknown consistency model '{model}' (known: "
                         f"{', '.join(CONSISTENCY_MODELS)})")
    return model


def apply_consistency(data: np.ndarray, lr: np.ndarray, model: str) -> dict:
    """Project the whole output volume ``data`` (in place) onto consistency with the input
    volume ``lr`` under ``model`` (:func:`mrisr.degradation.consistency.project`); returns the
    sidecar entry: what was requested and done, and the relative mismatch before and after."""
    from mrisr.degradation.consistency import project

    report: dict = {"requested": model}
    t0 = time.perf_counter()
    project(data, np.asarray(lr, dtype=np.float32), model, out=data, report=report)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


def is_thick_slice(in_shape: Sequence[int], out_shape: Sequence[int]) -> bool:
    """Whether upscaling ``in_shape`` to ``out_shape`` is a thick-slice job: one axis upscaled
    >= 2x and >= 1.5x more than every other (:func:`mrisr.degradation.consistency.thick_axis`,
    the rule of the ``auto`` projection)."""
    from mrisr.degradation.consistency import thick_axis

    return thick_axis([o / i for i, o in zip(in_shape, out_shape)]) is not None


#: The values of an ``auto``/``on``/``off`` option (``register``, ``calibrate``).
SWITCH_MODES = ("auto", "on", "off")
#: ``register`` modes of 2D models: ``auto`` (the default) keeps the header placement unless
#: the registration moves the input's foreground by more than one reference voxel.
REGISTER_MODES = SWITCH_MODES


def switch_mode(value, name: str) -> str:
    """An ``auto``/``on``/``off`` option given as such, or ``None`` -> ``auto``, ``True`` ->
    ``on``, ``False`` -> ``off``; ``name`` is the option's name in the error."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    if value not in SWITCH_MODES:
        raise InputError(f"{name} must be one of {', '.join(SWITCH_MODES)} or a bool, "
                         f"got {value!r}")
    return value


def register_mode(register) -> str:
    """``register`` of :func:`upscale` as one of :data:`REGISTER_MODES` for a 2D model."""
    return switch_mode(register, "register")


def calibrate_applies(calibrate, two_d_without_reference: bool) -> bool:
    """Whether :func:`upscale` fits and applies the detail gain: ``"on"``/``True`` always,
    ``"off"``/``False`` never; ``"auto"`` (the default) for a 2D model run without a reference,
    where it raised brain-mask PSNR at x2 on every whole-volume test set (+0.11 dB brats,
    +0.22 dB a whole head, +0.17 dB the phantom, 0 on IXI), but not with one, where it cost
    0.39 dB in-domain (docs/BENCHMARKS.md, "The detail gain")."""
    mode = switch_mode(calibrate, "calibrate")
    return mode == "on" or (mode == "auto" and two_d_without_reference)


def adapt_steps(adapt, registration: Optional[dict], two_d_with_reference: bool) -> int:
    """Steps of test-time adaptation: ``adapt`` itself when it is a number; ``"auto"`` (the
    default): :data:`~mrisr.training.adapt.DEFAULT_ADAPT_STEPS` for a 2D model whose reference
    had to be moved by the registration (a reference from another series: on ixi002 the
    adaptation then added +0.23 / +0.17 / +0.61 dB at x2 / x4 / x8, docs/BENCHMARKS.md), else 0
    (on co-registered in-domain data it cost up to 1.3 dB)."""
    if adapt != "auto":
        return int(adapt)
    from mrisr.training.adapt import DEFAULT_ADAPT_STEPS

    moved = bool(registration and registration.get("applied"))
    return DEFAULT_ADAPT_STEPS if two_d_with_reference and moved else 0


def register_flag_3d(register) -> Optional[bool]:
    """``register`` for a 3D model's T1w placement: ``None``/``"auto"`` (as the model was
    trained), else on or off."""
    mode = register_mode(register)
    return None if mode == "auto" else mode == "on"


def foreground_corners(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates ``(4, 8)`` (homogeneous, mm) of the corners of the bounding box of
    ``image``'s foreground (above a tenth of its 99th percentile; the whole grid if empty)."""
    magnitude = np.abs(image)
    peak = float(np.percentile(magnitude, 99)) if magnitude.size else 0.0
    idx = np.argwhere(magnitude > 0.1 * peak) if peak > 0 else np.empty((0, 3), int)
    lo, hi = ((idx.min(0), idx.max(0)) if len(idx)
              else (np.zeros(3, int), np.asarray(magnitude.shape[:3]) - 1))
    corners = np.array([[a[0], b[1], c[2], 1.0] for a in (lo, hi) for b in (lo, hi)
                        for c in (lo, hi)], dtype=np.float64).T
    return np.asarray(affine, dtype=np.float64) @ corners


def register_reference(reference: Volume, static: np.ndarray, static_affine: np.ndarray,
                       mode: str = "on") -> tuple[Volume, dict]:
    """``reference`` with its affine corrected by a rigid mutual-information registration to
    ``static`` (the input on its grid ``static_affine``; :func:`mrisr.data.dwi.register_rigid`),
    and a description of the correction: the rigid map from the input's world to the place the
    reference's header gives the same anatomy (``translation_mm``, ``rotation_deg``), how far it
    moves the corners of the input's foreground (``moves_mm``) and whether it was ``applied``.

    ``mode`` ``auto`` applies it only when it moves the foreground by more than one voxel of
    the reference (its largest voxel size, ``threshold_mm``): the shipped models were trained
    with the reference shifted by up to about one of its voxels, and on co-registered data the
    estimate from a low-resolution input wanders by 0.2-0.5 mm, which costs more than it
    corrects (docs/BENCHMARKS.md, "Registration")."""
    from mrisr.data.dwi import register_rigid

    static = np.abs(static).astype(np.float32)
    if mode == "auto":
        try:
            import dipy.align  # noqa: F401
        except ImportError:
            return reference, {"mode": mode, "applied": False,
                               "reason": "dipy not installed (pip install dipy)"}
    try:
        # A reference without overlap or contrast on the input's grid gives dipy 0/0.
        with np.errstate(invalid="ignore", divide="ignore"):
            transform = register_rigid(reference, static, static_affine, match_acquisition=True)
    except (ValueError, np.linalg.LinAlgError):
        transform = np.full((4, 4), np.nan)
    if not np.isfinite(transform).all():
        if mode == "on":
            raise InputError(f"{reference.path}: registration to the input failed (no overlap "
                             "or no contrast on the input's grid); try --no-register")
        return reference, {"mode": mode, "applied": False,
                           "reason": "registration failed (no overlap or no contrast)"}
    corners = foreground_corners(static, static_affine)
    moves = float(np.linalg.norm((transform - np.eye(4)) @ corners, axis=0).max())
    threshold = float(voxel_sizes(reference.affine).max())
    applied = mode == "on" or moves > threshold
    cos = float(np.clip((np.trace(transform[:3, :3]) - 1) / 2, -1.0, 1.0))
    info = {"mode": mode, "translation_mm": [round(float(t), 3) for t in transform[:3, 3]],
            "rotation_deg": round(float(np.degrees(np.arccos(cos))), 3),
            "moves_mm": round(moves, 3), "threshold_mm": round(threshold, 3),
            "applied": bool(applied)}
    if not applied:
        return reference, info
    # Reading the reference at transform @ p is reading it through inv(T) @ its affine.
    moved = Volume(reference.data, np.linalg.solve(transform, reference.affine),
                   reference.header, reference.path)
    return moved, info


def upscale(target: Volume, reference: Optional[Volume] = None, *, scale=None, voxel_size=None,
            shape=None, model: Optional[str] = None, device: str = "auto",
            plane: Optional[str] = None, tile: Optional[int] = DEFAULT_TILE, amp: bool = False,
            out: Optional[np.ndarray] = None, progress: Optional[Callable[[int], None]] = None,
            loaded_model=None, consistency: str = DEFAULT_CONSISTENCY,
            adapt="auto", register=None, calibrate="auto") -> UpscaleResult:
    """Super-resolve a 3D :class:`Volume` (see the module docstring for the conventions).

    ``consistency``: the data-consistency projection applied to the whole output of a 2D
    model (after any cubic remainder along the slice axis) with the input volume, one of
    ``auto``, ``none``, ``kspace``, ``slice_box``, ``slice_gaussian``
    (:mod:`mrisr.degradation.consistency`); recorded in ``info["consistency"]``. Not applied
    to 3D models.

    ``adapt``: fine-tune a copy of the model for that many steps on pairs made from the input
    itself before upscaling (:mod:`mrisr.training.adapt`); the adapted model is returned in
    ``adapted_model`` and described in ``info["adapt"]``. ``"auto"`` (the default):
    :func:`adapt_steps` (a 2D model whose reference the registration moved, else none).

    ``calibrate``: scale the detail a model adds by a gain in [0, 1] fitted on the input
    degraded once more (:mod:`mrisr.inference.calibration`): a 2D model's detail beyond the
    measured band after the k-space projection, a 3D model's correction to cubic
    interpolation; recorded in ``info["detail_gain"]``. ``True``/``"on"``, ``False``/``"off"``
    or ``"auto"`` (the default: :func:`calibrate_applies`, 2D models without a reference).

    ``register``: refine the header alignment of ``reference`` with a rigid mutual-information
    registration to the input (:func:`register_reference`, needs dipy) before it is resampled.
    2D models: ``True``/``"on"``, ``False``/``"off"`` or ``None``/``"auto"`` (registered, and
    the correction applied only when it moves the input's foreground by more than one reference
    voxel; without dipy the headers are kept). 3D models: a bool, ``None`` as the model was
    trained. Recorded in ``info["reference"]["registration"]``.
    """
    from mrisr.devices import select_device
    from mrisr.resample import resample_to_grid

    check_consistency(consistency)
    if target.data.ndim != 3:
        raise InputError(f"{target.path}: upscale() takes a 3D volume; use upscale_file for 4D")
    out_shape, out_affine = output_grid(target.spatial_shape, target.affine, scale, voxel_size,
                                        shape)
    zooms = voxel_sizes(target.affine)
    axis = choose_slice_axis(target.spatial_shape, out_shape, zooms, plane)
    net, desc = loaded_model or load_upscale_model(
        model, reference is not None, thick=is_thick_slice(target.spatial_shape, out_shape))
    check_adaptable(net, adapt)
    # -- interpolation baselines: the whole volume onto the output grid ---------------------
    if isinstance(net, VolumeInterpolation):
        t0 = time.perf_counter()
        data = net(target.data, out_shape, out)
        if progress:
            progress(target.spatial_shape[axis])
        info = {**grid_info(desc, target.spatial_shape, target.affine, out_shape, out_affine),
                "seconds": round(time.perf_counter() - t0, 3),
                "consistency": {"requested": consistency, "model": "none",
                                "reason": "not applied to interpolation baselines"}}
        if switch_mode(calibrate, "calibrate") == "on":
            info["detail_gain"] = {"gain": 1.0, "reason": "not for interpolation baselines"}
        return UpscaleResult(data=data, affine=out_affine, info=info)
    # -- 3D models: the whole volume at once (mrisr.inference.volume3d) ---------------------
    if is_volume_model(net):
        adapt = adapt_steps(adapt, None, False)
        runner = SeriesUpscaler3D(target, reference, (net, desc), out_shape, out_affine,
                                  device=device, amp=amp,
                                  register=register_flag_3d(register))
        if adapt:
            runner.adapt(adapt, progress)
        if calibrate_applies(calibrate, False):
            runner.calibrate()
        result = runner.upscale(0, out, progress)
        result.info["consistency"] = consistency_not_applied(consistency)
        if adapt:
            result.adapted_model = (runner.upscaler.model, runner.desc)
        return result
    # -- 2D models: slice by slice ----------------------------------------------------------
    dev = select_device(device)
    upscaler = SliceUpscaler(net, dev, desc["input"], tile, amp)
    info = {**grid_info(desc, target.spatial_shape, target.affine, out_shape, out_affine),
            "slice_axis": axis}
    ref_grid = None
    if reference is not None and upscaler.uses_reference:
        registration = None
        mode = register_mode(register)
        if mode != "off":
            reference, registration = register_reference(reference, target.data,
                                                         target.affine, mode)
        ref_shape, ref_affine = reference_grid(target, reference, axis)
        ref_grid, inside = resample_to_grid(reference.data, reference.affine, ref_affine,
                                            ref_shape, name=str(reference.path))
        covered = inside.any(axis=tuple(a for a in range(3) if a != axis))
        info["reference"] = {"path": str(reference.path), "grid_shape": list(ref_shape),
                             "voxel_size": [float(z) for z in voxel_sizes(ref_affine)],
                             "covered_fraction": float(inside.mean()),
                             "slices_without_reference": int((~covered).sum())}
        if registration is not None:
            info["reference"]["registration"] = registration
    adapted = None
    adapt = adapt_steps(adapt, info.get("reference", {}).get("registration"),
                        upscaler.uses_reference and ref_grid is not None)
    if adapt:
        adapted, info["adapt"] = adapt_to_input(net, desc, target, ref_grid, out_shape, axis,
                                                adapt, dev, progress)
        upscaler = SliceUpscaler(adapted[0], dev, desc["input"], tile, amp)
    t0 = time.perf_counter()
    data = upscaler.upscale(target.data, out_shape, axis, ref_grid, out, progress)
    info["consistency"] = apply_consistency(data, target.data, consistency)
    calibrate = calibrate_applies(calibrate, ref_grid is None)
    if calibrate and info["consistency"].get("model") == "kspace":
        from mrisr.inference.calibration import apply_detail_gain, detail_gain

        info["detail_gain"] = detail_gain(upscaler, target.data, out_shape, axis, ref_grid)
        apply_detail_gain(data, target.data, info["detail_gain"]["gain"], axis)
    elif calibrate:
        info["detail_gain"] = {"gain": 1.0, "reason": "needs the in-plane k-space projection"}
    info["seconds"] = round(time.perf_counter() - t0, 3)
    return UpscaleResult(data=data, affine=out_affine, info=info, adapted_model=adapted)


def check_adaptable(net, adapt) -> None:
    if adapt == "auto":
        return
    if isinstance(adapt, bool) or not isinstance(adapt, (int, np.integer)):
        raise InputError(f"--adapt must be a number of steps >= 0 or 'auto', got {adapt!r}")
    if adapt < 0:
        raise InputError(f"--adapt must be a number of steps >= 0, got {adapt}")
    if adapt and isinstance(net, VolumeInterpolation):
        raise InputError("--adapt fine-tunes 2D models and 3D models, not interpolations; "
                         f"the chosen model is '{net.name}'")


def adapt_to_input(net, desc: dict, target: Volume, ref_grid: Optional[np.ndarray],
                   out_shape: Sequence[int], axis: int, steps: int, device: torch.device,
                   progress: Optional[Callable[[int], None]] = None) -> tuple[tuple, dict]:
    """Test-time adaptation of a 2D model to ``target`` (:func:`mrisr.training.adapt.
    adapt_model`); the reference (on :func:`reference_grid`) is brought to the input's
    resolution with an anti-aliasing filter. Returns the adapted ``(model, description)`` and
    the sidecar entry."""
    from mrisr.training.adapt import adapt_model

    ref_lr = None
    if ref_grid is not None:
        ref_lr = spline_resize(ref_grid, target.spatial_shape, order=3, antialias=True)
    factors = [o / i for i, o in zip(target.spatial_shape, out_shape)]
    with torch.enable_grad():
        result = adapt_model(net, target.data, factors, axis, ref_lr, steps, device=device,
                             progress=progress)
    return (result.model, {**desc, "adapted_steps": steps}), result.describe()


def consistency_not_applied(model: str) -> dict:
    """Sidecar entry of the 3D-model path, which has no consistency projection."""
    return {"requested": model, "model": "none", "reason": "not applied to 3D models"}


def sidecar_path(out_path: Path) -> Path:
    name = out_path.name
    stem = name[:-7] if name.endswith(".nii.gz") else name[:-4] if name.endswith(".nii") else name
    return out_path.with_name(stem + ".json")


def upscale_file(target_path: str | os.PathLike, out_path: str | os.PathLike,
                 reference_path: Optional[str | os.PathLike] = None, *, overwrite: bool = False,
                 **kwargs) -> nib.Nifti1Image:
    """Upscale a NIfTI file (3D, or 4D volume by volume) into ``out_path`` atomically, with a
    JSON sidecar; bval/bvec files beside a 4D input are copied. Returns the output image
    (data read lazily from the written file). Keyword arguments: ``memmap``, ``progress``,
    ``on_start``, ``loaded_model`` and those of :func:`upscale`.

    While it runs the output is locked (``.NAME.mrisr-lock`` beside it): a second run writing
    the same output fails at once, and without ``overwrite`` the result never replaces a file
    that appeared meanwhile. A failed write (full disk, ...) raises :class:`InputError`; the
    temporary files are removed whatever happens (exception, Ctrl-C, SIGTERM in the CLI).
    """
    from mrisr.io.atomic import check_output_path, output_lock

    out = Path(out_path)
    check_output_path(out, overwrite=overwrite, inputs=(target_path, reference_path))
    try:
        with output_lock(out):
            return _upscale_file(target_path, out, reference_path, overwrite=overwrite,
                                 **kwargs)
    except OSError as exc:
        raise InputError(f"{exc.filename or out}: {exc.strerror or exc}") from None


def _upscale_file(target_path: str | os.PathLike, out_path: str | os.PathLike,
                  reference_path: Optional[str | os.PathLike] = None, *, overwrite: bool = False,
                  memmap: bool = False, progress: Optional[Callable[[int], None]] = None,
                  on_start: Optional[Callable[[int], None]] = None, loaded_model=None,
                  **options) -> nib.Nifti1Image:
    """:func:`upscale_file`'s work, run while it holds the output lock."""
    from mrisr.io.atomic import (atomic_path, check_output_path, reserve_space, scratch_prefix,
                                 write_text_atomic)
    from mrisr.io.dwi import companion_paths
    from mrisr.io.nifti import is_nifti_path
    from mrisr.inference.streaming import StreamingNiftiWriter

    out = Path(out_path)
    if not is_nifti_path(out):
        raise InputError(f"{out}: output must end in .nii or .nii.gz")
    check_output_path(out, overwrite=overwrite, inputs=(target_path, reference_path))
    check_consistency(options.get("consistency", DEFAULT_CONSISTENCY))
    sidecar = sidecar_path(out)
    target = load_nifti(target_path, ndim=(3, 4))
    reference = load_nifti(reference_path) if reference_path is not None else None
    series = target.data.ndim == 4
    if series and not companion_paths(target_path)[0].exists():
        warnings.warn(MrisrWarning(
            f"{target_path}: 4D series without {companion_paths(target_path)[0].name} beside "
            "it: b-values unknown, so no volume is treated as b=0 and no .bval/.bvec is "
            "written"), stacklevel=3)
    n_vol = target.data.shape[3] if series else 1
    shape3 = target.spatial_shape
    out_shape, out_affine = output_grid(shape3, target.affine, options.get("scale"),
                                        options.get("voxel_size"), options.get("shape"))
    check_resources(out, out_shape, n_vol, memmap)
    options = dict(options)
    register = options.pop("register", None)
    model_pack = loaded_model or load_upscale_model(options.pop("model", None),
                                                    reference is not None, series,
                                                    thick=is_thick_slice(shape3, out_shape))
    options.setdefault("adapt", "auto")
    check_adaptable(model_pack[0], options["adapt"])
    if "note" in model_pack[1]:
        warnings.warn(MrisrWarning(f"{target_path}: {model_pack[1]['note']}"), stacklevel=3)
    elif reference is not None and isinstance(model_pack[0], VolumeInterpolation):
        warnings.warn(MrisrWarning(f"{reference_path}: not used by the interpolation baseline "
                                   f"'{model_pack[0].name}'"), stacklevel=3)
    # -- 3D models: the series is prepared once (b=0 normalisation from the .bval beside the
    # input, brain mask, T1w on the output grid), then each volume is upscaled whole.
    series3d = None
    if is_volume_model(model_pack[0]):
        series3d = SeriesUpscaler3D(target, reference, model_pack, out_shape, out_affine,
                                    read_series_bvals(target_path, n_vol) if series else None,
                                    device=options.get("device", "auto"),
                                    amp=options.get("amp", False),
                                    register=register_flag_3d(register))
    if series3d is not None and options["adapt"] == "auto":
        options["adapt"] = 0  # 3D models adapt only when asked
    if series3d is not None and options["adapt"]:
        # One copy of the model fine-tuned on the whole series, then every volume upscaled.
        if on_start:
            on_start(n_vol * series3d.units_per_volume + options["adapt"])
            on_start = None
        series3d.adapt(options["adapt"], progress)
    if series3d is not None and calibrate_applies(options.get("calibrate", "auto"), False):
        series3d.calibrate()
    registration = None
    if series3d is None and reference is not None and model_pack[0].uses_reference and \
            register_mode(register) != "off":
        # 2D models: the reference is registered once, to the mean of the series' volumes.
        static = target.data.mean(axis=3) if series else target.data
        reference, registration = register_reference(reference, static, target.affine,
                                                     register_mode(register))
    options["register"] = "off"  # 2D models: done above, once for the whole file
    options["adapt"] = adapt_steps(options.get("adapt", "auto"), registration,
                                   series3d is None and registration is not None)
    if on_start and series3d is not None:
        on_start(n_vol * series3d.units_per_volume)
    elif on_start:
        axis = choose_slice_axis(shape3, out_shape, voxel_sizes(target.affine),
                                 options.get("plane"))
        on_start(n_vol * shape3[axis] + options.get("adapt", 0))
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=scratch_prefix()) as scratch:
        buffer = np.lib.format.open_memmap(Path(scratch) / "out.npy", mode="w+",
                                           dtype=np.float32, shape=out_shape) if memmap else None
        if buffer is not None:
            reserve_space(buffer.filename)  # a full disk: an error now, not a crash later
        with atomic_path(out, replace=overwrite) as tmp:
            writer = None
            adapt_info = None
            for v in range(n_vol):
                if series3d is not None:
                    result = series3d.upscale(v, out=buffer, progress=progress)
                else:
                    vol = Volume(target.data[..., v] if series else target.data,
                                 target.affine, target.header, target.path)
                    result = upscale(vol, reference, out=buffer, progress=progress,
                                     loaded_model=model_pack, **options)
                    if result.adapted_model is not None:
                        # A series is adapted once, on its first volume.
                        model_pack, options["adapt"] = result.adapted_model, 0
                        adapt_info = result.info["adapt"]
                if writer is None:
                    writer = StreamingNiftiWriter(tmp, out_shape + ((n_vol,) if series else ()),
                                                  result.affine, target.header)
                writer.write_volume(result.data)
            writer.close()
        info = {**result.info, "input": str(target_path), "output": str(out),
                "volumes": n_vol}
        if adapt_info is not None:
            info["adapt"] = adapt_info
        if registration is not None and "reference" in info:
            info["reference"]["registration"] = registration
        if series3d is not None:
            info["consistency"] = consistency_not_applied(
                options.get("consistency", DEFAULT_CONSISTENCY))
        write_text_atomic(sidecar, json.dumps(info, indent=1))
    if series:
        bval, bvec = companion_paths(target_path)
        out_bval, out_bvec = companion_paths(out)
        for src, dst in ((bval, out_bval), (bvec, out_bvec)):
            if src.exists():
                with atomic_path(dst) as tmp:
                    shutil.copyfile(src, tmp)
    return nib.load(str(out))
