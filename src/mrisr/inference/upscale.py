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
4D series are processed volume by volume and streamed to disk as they finish (with the
tensor-consistency step for a model, held until every shell is done:
:mod:`mrisr.inference.anisotropy`).

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
from mrisr.inference.anisotropy import cubic_base, remove_anisotropic_detail
from mrisr.inference.coarsen import reduce_to_output
from mrisr.inference.decisions import (SYNTHETIC_REFERENCES_REASON, Decision, Decisions,
                                       adaptation_outcome,
                                       calibrate_applies, consistency_decision,
                                       decide_adaptation, decide_calibration, decide_model,
                                       decide_reference_transfer, reference_transfer_outcome,
                                       reference_transfer_weight,
                                       decide_series_tensor_consistency,
                                       tensor_consistency_weight,
                                       is_thick_slice, reference_check_applies,
                                       register_flag_3d, register_mode, register_reference,
                                       switch_mode)
from mrisr.inference.predict import predict_slices
from mrisr.inference.reference_transfer import transfer_reference_detail
from mrisr.inference.result import QC_SUFFIX, UpscaleResult, grid_info, written_companions
from mrisr.inference.selection import (DEFAULT_DMRI_MODEL, DEFAULT_DMRI_MODEL_NO_T1,
                                       INTERPOLATION_MODELS, REFERENCE_CHECK_MODEL,
                                       VolumeInterpolation, default_model_name, is_series_file,
                                       load_upscale_model)
from mrisr.inference.volume3d import SeriesUpscaler3D, is_volume_model
from mrisr.io.nifti import NIFTI1_MAX_DIM, Volume, load_nifti
from mrisr.models.base import SRModel
from mrisr.precision import resolve_precision

__all__ = ["PLANES", "DEFAULT_TILE", "DEFAULT_SLICE_BATCH", "DEFAULT_CONSISTENCY", "output_grid",
           "choose_slice_axis", "reference_grid", "estimate_bytes", "available_memory",
           "check_resources", "SliceUpscaler", "check_consistency", "apply_consistency",
           "upscale", "check_adaptable", "adapt_to_input", "consistency_not_applied",
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
            raise InputError(f"--shape must be three positive integers, e.g. --shape "
                             f"480,480,155; got {out_shape}")
    if max(new) > NIFTI1_MAX_DIM:
        raise InputError(f"output shape {new}: NIfTI-1 holds at most {NIFTI1_MAX_DIM} voxels "
                         "along an axis; ask for a smaller scale or shape")
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
                    memmap: bool, scratch_volumes: int = 0) -> None:
    """Refuse, before any work, an output that would not fit in memory or on disk (with
    ``memmap``, one output volume also lives in a scratch file beside the output; and
    ``scratch_volumes`` more, for steps that need the whole series)."""
    from mrisr.io.atomic import format_size

    one = estimate_bytes(out_shape)
    total = one * (n_volumes + scratch_volumes) + (one if memmap else 0)
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
                 tile: Optional[int] = DEFAULT_TILE, precision: str = "auto",
                 batch: int = DEFAULT_SLICE_BATCH):
        self.model = model.eval().to(device)
        self.device = device
        self.input_kind = input_kind
        self.tile = tile
        #: ``fp32`` or ``bf16`` (``precision`` resolved for ``device``, :mod:`mrisr.precision`)
        self.precision = resolve_precision(precision, device)
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
            outs = predict_slices(self.model, [lrs[k] for k in todo], out_shape,
                                  [refs[k] for k in todo] if self.uses_reference else None,
                                  self.input_kind, self.device, self.tile, self.precision)
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


