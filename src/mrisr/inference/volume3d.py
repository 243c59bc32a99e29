"""Whole-volume inference with a 3D model (the CSR-dMRI family, ``model.dims == 3``).

What the model sees is what :mod:`mrisr.training.volumes` trained it on:

* a volume on the LR grid with intensities about ``[0, 1]`` and 0 outside the brain, clipped
  at :data:`~mrisr.data.dwi.MAX_ATTENUATION` like the training attenuations ``S / mean S_0``
  (:class:`SeriesUpscaler3D` gives each volume of a series divided by its robust maximum);
* for a model with ``level_norm``, the LR volume divided by its
  :func:`~mrisr.data.dwi.attenuation_level`, the output multiplied back;
* the T1w on the HR grid divided by its median inside the brain
  (:func:`~mrisr.data.dwi.scale_t1`), then, for ``t1_mode="lr_channel"``, degraded to the LR grid
  by the cubic B-spline downsampling of the training patches; with ``own_resolution`` it stays
  on the HR grid and is encoded there.

Memory is bounded on both sides. The LR volume (and an HR T1w) is encoded in tiles whose windows
add a halo of the encoder's receptive radius, so every kept feature sees exactly the
neighbourhood of a whole-volume encoding (the zero padding of the convolutions then only acts at
the volume's own border); a volume that fits in one window is encoded whole. The output grid is
decoded a chunk of points at a time into a preallocated (optionally memory-mapped) array.

:class:`SeriesUpscaler3D` is the NIfTI side (``mrisr upscale`` with a 3D model): it masks the
brain, places the T1w on the output grid once and upscales each volume of a series as a degraded
image in its own right (see the class for why not as an attenuation).
"""
from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from mrisr.data.dwi import (MAX_ATTENUATION, attenuation_level, b0_indices,
                            brain_mask, place_t1_on_dwi_grid, scale_t1)
from mrisr.data.intensity import robust_max
from mrisr.data.registration import register_rigid
from mrisr.degradation import spline_resize
from mrisr.devices import select_device
from mrisr.errors import InputError
from mrisr.inference.calibration import least_squares_gain
from mrisr.inference.result import UpscaleResult, grid_info
from mrisr.inference.tiling import tile_windows
from mrisr.io.dwi import series_b_tables
from mrisr.io.nifti import Volume
from mrisr.models.base import ReferenceUse, SRModel
from mrisr.models.csr_dmri import CSRdMRI, VolumeFeatures, iter_grid_queries
from mrisr.training.adapt import DEFAULT_ADAPT_SECONDS
from mrisr.precision import autocast, resolve_precision

__all__ = ["DEFAULT_TILE", "DEFAULT_CHUNK", "DEFAULT_ADAPT_STEPS_3D", "is_volume_model",
           "encode_tiled", "encode_volume", "model_t1_input", "VolumeUpscaler",
           "read_series_bvals", "adapt_volume_model", "SeriesUpscaler3D"]

#: LR voxels per axis of one encoder tile; its window adds twice the receptive radius (15 for
#: csr_dmri_s, so 62^3 voxels, a few hundred MB of activations for the compact encoder).
DEFAULT_TILE = 32
#: Output points per decoder call.
DEFAULT_CHUNK = 2 ** 16
#: Steps of ``mrisr upscale --adapt`` for a 3D model when the caller gives no number.
DEFAULT_ADAPT_STEPS_3D = 100


def is_volume_model(model) -> bool:
    """Whether ``model`` super-resolves whole 3D volumes (an :class:`SRModel` with
    ``dims == 3``), not 2D slices (nor an interpolation baseline)."""
    return isinstance(model, SRModel) and model.dims == 3


