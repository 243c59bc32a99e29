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
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from mrisr.data.dwi import (MAX_ATTENUATION, attenuation_level, b0_indices,
                            brain_mask, place_t1_on_dwi_grid, register_rigid, scale_t1)
from mrisr.data.intensity import robust_max
from mrisr.degradation import spline_resize
from mrisr.devices import select_device
from mrisr.errors import InputError
from mrisr.evaluation.methods import SRCase, SRMethod, register_method
from mrisr.inference.tiling import tile_windows
from mrisr.inference.upscale import UpscaleResult, grid_info
from mrisr.io.dwi import companion_paths, read_bvals
from mrisr.io.nifti import Volume
from mrisr.models.csr_dmri import VolumeFeatures, iter_grid_queries

__all__ = ["DEFAULT_TILE", "DEFAULT_CHUNK", "is_volume_model", "encode_tiled", "encode_volume",
           "model_t1_input", "VolumeUpscaler", "VolumeModelMethod", "read_series_bvals",
           "SeriesUpscaler3D"]

#: LR voxels per axis of one encoder tile; its window adds twice the receptive radius (15 for
#: csr_dmri_s, so 62^3 voxels, a few hundred MB of activations for the compact encoder).
DEFAULT_TILE = 32
#: Output points per decoder call.
DEFAULT_CHUNK = 2 ** 16


def is_volume_model(model: nn.Module) -> bool:
    """Whether ``model`` super-resolves whole 3D volumes (``dims == 3``), not 2D slices."""
    return getattr(model, "dims", 2) == 3


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
    halo = int(getattr(encoder, "receptive_radius") if halo is None else halo)
    if tile is None or np.prod(shape) <= (tile + 2 * halo) ** len(shape):
        return encoder(x)
    out = None
    for tile_idx, window, interior in tile_windows(shape, int(tile), halo):
        part = encoder(x[(..., *window)])[(..., *interior)]
        if out is None:
            out = part.new_empty(tuple(part.shape[:2]) + shape)
        out[(..., *tile_idx)] = part
    return out


def encode_volume(model: nn.Module, lr: torch.Tensor, reference: Optional[torch.Tensor] = None,
                  tile: Optional[int] = DEFAULT_TILE) -> VolumeFeatures:
    """``model.encode(lr, reference)`` with every encoder run by :func:`encode_tiled`.

    lr: ``(B, 1, x, y, z)`` attenuations; reference: the model's T1w input
    (:func:`model_t1_input`) or ``None``."""
    return model.encode(lr, reference, apply=lambda encoder, x: encode_tiled(encoder, x, tile))


def model_t1_input(model: nn.Module, t1: np.ndarray, lr_shape: Sequence[int]) -> np.ndarray:
    """The T1w as the model was trained to read it, from the scaled T1w ``t1`` on the HR
    (output) grid: cubic B-spline downsampling to ``lr_shape`` for ``t1_mode="lr_channel"``
    (as :class:`~mrisr.training.volumes.VolumePatchTask` degrades it), unchanged for
    ``own_resolution``. float32 ``(x, y, z)`` or ``(X, Y, Z)``."""
    if getattr(model, "t1_mode", None) == "own_resolution":
        return np.asarray(t1, dtype=np.float32)
    return spline_resize(np.asarray(t1, dtype=np.float32), tuple(lr_shape), order=3)