def upscale(target: Volume, reference: Optional[Volume] = None, *, scale=None, voxel_size=None,
            shape=None, model: Optional[str] = None, device: str = "auto",
            plane: Optional[str] = None, tile: Optional[int] = DEFAULT_TILE,
            precision: str = "auto", out: Optional[np.ndarray] = None,
            progress: Optional[Callable[[int], None]] = None,
            loaded_model=None, consistency: str = DEFAULT_CONSISTENCY,
            adapt="auto", register=None, calibrate="auto",
            reference_transfer="auto") -> UpscaleResult:
    """Super-resolve a 3D :class:`Volume` (see the module docstring for the conventions).

    ``precision``: ``auto``, ``fp32`` or ``bf16``, the arithmetic of the network
    (:mod:`mrisr.precision`; interpolation, registration, the projection and calibration stay
    float32); recorded in ``info["precision"]``.

    ``consistency``: the data-consistency projection applied to the whole output of a 2D
    model (after any cubic remainder along the slice axis) with the input volume, one of
    ``auto``, ``none``, ``kspace``, ``slice_box``, ``slice_gaussian``
    (:mod:`mrisr.degradation.consistency`); recorded in ``info["consistency"]``. Not applied
    to 3D models.

    ``adapt``: fine-tune a copy of the model for up to that many steps on pairs made from the
    input itself before upscaling (:mod:`mrisr.training.adapt`), used only when it beats the
    model on held-out pairs; the model used is returned in ``adapted_model`` and the run
    described in ``info["adapt"]``. ``"auto"`` (the default):
    :func:`~mrisr.inference.decisions.decide_adaptation` (an in-plane job of a 2D model whose
    reference the registration moved, else none).

    ``calibrate``: scale the detail a model adds by a gain in [0, 1] fitted on the input
    degraded once more (:mod:`mrisr.inference.calibration`): a 2D model's detail beyond the
    measured band after the k-space projection, a 3D model's correction to cubic
    interpolation; recorded in ``info["detail_gain"]``. ``True``/``"on"``, ``False``/``"off"``
    or ``"auto"`` (the default: :func:`~mrisr.inference.decisions.calibrate_applies`, 2D
    models without a reference).

    ``register``: refine the header alignment of ``reference`` with a rigid mutual-information
    registration to the input (:func:`~mrisr.inference.decisions.register_reference`, needs
    dipy) before it is resampled. 2D models: ``True``/``"on"``, ``False``/``"off"`` or
    ``None``/``"auto"`` (registered, and the correction applied only when the evidence says the
    header placement is off: :func:`~mrisr.inference.decisions.registration_rule`; without dipy
    the headers are kept). 3D models: a bool, ``None`` as the model was trained. Recorded in
    ``info["reference"]["registration"]``.

    ``reference_transfer``: move a 2D model's output (in-plane or thick-slice jobs) towards the
    reference's detail where a local linear fit on what the input measured says the two
    contrasts match (:mod:`mrisr.inference.reference_transfer`), then project again: ``auto``
    (the default: :func:`~mrisr.inference.decisions.decide_reference_transfer`), ``on``,
    ``off`` or a weight in [0, 1]; recorded in ``info["reference_transfer"]``.

    Every decision taken (model, registration, adaptation, calibration, projection, reference
    transfer) is recorded with its evidence in ``info["decisions"]``
    (:mod:`mrisr.inference.decisions`).
    """
    from mrisr.devices import select_device
    from mrisr.resample import resample_to_grid

    check_consistency(consistency)
    reference_transfer_weight(reference_transfer)
    if target.data.ndim != 3:
        raise InputError(f"{target.path}: upscale() takes a 3D volume; use upscale_file for 4D")
    out_shape, out_affine = output_grid(target.spatial_shape, target.affine, scale, voxel_size,
                                        shape)
    # Axes the output samples more coarsely: reduced first, so that the model runs at the
    # output's resolution there and every later step sees factors >= 1.
    source = target
    target, reduced = reduce_to_output(target, out_shape)
    zooms = voxel_sizes(target.affine)
    axis = choose_slice_axis(target.spatial_shape, out_shape, zooms, plane)
    net, desc = loaded_model or load_upscale_model(model, reference is not None)
    decisions = Decisions(model=decide_model(model, reference is not None, False,
                                             target.spatial_shape, out_shape)
                          if loaded_model is None else
                          Decision(str(desc.get("model")), "given (a loaded model)"))
    check_adaptable(net, adapt)
    # -- interpolation baselines: the whole volume onto the output grid ---------------------
    if isinstance(net, VolumeInterpolation):
        t0 = time.perf_counter()
        data = net(target.data, out_shape, out)
        if progress:
            progress(target.spatial_shape[axis])
        info = {**grid_info(desc, source.spatial_shape, source.affine, out_shape, out_affine,
                          reduced),
                "seconds": round(time.perf_counter() - t0, 3),
                "consistency": {"requested": consistency, "model": "none",
                                "reason": "not applied to interpolation baselines"}}
        if switch_mode(calibrate, "calibrate") == "on":
            info["detail_gain"] = {"gain": 1.0, "reason": "not for interpolation baselines"}
        decisions.consistency = consistency_decision(info["consistency"])
        info["decisions"] = decisions.as_dict()
        return UpscaleResult(data=data, affine=out_affine, info=info)
    # -- 3D models: the whole volume at once (mrisr.inference.volume3d) ---------------------
    if is_volume_model(net):
        asked = decide_adaptation(adapt, None, False)
        runner = SeriesUpscaler3D(target, reference, (net, desc), out_shape, out_affine,
                                  device=device, precision=precision,
                                  register=register_flag_3d(register))
        decisions.adaptation = asked
        if asked.evidence["steps"]:
            decisions.adaptation = adaptation_outcome(
                asked, runner.adapt(asked.evidence["steps"], progress))
        if calibrate_applies(calibrate, False):
            runner.calibrate()
        decisions.calibration = decide_calibration(calibrate, False,
                                                   runner.info.get("detail_gain"))
        result = runner.upscale(0, out, progress)
        result.info["consistency"] = consistency_not_applied(consistency)
        decisions.consistency = consistency_decision(result.info["consistency"])
        result.info["decisions"] = decisions.as_dict()
        if asked.evidence["steps"]:
            result.adapted_model = (runner.upscaler.model, runner.desc)
        return result
    # -- 2D models: slice by slice ----------------------------------------------------------
    dev = select_device(device)
    upscaler = SliceUpscaler(net, dev, desc["input"], tile, precision)
    info = {**grid_info(desc, source.spatial_shape, source.affine, out_shape, out_affine,
                          reduced),
            "slice_axis": axis, "precision": upscaler.precision}
    ref_grid = None
    if reference is not None and upscaler.uses_reference:
        mode = register_mode(register)
        if mode != "off":
            reference, decisions.registration = register_reference(
                reference, target.data, target.affine, mode)
        ref_shape, ref_affine = reference_grid(target, reference, axis)
        ref_grid, inside = resample_to_grid(reference.data, reference.affine, ref_affine,
                                            ref_shape, name=str(reference.path))
        covered = inside.any(axis=tuple(a for a in range(3) if a != axis))
        info["reference"] = {"path": str(reference.path), "grid_shape": list(ref_shape),
                             "voxel_size": [float(z) for z in voxel_sizes(ref_affine)],
                             "covered_fraction": float(inside.mean()),
                             "slices_without_reference": int((~covered).sum())}
        if decisions.registration is not None:
            info["reference"]["registration"] = {**decisions.registration.evidence,
                                                 "reason": decisions.registration.reason}
    adapted = None
    decisions.adaptation = decide_adaptation(adapt, decisions.registration,
                                             upscaler.uses_reference and ref_grid is not None,
                                             is_thick_slice(target.spatial_shape, out_shape))
    if decisions.adaptation.evidence["steps"]:
        adapted, info["adapt"] = adapt_to_input(net, desc, target, ref_grid, out_shape, axis,
                                                decisions.adaptation.evidence["steps"], dev,
                                                progress)
        decisions.adaptation = adaptation_outcome(decisions.adaptation, info["adapt"])
        upscaler = SliceUpscaler(adapted[0], dev, desc["input"], tile, precision)
    t0 = time.perf_counter()
    data = upscaler.upscale(target.data, out_shape, axis, ref_grid, out, progress)
    info["consistency"] = apply_consistency(data, target.data, consistency)
    decisions.consistency = consistency_decision(info["consistency"])
    calibrates = calibrate_applies(calibrate, ref_grid is None)
    synthetic = bool(desc.get("synthetic_references"))
    checks = reference_check_applies(calibrate, ref_grid is not None, synthetic)
    if (calibrates or checks) and info["consistency"].get("model") == "kspace":
        from mrisr.inference.calibration import apply_detail_gain, detail_gain, reference_check

        if calibrates:
            info["detail_gain"] = detail_gain(upscaler, target.data, out_shape, axis, ref_grid)
        else:
            plain_net, plain_desc = load_upscale_model(REFERENCE_CHECK_MODEL, False)
            plain = SliceUpscaler(plain_net, dev, plain_desc["input"], tile, precision)
            checked = reference_check(plain, ref_grid, target.spatial_shape, out_shape, axis)
            info["detail_gain"] = {"check": "reference", "model": REFERENCE_CHECK_MODEL,
                                   **checked}
        apply_detail_gain(data, target.data, info["detail_gain"]["gain"], axis)
    elif calibrates or checks:
        info["detail_gain"] = {**({"check": "reference"} if checks else {}), "gain": 1.0,
                               "reason": "needs the in-plane k-space projection"}
    skipped = None
    if ref_grid is not None and synthetic:
        skipped = SYNTHETIC_REFERENCES_REASON if info["consistency"].get("model") == "kspace" \
            else "auto: the reference check needs the in-plane k-space projection"
    decisions.calibration = decide_calibration(calibrate, ref_grid is None,
                                               info.get("detail_gain"), skipped)
    decisions.reference_transfer = decide_reference_transfer(
        reference_transfer, ref_grid is not None, info["consistency"].get("model"),
        max(o / n for o, n in zip(out_shape, target.spatial_shape)))
    if decisions.reference_transfer.choice != "none":
        info["reference_transfer"] = transfer_reference_detail(
            data, target.data, ref_grid, axis, float(decisions.reference_transfer.choice),
            info["consistency"]["model"])
        decisions.reference_transfer = reference_transfer_outcome(
            decisions.reference_transfer, info["reference_transfer"])
    info["decisions"] = decisions.as_dict()
    info["seconds"] = round(time.perf_counter() - t0, 3)
    return UpscaleResult(data=data, affine=out_affine, info=info, adapted_model=adapted)