@torch.no_grad()
def encode_tiled(encoder: nn.Module, x: torch.Tensor, tile: Optional[int] = DEFAULT_TILE,
                 halo: Optional[int] = None) -> torch.Tensor:
    """``encoder(x)`` of a volume ``(B, C, X, Y, Z)`` computed ``tile`` voxels per axis at a time.

    Each tile is encoded from a window ``halo`` voxels larger on every side (default: the
    encoder's ``receptive_radius``, the number of 3x3x3 convolutions on its longest path) and
    only the tile is kept, so the result equals the whole-volume encoding to float rounding.
    The volume is encoded whole when it has no more voxels than one window (or ``tile`` is
    ``None``). Returns ``(B, F, X, Y, Z)`` on ``x``'s device.
    """
    shape = tuple(int(n) for n in x.shape[2:])
    halo = int(encoder.receptive_radius if halo is None else halo)
    if tile is None or np.prod(shape) <= (tile + 2 * halo) ** len(shape):
        return encoder(x)
    out = None
    for tile_idx, window, interior in tile_windows(shape, int(tile), halo):
        part = encoder(x[(..., *window)])[(..., *interior)]
        if out is None:
            out = part.new_empty(tuple(part.shape[:2]) + shape)
        out[(..., *tile_idx)] = part
    return out


def encode_volume(model: CSRdMRI, lr: torch.Tensor, reference: Optional[torch.Tensor] = None,
                  tile: Optional[int] = DEFAULT_TILE) -> VolumeFeatures:
    """``model.encode(lr, reference)`` with every encoder run by :func:`encode_tiled`.

    lr: ``(B, 1, x, y, z)`` attenuations; reference: the model's T1w input
    (:func:`model_t1_input`) or ``None``."""
    return model.encode(lr, reference, apply=lambda encoder, x: encode_tiled(encoder, x, tile))


def model_t1_input(model: SRModel, t1: np.ndarray, lr_shape: Sequence[int]) -> np.ndarray:
    """The T1w as the model was trained to read it, from the scaled T1w ``t1`` on the HR
    (output) grid: cubic B-spline downsampling to ``lr_shape`` for ``t1_mode="lr_channel"``
    (as :class:`~mrisr.training.volumes.VolumePatchTask` degrades it), unchanged for
    ``own_resolution``. float32 ``(x, y, z)`` or ``(X, Y, Z)``."""
    if model.reference_use is ReferenceUse.OWN_RESOLUTION:
        return np.asarray(t1, dtype=np.float32)
    return spline_resize(np.asarray(t1, dtype=np.float32), tuple(lr_shape), order=3)


