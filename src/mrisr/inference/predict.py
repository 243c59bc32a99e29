"""Apply a trained 2D model to whole images, and the evaluation plug-in built on it.

:func:`predict_slice` normalises the LR target and the reference by their own robust maxima
(the rule used in training), decodes the whole output grid in the FOV-preserving convention
and returns the magnitude in the input's intensity units.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from mrisr.data.intensity import as_channels, robust_max, to_magnitude
from mrisr.devices import select_device
from mrisr.evaluation.methods import SRCase, SRMethod, register_method
from mrisr.inference.tiling import decode_tiled
from mrisr.models.dual_arbnet import GridQuery
from mrisr.models.query import grid_positions


def full_grid_query(lr_shape, out_shape, ref_shape=None, device=None) -> GridQuery:
    """Query for every voxel of ``out_shape`` over the FOV of an ``lr_shape`` image (and of a
    reference image of ``ref_shape`` covering the same FOV)."""
    pos = [grid_positions(n, m, device=device)[None] for n, m in zip(lr_shape, out_shape)]
    spacing = torch.tensor([[n / m for n, m in zip(lr_shape, out_shape)]], dtype=torch.float64,
                           device=device)
    query = GridQuery(target_positions=pos, target_spacing=spacing)
    if ref_shape is not None:
        query.reference_positions = [grid_positions(n, m, device=device)[None]
                                     for n, m in zip(ref_shape, out_shape)]
        query.reference_spacing = torch.tensor(
            [[n / m for n, m in zip(ref_shape, out_shape)]], dtype=torch.float64, device=device)
    return query


def _uses_reference(model: nn.Module) -> bool:
    return bool(getattr(model, "use_reference", False))


def predict_slice(model: nn.Module, lr: np.ndarray, out_shape: tuple[int, int],
                  reference: Optional[np.ndarray] = None, input_kind: str = "magnitude",
                  device: Optional[torch.device] = None, tile: Optional[int] = None
                  ) -> np.ndarray:
    """Super-resolve one 2D image ``lr`` (real or complex ``(h, w)``) to ``out_shape``.

    ``reference``: the reference contrast over the same FOV on its own grid (any resolution).
    tile: decode the output in tiles of ``tile`` voxels per axis (bounded memory; the result
    equals the untiled one). Returns float32 magnitude ``out_shape``.
    """
    return predict_slices(model, [lr], out_shape, None if reference is None else [reference],
                          input_kind, device, tile)[0]


def _batch_item(encoded, b: int):
    """Item ``b`` (kept as a batch of one) of an encoder output: a tensor or a dataclass of
    tensors (Dual-ArbNet's :class:`~mrisr.models.dual_arbnet.Encoded`)."""
    if isinstance(encoded, torch.Tensor):
        return encoded[b:b + 1]
    return dataclasses.replace(encoded, **{
        f.name: getattr(encoded, f.name)[b:b + 1] for f in dataclasses.fields(encoded)
        if isinstance(getattr(encoded, f.name), torch.Tensor)})


def predict_slices(model: nn.Module, lrs: list, out_shape: tuple[int, int],
                   references: Optional[list] = None, input_kind: str = "magnitude",
                   device: Optional[torch.device] = None, tile: Optional[int] = None
                   ) -> list:
    """:func:`predict_slice` of several images of one shape at once: the encoder runs on
    all of them in one batch (each normalised by its own robust maximum, as alone), then
    each output is decoded. ``references``: one per image (all of one shape), or ``None``."""
    device = device or next(model.parameters()).device
    model.eval()
    norms = [robust_max(lr) for lr in lrs]
    with torch.inference_mode():
        x = torch.from_numpy(np.stack([as_channels(lr / n, input_kind)
                                       for lr, n in zip(lrs, norms)])).to(device)
        ref_t, ref_shape = None, None
        if _uses_reference(model):
            if references is None or any(r is None for r in references):
                raise ValueError("this model needs a reference image")
            ref_t = torch.from_numpy(np.stack([as_channels(r / robust_max(r), input_kind)
                                               for r in references])).to(device)
            ref_shape = references[0].shape
        query = full_grid_query(lrs[0].shape, out_shape, ref_shape).to(device)
        encoded = model.encode(x, ref_t)
        results = []
        for b, norm in enumerate(norms):
            out = decode_tiled(model, _batch_item(encoded, b), query, tile)[0]
            out = out.float().cpu().numpy()
            mag = to_magnitude(out[0]) if out.shape[0] == 1 else np.hypot(out[0], out[1])
            results.append((mag * norm).astype(np.float32))
    return results


@register_method("model")
class ModelMethod(SRMethod):
    """A trained model as an evaluation method.

    model: a preset with shipped weights (``"dualarbnet_s"``), a checkpoint path, or an
    ``nn.Module`` (used during training). input_kind: ``magnitude`` or ``complex``; read from
    the checkpoint's training config when available.
    adapt: test-time adaptation steps (:mod:`mrisr.training.adapt`): before the slices of one
    degraded scan are run, a copy of the model is fine-tuned on pairs made from them (0: off).
    consistency: data-consistency projection of each output with its input
    (:func:`mrisr.degradation.consistency.project`; ``none`` leaves outputs as the model gives).
    2D cases run through :func:`predict_slice`; 3D cases (``mode: volume``) through
    :func:`mrisr.inference.upscale.upscale`, exactly as ``mrisr upscale`` runs a NIfTI volume.
    """

    def __init__(self, model: Union[str, nn.Module] = "dualarbnet_s", device: str = "auto",
                 input_kind: Optional[str] = None, threads: Optional[int] = None,
                 adapt: int = 0, consistency: str = "none"):
        from mrisr.models.checkpoint import load_checkpoint
        from mrisr.models.registry import PRESETS, create_model

        if threads:
            torch.set_num_threads(threads)
        self.device = select_device(device)
        kind = input_kind
        if isinstance(model, nn.Module):
            self.model = model
        elif model in PRESETS:
            self.model = create_model(model, pretrained=True)
        else:
            loaded = load_checkpoint(model)
            self.model = loaded.model
            kind = kind or loaded.payload.get("train_config", {}).get("data", {}).get("input")
        self.model.to(self.device)
        self.input_kind = kind or ("complex" if self.model.in_channels == 2 else "magnitude")
        self.uses_reference = _uses_reference(self.model)
        self.adapt = int(adapt)
        self.consistency = consistency
        self.active = self.model
        self.adapt_log: list[dict] = []

    def prepare(self, cases: list[SRCase]) -> None:
        self.active = self.model
        if not self.adapt or not cases or cases[0].lr.ndim != 2:
            return  # 3D cases adapt inside upscale()
        from mrisr.degradation import spline_resize
        from mrisr.training.adapt import adapt_model

        lr = np.stack([np.abs(c.lr) for c in cases], axis=-1)
        ref = None
        if self.uses_reference:
            ref = np.stack([spline_resize(np.abs(c.reference), c.lr.shape, order=3,
                                          antialias=True) for c in cases], axis=-1)
        factors = [o / i for i, o in zip(cases[0].lr.shape, cases[0].out_shape)] + [1.0]
        result = adapt_model(self.model, lr, factors, 2, ref, self.adapt, device=self.device)
        self.active = result.model
        self.adapt_log.append(result.describe())

    def __call__(self, case: SRCase) -> np.ndarray:
        if case.lr.ndim == 3:
            return self._volume(case)
        out = predict_slice(self.active, case.lr, tuple(case.out_shape), case.reference,
                            self.input_kind, self.device)
        if self.consistency != "none":
            from mrisr.degradation.consistency import project
            out = project(out, np.abs(case.lr).astype(np.float32), self.consistency)
        return out

    def _volume(self, case: SRCase) -> np.ndarray:
        from mrisr.grid import resample_affine
        from mrisr.inference.upscale import upscale
        from mrisr.io.nifti import Volume

        def volume(data: np.ndarray, name: str) -> Volume:
            # One field of view for every grid: the output's, voxel size 1.
            return Volume(np.abs(data).astype(np.float32),
                          resample_affine(np.eye(4), case.out_shape, data.shape), None, name)
        ref = volume(case.reference, "reference") if self.uses_reference else None
        desc = {"model": "evaluated", "input": self.input_kind}
        result = upscale(volume(case.lr, "input"), ref, shape=tuple(case.out_shape),
                         loaded_model=(self.model, desc), device=str(self.device),
                         consistency=self.consistency, adapt=self.adapt)
        if "adapt" in result.info:
            self.adapt_log.append(result.info["adapt"])
        return result.data