def check_adaptable(net, adapt) -> None:
    if adapt == "auto":
        return
    if isinstance(adapt, bool) or not isinstance(adapt, (int, np.integer)):
        raise InputError(f"--adapt must be a number of steps >= 0 (e.g. --adapt 40; 0: never) "
                         f"or 'auto', got {adapt!r}")
    if adapt < 0:
        raise InputError(f"--adapt must be a number of steps >= 0 (e.g. --adapt 40; 0: "
                         f"never), got {adapt}")
    if adapt and isinstance(net, VolumeInterpolation):
        raise InputError("--adapt fine-tunes 2D models and 3D models, not interpolations; "
                         f"the chosen model is '{net.name}': drop --adapt, or choose a trained "
                         "model with --model")


def adapt_to_input(net, desc: dict, target: Volume, ref_grid: Optional[np.ndarray],
                   out_shape: Sequence[int], axis: int, steps: int, device: torch.device,
                   progress: Optional[Callable[[int], None]] = None) -> tuple[tuple, dict]:
    """Test-time adaptation of a 2D model to ``target`` (:func:`mrisr.training.adapt.
    adapt_model`); the reference (on :func:`reference_grid`) is brought to the input's
    resolution with an anti-aliasing filter. Returns the ``(model, description)`` to upscale
    with (the fine-tuned copy, or ``net`` itself when the copy did not beat it on held-out
    pairs) and the sidecar entry."""
    from mrisr.training.adapt import adapt_model

    ref_lr = None
    if ref_grid is not None:
        ref_lr = spline_resize(ref_grid, target.spatial_shape, order=3, antialias=True)
    factors = [o / i for i, o in zip(target.spatial_shape, out_shape)]
    with torch.enable_grad():
        result = adapt_model(net, target.data, factors, axis, ref_lr, steps, device=device,
                             progress=progress)
    return (result.model, {**desc, "adapted_steps": result.best_step}), result.describe()