class VolumeUpscaler:
    """Applies a 3D model to whole volumes (see the module docstring).

    Args:
        model: a 3D model (``dims == 3``: CSR-dMRI, ArSSR, their ablations, spline_refiner).
        device: where the model runs.
        tile: encoder tile (LR voxels per axis, see :func:`encode_tiled`); ``None``: whole.
        chunk: output points per decoder call.
        precision: ``auto``, ``fp32`` or ``bf16`` (:mod:`mrisr.precision`).
    """

    def __init__(self, model: CSRdMRI, device: torch.device, tile: Optional[int] = DEFAULT_TILE,
                 chunk: int = DEFAULT_CHUNK, precision: str = "auto"):
        if not is_volume_model(model):
            name = (model.preset if isinstance(model, SRModel) else None) or \
                type(model).__name__
            raise InputError(f"model {name} is 2D; whole-volume inference needs a 3D model "
                             "(CSR-dMRI family)")
        self.model = model.eval().to(device)
        self.device = device
        self.tile = tile
        self.chunk = int(chunk)
        self.precision = resolve_precision(precision, device)
        self.uses_reference = model.uses_reference
        self.level_norm = model.level_norm
        # (T1w array, its features): the volumes of a 4D series share one T1w, so a model that
        # encodes it at its own resolution encodes it once, not once per volume.
        self._t1_features: Optional[tuple[np.ndarray, torch.Tensor]] = None

    def _encoder_runner(self, t1: Optional[np.ndarray]):
        """The ``apply`` of :meth:`CSRdMRI.encode`: tiled encoders, the T1w encoder's result
        reused while the same ``t1`` array is passed."""
        # None unless the T1w has its own encoder
        t1_encoder = getattr(self.model, "t1_encoder", None)

        def run(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
            if encoder is not t1_encoder:
                return encode_tiled(encoder, x, self.tile)
            if self._t1_features is None or self._t1_features[0] is not t1:
                self._t1_features = (t1, encode_tiled(encoder, x, self.tile))
            return self._t1_features[1]
        return run

    @torch.no_grad()
    def __call__(self, lr: np.ndarray, out_shape: Sequence[int], t1: Optional[np.ndarray] = None,
                 out: Optional[np.ndarray] = None,
                 progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """Super-resolve one volume.

        Args:
            lr: ``(x, y, z)`` attenuations on the LR grid.
            out_shape: the output grid ``(X, Y, Z)`` over the same field of view.
            t1: ``(X, Y, Z)`` scaled T1w on the output grid (required by models with a T1w).
            out: optional C-contiguous float32 ``out_shape`` array (e.g. memory-mapped) to fill.
            progress: called with the number of output planes (along axis 0) finished.

        Returns:
            float32 ``out_shape``: the model's attenuations (``out`` when given).
        """
        out_shape = tuple(int(n) for n in out_shape)
        ref = None
        if self.uses_reference:
            if t1 is None:
                raise InputError("this 3D model needs a T1w image: give it with --ref")
            if tuple(t1.shape) != out_shape:
                raise InputError(f"T1w of shape {tuple(t1.shape)} is not on the output grid "
                                 f"{out_shape}")
            ref = torch.from_numpy(model_t1_input(self.model, t1, lr.shape))[None, None]
            ref = ref.to(self.device)
        result = out if out is not None else np.empty(out_shape, np.float32)
        if result.shape != out_shape or result.dtype != np.float32 or \
                not result.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 array of shape {out_shape}")
        flat = result.reshape(-1)  # a view: chunks of flat C-order indices land in place
        plane = int(np.prod(out_shape[1:]))
        level = attenuation_level(lr) if self.level_norm else 1.0
        x = torch.from_numpy(np.asarray(lr, dtype=np.float32) / np.float32(level))[None, None]
        with autocast(self.device, self.precision):
            features = self.model.encode(x.to(self.device), ref,
                                         apply=self._encoder_runner(t1))
            if getattr(self.model, "grid_output", False):
                # A model on the output grid (spline_refiner) decodes it whole, in its slabs.
                values = self.model.decode_grid(features, out_shape, progress)
                result[...] = values[0, 0].float().cpu().numpy()
                if self.level_norm:
                    result *= np.float32(level)
                return result
            t1_shape = features.t1.shape[2:] if features.t1 is not None else None
            for start, stop, query in iter_grid_queries(lr.shape, out_shape, self.chunk,
                                                        t1_shape, self.device):
                values = self.model.decode(features, query)[0, 0].float().cpu().numpy()
                flat[start:stop] = values * np.float32(level) if self.level_norm else values
                if progress is not None and stop // plane > start // plane:
                    progress(stop // plane - start // plane)
        return result


def read_series_bvals(series_path, n_volumes: int) -> Optional[np.ndarray]:
    """b-values ``(N,)`` of the ``.bval`` file beside a 4D series, ``None`` when there is none
    (both b-tables checked: :func:`mrisr.io.dwi.series_b_tables`)."""
    return series_b_tables(series_path, n_volumes)[0]


def adapt_volume_model(model: SRModel, volumes: np.ndarray, mask: np.ndarray,
                       factors: Sequence[float], t1: Optional[np.ndarray] = None,
                       steps: int = DEFAULT_ADAPT_STEPS_3D, *, lr: float = 1e-4,
                       batch_size: int = 4, lr_patch: int = 10, frequency_weight: float = 0.01,
                       seed: int = 0, device: Optional[torch.device] = None,
                       max_seconds: Optional[float] = DEFAULT_ADAPT_SECONDS,
                       progress: Optional[Callable[[int], None]] = None):
    """Test-time adaptation of a 3D model: fine-tune a copy on pairs made from the series itself.

    Every volume of the input series, as the model sees it at upscaling time (``volumes``:
    ``(x, y, z, N)``, each divided by its robust maximum in the brain, 0 outside), is the HR side
    of training pairs; its cubic B-spline downsampling by the requested ``factors`` (output /
    input voxels per axis) is the LR side: patches are cut, flipped and permuted and degraded as
    in training (:class:`~mrisr.training.volumes.VolumePatchTask` with fixed scales), the loss is
    the training loss over the brain (``mask``). ``t1``: the scaled T1w on the *input* grid (a
    T1w-guided model reads it degraded like the volumes, as in training), or ``None`` (a model
    trained with T1w dropout then gets zeros, as when it upscales). The LR patch is at most
    ``lr_patch`` voxels per axis and shrinks (down to 4) so that its HR patch fits the series.

    A slab at one end of one axis (:data:`~mrisr.training.adapt.HELD_OUT_FRACTION` of it, the
    one with the most brain) is held out: no training patch overlaps it, and the copy is used
    only when it lowers the loss there (:func:`~mrisr.training.adapt.finetune_held_out`: early
    stopping, the time bound ``max_seconds``; ``None``: no bound).

    Returns a :class:`~mrisr.training.adapt.AdaptResult` (``model``: the fine-tuned copy in
    evaluation mode, or ``model`` itself when adapting did not lower the held-out loss); ``model``
    is not changed.
    """
    from dataclasses import replace

    from mrisr.data.dwi import DwiSubject
    from mrisr.data.dwi_sources import split_slab
    from mrisr.training.adapt import HELD_OUT_BATCHES, HELD_OUT_FRACTION, finetune_held_out
    from mrisr.training.config import DmriDataConfig, OptimConfig, Phase, RunConfig, TrainConfig
    from mrisr.training.volumes import VolumePatchTask

    if steps < 1:
        raise InputError(f"adaptation needs at least one step, got {steps}")
    volumes = np.asarray(volumes, dtype=np.float32)
    if volumes.ndim == 3:
        volumes = volumes[..., None]
    f = np.broadcast_to(np.asarray(factors, dtype=np.float64), 3)
    if np.any(f < 1.0):
        raise InputError(f"adaptation needs upscaling factors >= 1, got {tuple(f)}")
    uses_t1 = model.uses_reference
    extent = min(volumes.shape[:3])
    patch = int(np.clip(np.floor(extent / f.max()), 4, lr_patch))
    # The held-out slab: the end slab (of any axis) with the most brain; a slab at the low end
    # is brought to the high end, where the training code holds out, by flipping the arrays
    # (the patches are flipped in training anyway).
    mask = np.asarray(mask, bool)
    most = (-1, 0, False)
    for a in range(3):
        slab = split_slab(mask.shape, a, HELD_OUT_FRACTION)[1]
        for flip in (False, True):
            most = max(most, (int((np.flip(mask, a) if flip else mask)[slab].sum()), a, flip))
    _, axis, flip = most
    if flip:
        volumes = np.ascontiguousarray(np.flip(volumes, axis))
        mask = np.ascontiguousarray(np.flip(mask, axis))
        t1 = None if t1 is None else np.ascontiguousarray(np.flip(np.asarray(t1), axis))
    d = DmriDataConfig(kind="phantom", lr_patch=patch, scale_range=[float(f.min()),
                                                                    float(f.max())],
                       holdout_axis=axis, holdout_fraction=HELD_OUT_FRACTION,
                       pad_to_patch=True, augment=True,
                       loss_region="brain", frequency_weight=frequency_weight,
                       t1_dropout=1.0 if uses_t1 and t1 is None else 0.0)

    def task_for(subject: DwiSubject, data: DmriDataConfig, task_seed: int,
                 n_steps: int) -> VolumePatchTask:
        cfg = TrainConfig(task="dmri3d", dmri=data,
                          curriculum=[Phase(name="adapt", steps=n_steps)],
                          optim=OptimConfig(lr=lr, batch_size=batch_size),
                          run=RunConfig(seed=task_seed), output="")
        return VolumePatchTask(cfg, [subject], use_t1=uses_t1,
                               t1_mode=model.reference_use.value if uses_t1 else None,
                               level_norm=model.level_norm, fixed_scales=tuple(f))

    def subject_of(index: tuple) -> DwiSubject:
        shell = volumes[index]
        n = shell.shape[3]
        return DwiSubject(name="input", shell=shell, bvals=np.zeros(n), bvecs=np.zeros((3, n)),
                          mean_b0=np.ones(shell.shape[:3], np.float32),
                          t1=None if t1 is None else np.asarray(t1, np.float32)[index],
                          mask=mask[index], affine=np.eye(4))

    everything = (slice(None),) * 3
    task = task_for(subject_of(everything), d, seed, steps)
    _, held_index = split_slab(volumes.shape[:3], axis, HELD_OUT_FRACTION)
    held = []
    try:
        held_task = task_for(subject_of(held_index), replace(d, holdout_fraction=0.0), seed + 1,
                             max(steps, HELD_OUT_BATCHES))
        held = [held_task.batch(i) for i in range(HELD_OUT_BATCHES)]
    except InputError:
        pass  # no brain in the slab: nothing to judge by, and the model given is kept
    device = device or next(model.parameters()).device
    with torch.enable_grad():
        result = finetune_held_out(
            model, task.batch, lambda net, b: task.loss(net, b)[0], held, steps, lr=lr,
            device=device, max_seconds=max_seconds, progress=progress)
    result.mode, result.pair_scale = "volume3d", float(np.round(np.prod(f) ** (1 / 3), 2))
    return result


class SeriesUpscaler3D:
    """Upscale the volumes of a diffusion series (or one 3D volume) with a 3D model.

    Prepared once per series: the brain mask (from the mean b=0, else the mean over the volumes;
    ``mask_method`` of :func:`~mrisr.data.dwi.brain_mask`) and the scaled T1w on the output grid
    (placed through the affines, refined with ``register`` by a rigid registration to the mean
    b=0, as the dMRI training configs do). Per volume (:meth:`upscale`):

    * the volume is divided by its robust maximum inside the mask and set to 0 outside it (the
      model trained on brains with zeros around them); the output is multiplied back;
    * the result is the cubic interpolation of the whole volume plus the model's correction to
      the cubic interpolation of what it saw, inside the mask (linearly upsampled, >= 0.5);
      outside, the cubic interpolation alone.

    Why each volume as it is, not divided by the mean b=0 as the training attenuations were: the
    model learnt to undo a degradation of an image, and an LR volume is such an image, while the
    ratio of two LR volumes is not; dividing at LR and multiplying by the interpolated b=0 left
    every trained model below plain cubic interpolation of the signal, at every scale, on both
    test series (benchmarks/dmri_series_upscale.py, docs/BENCHMARKS.md). Why the
    correction and not the model's output itself: the edge of the mask is a step to zero in
    what the model sees, not in the signal, and its interpolation leaves the same trace in both.

    Args:
        target: ``(x, y, z, N)`` series or ``(x, y, z)`` volume on the LR grid.
        reference: the T1w image (any resolution, orientation and field of view), or ``None``.
        model_pack: ``(model, description)`` as
            :func:`mrisr.inference.selection.load_upscale_model` returns.
        out_shape, out_affine: the output grid (same field of view as ``target``).
        bvals: ``(N,)`` b-values (s/mm^2) of the series, or ``None``.
        device, precision, tile, chunk: see :class:`VolumeUpscaler`.
        register: rigidly register the T1w to the mean b=0 (else the mean volume) on the input
            grid before placing it (:func:`~mrisr.data.registration.register_rigid`, needs dipy);
            ``None``: as the model's training did (``t1_registered_in_training`` of the
            description) when dipy is installed, else by the headers alone.

    A T1w-guided model trained with T1w dropout (``t1_dropout`` > 0 in its description) also
    upscales a series without ``reference``: its T1w input is then zero, as in training.
    :meth:`adapt` fine-tunes a copy of the model on the series before :meth:`upscale`;
    :meth:`calibrate` then fits the weight of its correction on the series.
    """

    def __init__(self, target: Volume, reference: Optional[Volume], model_pack: tuple,
                 out_shape: Sequence[int], out_affine: np.ndarray,
                 bvals: Optional[np.ndarray] = None, device: str = "auto",
                 precision: str = "auto",
                 tile: Optional[int] = DEFAULT_TILE, chunk: int = DEFAULT_CHUNK,
                 mask_method: str = "auto", register: Optional[bool] = None):
        net, desc = model_pack
        self.upscaler = VolumeUpscaler(net, select_device(device), tile, chunk, precision)
        self.data = target.data if target.data.ndim == 4 else target.data[..., None]
        self.out_shape = tuple(int(n) for n in out_shape)
        self.out_affine = np.asarray(out_affine, dtype=np.float64)
        zero = b0_indices(bvals) if bvals is not None else np.zeros(0, dtype=int)
        signal = self.data[..., zero if zero.size else slice(None)].mean(axis=-1)
        self.mask = brain_mask(signal, mask_method)
        self.mask_hr = spline_resize(self.mask.astype(np.float32), self.out_shape,
                                     order=1) >= 0.5
        self.t1 = None
        self.target = target
        self.reference = reference
        self.desc = desc
        self.transform = None
        info: dict = {}
        if self.upscaler.uses_reference and reference is None and desc.get("t1_dropout"):
            # Trained with T1w dropout: a zero T1w is what such a model saw without one.
            self.t1 = np.zeros(self.out_shape, np.float32)
            info["reference"] = {"path": None, "t1_input": "zeros (model trained with T1w "
                                                           "dropout)"}
        elif self.upscaler.uses_reference:
            if reference is None:
                raise InputError(f"model '{desc.get('model')}' needs a T1w image: give the "
                                 "subject's T1w with --ref, or leave out --model for the "
                                 "series default (cubic)")
            if register is None:
                # As in training, when dipy is there to do it; the header placement otherwise
                # (the sidecar says which).
                register = bool(desc.get("t1_registered_in_training", False)) and \
                    importlib.util.find_spec("dipy") is not None
            transform = register_rigid(reference, signal, target.affine) if register else None
            self.transform = transform
            placed = place_t1_on_dwi_grid(reference, self.out_affine, self.out_shape,
                                          transform=transform)
            self.t1 = scale_t1(placed.data, self.mask_hr)
            info["reference"] = {"path": str(reference.path), "placed_on": "output grid",
                                 "registered": bool(register),
                                 "brain_covered_fraction":
                                     float(placed.coverage[self.mask_hr].mean())}
        info["normalisation"] = {
            "method": "robust_max_per_volume", "mask_from": "mean_b0" if zero.size else
            "mean_volume", "b0_volumes": int(zero.size), "brain_voxels": int(self.mask.sum()),
            "result": "cubic interpolation plus the model's correction inside the brain",
            "outside_brain": "cubic interpolation"}
        self.info = {**grid_info(desc, target.spatial_shape, target.affine, self.out_shape,
                                 self.out_affine), **info, "encoder_tile": tile,
                     "precision": self.upscaler.precision}
        #: The weight of the model's correction (:meth:`calibrate`).
        self.gain = 1.0
        #: Progress units (output planes along axis 0) per volume.
        self.units_per_volume = self.out_shape[0]

    def adapt(self, steps: int = DEFAULT_ADAPT_STEPS_3D,
              progress: Optional[Callable[[int], None]] = None, **kwargs) -> dict:
        """Fine-tune a copy of the model on this series (:func:`adapt_volume_model`: every
        volume, normalised as :meth:`upscale` gives it to the model, degraded again by the
        output/input factors), then use the copy for every later :meth:`upscale` when it
        lowered the loss on the held-out slab (else the model stays as it was). The T1w is
        placed on the input grid (with the registration already found). ``kwargs`` go to
        :func:`adapt_volume_model`. Returns the sidecar entry (also in ``info["adapt"]``)."""
        factors = [o / i for i, o in zip(self.data.shape[:3], self.out_shape)]
        volumes = np.stack([self.normalised(v)[0] for v in range(self.data.shape[3])], -1)
        old = self.upscaler
        result = adapt_volume_model(old.model, volumes, self.mask, factors,
                                    self._t1_on_input_grid(), steps,
                                    device=old.device, progress=progress, **kwargs)
        entry = {**result.describe(), "volumes": int(volumes.shape[3])}
        if result.losses:
            entry["loss_first10"] = float(np.mean(result.losses[:10]))
            entry["loss_last10"] = float(np.mean(result.losses[-10:]))
        self.info["adapt"] = entry
        if result.adapted:  # else the model given stays, as adapting did not help
            self.upscaler = VolumeUpscaler(result.model, old.device, old.tile, old.chunk,
                                           old.precision)
            self.desc = {**self.desc, "adapted_steps": int(result.best_step)}
        return entry

    def calibrate(self, max_volumes: int = 4) -> dict:
        """Fit the gain of the model's correction to cubic interpolation on the series itself
        (:mod:`mrisr.inference.calibration`): up to ``max_volumes`` volumes spread over the
        series, each as the model sees it,
        degraded once more by the output/input factors (cubic B-spline downsampling, as
        :meth:`adapt`), upscaled back to the input grid by :meth:`upscale`'s rule; the gain
        ``g`` in [0, 1] that best fits the input inside the brain scales the correction of
        every later :meth:`upscale`. Returns the sidecar entry (also ``info["detail_gain"]``)."""
        in_shape = self.data.shape[:3]
        factors = [o / i for i, o in zip(in_shape, self.out_shape)]
        pair_shape = tuple(max(1, int(round(n / f))) for n, f in zip(in_shape, factors))
        entry: dict
        if min(pair_shape) < 4:
            entry = {"gain": 1.0, "reason": "the input degraded again would have fewer than "
                                            "4 voxels along an axis"}
        else:
            t1 = self._t1_on_input_grid()
            if t1 is None and self.t1 is not None:  # a T1w-dropout model run without one
                t1 = np.zeros(in_shape, np.float32)
            n = self.data.shape[3]
            picks = np.unique(np.linspace(0, n - 1, min(max_volumes, n)).round().astype(int))
            corrections, truths = [], []
            for v in picks:
                x, _ = self.normalised(int(v))
                lr = spline_resize(x, pair_shape, order=3)
                cubic = spline_resize(lr, in_shape, order=3)
                pred = self.upscaler(lr, in_shape, t1)
                corrections.append((pred - cubic)[self.mask])
                truths.append((x - cubic)[self.mask])
            entry = {**least_squares_gain(np.concatenate(corrections), np.concatenate(truths)),
                     "volumes": [int(v) for v in picks], "pair_shape": list(pair_shape)}
        self.gain = float(entry["gain"])
        self.info["detail_gain"] = entry
        return entry

    def _t1_on_input_grid(self) -> Optional[np.ndarray]:
        """The scaled T1w placed on the input grid (with the registration already found), for
        pairs made from the series itself; ``None`` without a T1w or a model that reads one."""
        if not (self.upscaler.uses_reference and self.reference is not None):
            return None
        placed = place_t1_on_dwi_grid(self.reference, self.target.affine, self.data.shape[:3],
                                      transform=self.transform)
        return scale_t1(placed.data, self.mask)

    def normalised(self, index: int) -> tuple[np.ndarray, float]:
        """Volume ``index`` as the model's input: float32 ``(x, y, z)`` divided by its robust
        maximum inside the mask (0 outside), and that maximum (the factor to multiply back)."""
        vol = self.data[..., index]
        factor = robust_max(vol[self.mask]) if self.mask.any() else 1.0
        x = np.zeros(vol.shape, np.float32)
        x[self.mask] = vol[self.mask] / factor
        np.clip(x, 0.0, MAX_ATTENUATION, out=x)
        return x, factor

    def upscale(self, index: int, out: Optional[np.ndarray] = None,
                progress: Optional[Callable[[int], None]] = None) -> UpscaleResult:
        """Volume ``index`` on the output grid, in the input's units: an
        :class:`~mrisr.inference.upscale.UpscaleResult` (float32 data, output affine, sidecar
        info); ``out`` as in :meth:`VolumeUpscaler.__call__`."""
        t0 = time.perf_counter()
        x, factor = self.normalised(index)
        result = self.upscaler(x, self.out_shape, self.t1, out, progress)
        result -= spline_resize(x, self.out_shape, order=3)
        result *= np.float32(factor * self.gain)
        cubic = spline_resize(self.data[..., index].astype(np.float32), self.out_shape, order=3)
        result += cubic
        outside = ~self.mask_hr
        result[outside] = cubic[outside]
        np.maximum(result, 0.0, out=result)  # magnitude images are never negative
        info = {**self.info, "seconds": round(time.perf_counter() - t0, 3)}
        return UpscaleResult(data=result, affine=self.out_affine, info=info)