class VolumeUpscaler:
    """Applies a 3D model to whole volumes (see the module docstring).

    Args:
        model: a model with ``dims == 3`` (CSR-dMRI, ArSSR, their ablations).
        device: where the model runs.
        tile: encoder tile (LR voxels per axis, see :func:`encode_tiled`); ``None``: whole.
        chunk: output points per decoder call.
        amp: bfloat16 autocast on CUDA.
    """

    def __init__(self, model: nn.Module, device: torch.device, tile: Optional[int] = DEFAULT_TILE,
                 chunk: int = DEFAULT_CHUNK, amp: bool = False):
        if not is_volume_model(model):
            raise InputError(f"model {getattr(model, 'preset', None) or type(model).__name__} is "
                             "2D; whole-volume inference needs a 3D model (CSR-dMRI family)")
        self.model = model.eval().to(device)
        self.device = device
        self.tile = tile
        self.chunk = int(chunk)
        self.amp = amp and device.type == "cuda"
        self.uses_reference = bool(getattr(model, "use_reference", False))
        self.level_norm = bool(getattr(model, "level_norm", False))
        # (T1w array, its features): the volumes of a 4D series share one T1w, so a model that
        # encodes it at its own resolution encodes it once, not once per volume.
        self._t1_features: Optional[tuple[np.ndarray, torch.Tensor]] = None

    def _encoder_runner(self, t1: Optional[np.ndarray]):
        """The ``apply`` of :meth:`CSRdMRI.encode`: tiled encoders, the T1w encoder's result
        reused while the same ``t1`` array is passed."""
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
                raise InputError("this 3D model needs a T1w image (--ref)")
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
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            features = self.model.encode(x.to(self.device), ref,
                                         apply=self._encoder_runner(t1))
            t1_shape = features.t1.shape[2:] if features.t1 is not None else None
            for start, stop, query in iter_grid_queries(lr.shape, out_shape, self.chunk,
                                                        t1_shape, self.device):
                values = self.model.decode(features, query)[0, 0].float().cpu().numpy()
                flat[start:stop] = values * np.float32(level) if self.level_norm else values
                if progress is not None and stop // plane > start // plane:
                    progress(stop // plane - start // plane)
        return result


def _resolve_model(model: Union[str, nn.Module]) -> nn.Module:
    """An ``nn.Module`` as given, a preset with shipped weights, or a checkpoint path."""
    from mrisr.models.checkpoint import load_checkpoint
    from mrisr.models.registry import PRESETS, create_model

    if isinstance(model, nn.Module):
        return model
    if model in PRESETS:
        return create_model(model, pretrained=True)
    return load_checkpoint(model).model


@register_method("model3d")
class VolumeModelMethod(SRMethod):
    """A trained 3D model (CSR-dMRI family) as an evaluation method.

    The case's ``lr`` holds attenuations ``S / S_0`` (as the model was trained on) and its
    ``reference`` the scaled T1w on the output (HR) grid; the model degrades the T1w to the LR
    grid itself when it reads it there.

    Args:
        model: a preset with shipped weights (``"csr_dmri_s"``), a checkpoint path, or an
            ``nn.Module``.
        device, threads: where it runs (``threads``: CPU threads for torch).
        tile, chunk: see :class:`VolumeUpscaler`.
    """

    def __init__(self, model: Union[str, nn.Module] = "csr_dmri_s", device: str = "auto",
                 threads: Optional[int] = None, tile: Optional[int] = DEFAULT_TILE,
                 chunk: int = DEFAULT_CHUNK):
        if threads:
            torch.set_num_threads(threads)
        net = _resolve_model(model)
        if not is_volume_model(net):
            raise InputError(f"method model3d: model '{model}' is 2D; evaluate it with method "
                             "'model'")
        self.upscaler = VolumeUpscaler(net, select_device(device), tile, chunk)
        self.uses_reference = self.upscaler.uses_reference

    def __call__(self, case: SRCase) -> np.ndarray:
        return self.upscaler(case.lr, case.out_shape, case.reference)


def read_series_bvals(series_path, n_volumes: int) -> Optional[np.ndarray]:
    """b-values ``(N,)`` of the ``.bval`` file beside a 4D series, ``None`` when there is none."""
    bval, _ = companion_paths(series_path)
    if not bval.exists():
        return None
    bvals = read_bvals(bval)
    if bvals.size != n_volumes:
        raise InputError(f"{bval}: {bvals.size} b-values but the series has {n_volumes} volumes")
    return bvals


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
        model_pack: ``(model, description)`` as :func:`mrisr.inference.upscale.load_model`
            returns.
        out_shape, out_affine: the output grid (same field of view as ``target``).
        bvals: ``(N,)`` b-values (s/mm^2) of the series, or ``None``.
        device, amp, tile, chunk: see :class:`VolumeUpscaler`.
        register: rigidly register the T1w to the mean b=0 (else the mean volume) on the input
            grid before placing it (:func:`~mrisr.data.dwi.register_rigid`, needs dipy);
            ``None``: as the model's training did (``t1_registered_in_training`` of the
            description) when dipy is installed, else by the headers alone.
    """

    def __init__(self, target: Volume, reference: Optional[Volume], model_pack: tuple,
                 out_shape: Sequence[int], out_affine: np.ndarray,
                 bvals: Optional[np.ndarray] = None, device: str = "auto", amp: bool = False,
                 tile: Optional[int] = DEFAULT_TILE, chunk: int = DEFAULT_CHUNK,
                 mask_method: str = "auto", register: Optional[bool] = None):
        net, desc = model_pack
        self.upscaler = VolumeUpscaler(net, select_device(device), tile, chunk, amp)
        self.data = target.data if target.data.ndim == 4 else target.data[..., None]
        self.out_shape = tuple(int(n) for n in out_shape)
        self.out_affine = np.asarray(out_affine, dtype=np.float64)
        zero = b0_indices(bvals) if bvals is not None else np.zeros(0, dtype=int)
        signal = self.data[..., zero if zero.size else slice(None)].mean(axis=-1)
        self.mask = brain_mask(signal, mask_method)
        self.mask_hr = spline_resize(self.mask.astype(np.float32), self.out_shape,
                                     order=1) >= 0.5
        self.t1 = None
        info: dict = {}
        if self.upscaler.uses_reference:
            if reference is None:
                raise InputError(f"model '{desc.get('model')}' needs a T1w image (--ref)")
            if register is None:
                # As in training, when dipy is there to do it; the header placement otherwise
                # (the sidecar says which).
                register = bool(desc.get("t1_registered_in_training", False)) and \
                    importlib.util.find_spec("dipy") is not None
            transform = register_rigid(reference, signal, target.affine) if register else None
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
                                 self.out_affine), **info, "encoder_tile": tile}
        #: Progress units (output planes along axis 0) per volume.
        self.units_per_volume = self.out_shape[0]

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
        result *= np.float32(factor)
        cubic = spline_resize(self.data[..., index].astype(np.float32), self.out_shape, order=3)
        result += cubic
        outside = ~self.mask_hr
        result[outside] = cubic[outside]
        np.maximum(result, 0.0, out=result)  # magnitude images are never negative
        info = {**self.info, "seconds": round(time.perf_counter() - t0, 3)}
        return UpscaleResult(data=result, affine=self.out_affine, info=info)