def consistency_not_applied(model: str) -> dict:
    """Sidecar entry of the 3D-model path, which has no consistency projection."""
    return {"requested": model, "model": "none", "reason": "not applied to 3D models"}


def sidecar_path(out_path: Path) -> Path:
    """The JSON sidecar of an output: its name with ``.json`` for the NIfTI extension."""
    from mrisr.io.nifti import companion_path

    return companion_path(out_path, ".json")


def upscale_file(target_path: str | os.PathLike, out_path: str | os.PathLike,
                 reference_path: Optional[str | os.PathLike] = None, *, overwrite: bool = False,
                 **kwargs) -> nib.Nifti1Image:
    """Upscale a NIfTI file (3D, or 4D volume by volume) into ``out_path`` atomically, with a
    JSON sidecar; bval/bvec files beside a 4D input are copied. Returns the output image
    (data read lazily from the written file). Keyword arguments: ``memmap``, ``progress``,
    ``on_start``, ``loaded_model``, ``qc`` (also write ``<output>_qc.png``:
    :mod:`mrisr.inference.qc`), ``sidecar_extra`` (entries added to the sidecar),
    ``tensor_consistency`` (a diffusion series upscaled by a model: ``auto``, ``off``, ``on``
    or the weight in ``[0, 1]`` of the anisotropic part of the model's detail taken out,
    :mod:`mrisr.inference.anisotropy`; :func:`~mrisr.inference.decisions.
    decide_tensor_consistency` says when ``auto`` does it) and those of :func:`upscale`.

    The sidecar and the copied b-tables are outputs like the image
    (:func:`~mrisr.inference.result.written_companions`): checked before any work, refused when
    they exist (without ``overwrite``) or would be an input's, and renamed into place together
    with the image. While it runs the output and these files are locked
    (``.NAME.mrisr-lock`` beside each): a second run writing any of them fails at once, and
    without ``overwrite`` the result never replaces a file that appeared meanwhile. A failed
    write (full disk, ...) raises :class:`InputError`; the temporary files are removed whatever
    happens (exception, Ctrl-C, SIGTERM in the CLI).
    """
    from mrisr.io.atomic import output_locks
    from mrisr.io.nifti import check_nifti_header, check_output_files

    out = Path(out_path)
    shape = check_nifti_header(target_path)
    companions = check_output_files(out, written_companions(
        target_path, shape[3] if len(shape) > 3 else 1, bool(kwargs.get("qc"))),
        overwrite=overwrite, inputs=(target_path, reference_path))
    try:
        with output_locks([out, *companions]):
            return _upscale_file(target_path, out, reference_path, overwrite=overwrite,
                                 companions=companions, **kwargs)
    except OSError as exc:
        raise InputError(f"{exc.filename or out}: {exc.strerror or exc}") from None


def _upscale_file(target_path: str | os.PathLike, out_path: str | os.PathLike,
                  reference_path: Optional[str | os.PathLike] = None, *, overwrite: bool = False,
                  memmap: bool = False, progress: Optional[Callable[[int], None]] = None,
                  on_start: Optional[Callable[[int], None]] = None, loaded_model=None,
                  qc: bool = False, sidecar_extra: Optional[dict] = None,
                  companions: Sequence[Path] = (), tensor_consistency="auto",
                  **options) -> nib.Nifti1Image:
    """:func:`upscale_file`'s work, run while it holds the output lock."""
    started = time.perf_counter()
    from mrisr.io.atomic import atomic_paths, check_output_path, reserve_space, scratch_prefix
    from mrisr.io.dwi import b_table_files, companion_paths, series_b_tables
    from mrisr.io.nifti import check_magnitude, is_nifti_path, open_nifti
    from mrisr.inference.streaming import StreamingNiftiWriter

    out = Path(out_path)
    if not is_nifti_path(out):
        raise InputError(f"{out}: output must end in .nii or .nii.gz")
    check_output_path(out, overwrite=overwrite, inputs=(target_path, reference_path))
    check_consistency(options.get("consistency", DEFAULT_CONSISTENCY))
    reference_transfer_weight(options.get("reference_transfer", "auto"))
    tensor_consistency_weight(tensor_consistency)
    target = load_nifti(target_path, ndim=(3, 4))
    reference = load_nifti(reference_path) if reference_path is not None else None
    for image, name in ((target, target_path), (reference, reference_path)):
        note = check_magnitude(image.data, name) if image is not None else None
        if note:
            warnings.warn(MrisrWarning(note), stacklevel=3)
    series = target.data.ndim == 4
    n_vol = target.data.shape[3] if series else 1
    bvals, bvecs = series_b_tables(target_path, n_vol) if series else (None, None)
    if series and bvals is None:
        copied = "no .bval/.bvec is written" if bvecs is None else "only its .bvec is copied"
        warnings.warn(MrisrWarning(
            f"{target_path}: 4D series without {companion_paths(target_path)[0].name} beside "
            f"it: b-values unknown, so no volume is treated as b=0 and {copied}"), stacklevel=3)
    shape3 = target.spatial_shape
    out_shape, out_affine = output_grid(shape3, target.affine, options.get("scale"),
                                        options.get("voxel_size"), options.get("shape"))
    options = dict(options)
    register = options.pop("register", None)
    # With loaded_model, "model" is the name it was loaded for (None: the default), if known.
    named = loaded_model is None or "model" in options
    model_name = options.pop("model", None)
    model_pack = loaded_model or load_upscale_model(model_name, reference is not None, series)
    # The file's decisions; each volume's upscale() records the rest (calibration, projection).
    decisions = Decisions(model=decide_model(model_name, reference is not None, series, shape3,
                                             out_shape) if named else
                          Decision(str(model_pack[1].get("model")), "given (a loaded model)"))
    options.setdefault("adapt", "auto")
    check_adaptable(model_pack[0], options["adapt"])
    # A 3D volume has no tensor-consistency decision; a series is refused here, before any
    # work, when a weight is asked for without its b-tables.
    decisions.tensor_consistency, anisotropy_weight = decide_series_tensor_consistency(
        tensor_consistency, not isinstance(model_pack[0], VolumeInterpolation), bvals, bvecs,
        target_path) if series else (None, 0.0)
    check_resources(out, out_shape, n_vol, memmap, 2 * n_vol if anisotropy_weight else 0)
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
                                    bvals,
                                    device=options.get("device", "auto"),
                                    precision=options.get("precision", "auto"),
                                    register=register_flag_3d(register))
    if series3d is not None:
        decisions.adaptation = decide_adaptation(options["adapt"], None, False)
        options["adapt"] = decisions.adaptation.evidence["steps"]  # 3D: only when asked
    if series3d is not None and options["adapt"]:
        # One copy of the model fine-tuned on the whole series, then every volume upscaled.
        if on_start:
            on_start(n_vol * series3d.units_per_volume + options["adapt"])
            on_start = None
        decisions.adaptation = adaptation_outcome(decisions.adaptation,
                                                  series3d.adapt(options["adapt"], progress))
    if series3d is not None and calibrate_applies(options.get("calibrate", "auto"), False):
        series3d.calibrate()
    if series3d is not None:
        decisions.calibration = decide_calibration(options.get("calibrate", "auto"), False,
                                                   series3d.info.get("detail_gain"))
    registration = None
    if series3d is None and reference is not None and model_pack[0].uses_reference and \
            register_mode(register) != "off":
        # 2D models: the reference is registered once, to the mean of the series' volumes.
        static = target.data.mean(axis=3) if series else target.data
        # On the grid the model will see (reduced where the output is coarser): cheaper, and
        # what the reference is placed on.
        static = reduce_to_output(Volume(static, target.affine), out_shape)[0]
        reference, registration = register_reference(reference, static.data, static.affine,
                                                     register_mode(register))
        decisions.registration = registration
    options["register"] = "off"  # 2D models: done above, once for the whole file
    if series3d is None:
        asked = decide_adaptation(options.get("adapt", "auto"), registration,
                                  registration is not None, is_thick_slice(shape3, out_shape))
        options["adapt"] = asked.evidence["steps"]
        if not isinstance(model_pack[0], VolumeInterpolation):  # interpolations never adapt
            decisions.adaptation = asked
    # The tensor-consistency step: one unit per volume's cubic base, one per shell.
    extra_units = n_vol + sum(shell["used"] for shell in decisions.tensor_consistency.evidence[
        "shells"]) if anisotropy_weight else 0
    if on_start and series3d is not None:
        on_start(n_vol * series3d.units_per_volume + extra_units)
    elif on_start:
        model_shape = tuple(min(n, m) for n, m in zip(shape3, out_shape))  # reduce_to_output
        zooms = voxel_sizes(target.affine) * np.array(shape3) / np.array(model_shape)
        axis = choose_slice_axis(model_shape, out_shape, zooms, options.get("plane"))
        on_start(n_vol * model_shape[axis] + options.get("adapt", 0) + extra_units)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=scratch_prefix()) as scratch:
        buffer = np.lib.format.open_memmap(Path(scratch) / "out.npy", mode="w+",
                                           dtype=np.float32, shape=out_shape) if memmap else None
        if buffer is not None:
            reserve_space(buffer.filename)  # a full disk: an error now, not a crash later
        # With the tensor-consistency step the series is kept whole (with the cubic base of
        # each volume) until every shell is done, then written.
        held = bases = None
        if anisotropy_weight:
            held, bases = (np.lib.format.open_memmap(
                Path(scratch) / name, mode="w+", dtype=np.float32, shape=(n_vol, *out_shape))
                for name in ("series.npy", "cubic.npy"))
            for array in (held, bases):
                reserve_space(array.filename)

        def first_planes(data: np.ndarray, affine: np.ndarray):
            from mrisr.inference.qc import capture_planes

            return capture_planes(
                Volume(target.data[..., 0] if series else target.data, target.affine,
                       target.header, target.path), data, affine,
                reference if series3d is None else None,
                series3d.t1 if series3d is not None else None)

        with atomic_paths([out, *companions], replace=overwrite) as (tmp, *companion_tmps):
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
                if qc and v == 0:  # the picture shows the first volume of a series
                    qc_planes = first_planes(result.data, result.affine)
                if writer is None:
                    writer = StreamingNiftiWriter(tmp, out_shape + ((n_vol,) if series else ()),
                                                  result.affine, target.header)
                if held is None:
                    writer.write_volume(result.data)
                    continue
                held[v] = result.data
                bases[v] = cubic_base(target.data[..., v], out_shape)
                if progress:
                    progress(1)
            if held is not None:
                report = remove_anisotropic_detail(held, bases, bvals, bvecs,
                                                   anisotropy_weight, progress)
                decisions.tensor_consistency.evidence.update(report)
                if qc:
                    qc_planes = first_planes(held[0], result.affine)
                for v in range(n_vol):
                    writer.write_volume(held[v])
            writer.close()
            info = {**result.info, "input": str(target_path), "output": str(out),
                    "volumes": n_vol}
            if adapt_info is not None:
                info["adapt"] = adapt_info
                decisions.adaptation = adaptation_outcome(decisions.adaptation, adapt_info)
            if registration is not None and "reference" in info:
                info["reference"]["registration"] = {**registration.evidence,
                                                     "reason": registration.reason}
            if series3d is not None:
                info["consistency"] = consistency_not_applied(
                    options.get("consistency", DEFAULT_CONSISTENCY))
                decisions.consistency = consistency_decision(info["consistency"])
            info["decisions"] = decisions.over(info.get("decisions", {}))
            info.update(sidecar_extra or {})
            # The sidecar and the series' b-tables go into place with the image, or none.
            tables = dict(zip((".bval", ".bvec"), b_table_files(target_path)))
            for path, tmp_path in zip(companions, companion_tmps):
                if path.name.endswith(QC_SUFFIX):
                    from mrisr.inference.qc import qc_title, write_qc_png

                    write_qc_png(tmp_path, qc_planes,
                                 qc_title(out.name, info, time.perf_counter() - started))
                elif path.suffix == ".json":
                    tmp_path.write_text(json.dumps(info, indent=1), encoding="utf-8")
                else:
                    shutil.copyfile(tables[path.suffix], tmp_path)
    return open_nifti(out)
