"""Apply a trained 2D model to whole images.

:func:`predict_slice` normalises the LR target and the reference by their own robust maxima
(the rule used in training), decodes the whole output grid in the FOV-preserving convention
and returns the magnitude in the input's intensity units.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch

from mrisr.data.intensity import as_channels, robust_max, to_magnitude
from mrisr.inference.tiling import decode_tiled
from mrisr.models.base import SRModel
from mrisr.models.dual_arbnet import GridQuery
from mrisr.models.query import grid_positions
from mrisr.precision import autocast, resolve_precision


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


def predict_slice(model: SRModel, lr: np.ndarray, out_shape: tuple[int, int],
                  reference: Optional[np.ndarray] = None, input_kind: str = "magnitude",
                  device: Optional[torch.device] = None, tile: Optional[int] = None,
                  precision: str = "fp32") -> np.ndarray:
    """Super-resolve one 2D image ``lr`` (real or complex ``(h, w)``) to ``out_shape``.

    ``reference``: the reference contrast over the same FOV on its own grid (any resolution).
    tile: decode the output in tiles of ``tile`` voxels per axis (bounded memory; the result
    equals the untiled one). Returns float32 magnitude ``out_shape``.
    """
    return predict_slices(model, [lr], out_shape, None if reference is None else [reference],
                          input_kind, device, tile, precision)[0]


def _batch_item(encoded, b: int):
    """Item ``b`` (kept as a batch of one) of an encoder output: a tensor or a dataclass of
    tensors (Dual-ArbNet's :class:`~mrisr.models.dual_arbnet.Encoded`)."""
    if isinstance(encoded, torch.Tensor):
        return encoded[b:b + 1]
    return dataclasses.replace(encoded, **{
        f.name: getattr(encoded, f.name)[b:b + 1] for f in dataclasses.fields(encoded)
        if isinstance(getattr(encoded, f.name), torch.Tensor)})


def predict_slices(model: SRModel, lrs: list, out_shape: tuple[int, int],
                   references: Optional[list] = None, input_kind: str = "magnitude",
                   device: Optional[torch.device] = None, tile: Optional[int] = None,
                   precision: str = "fp32") -> list:
    """:func:`predict_slice` of several images of one shape at once: the encoder runs on
    all of them in one batch (each normalised by its own robust maximum, as alone), then
    each output is decoded. ``references``: one per image (all of one shape), or ``None``.
    ``precision``: the network's arithmetic (:mod:`mrisr.precision`; the output is float32)."""
    device = device or next(model.parameters()).device
    precision = resolve_precision(precision, device)
    model.eval()
    norms = [robust_max(lr) for lr in lrs]
    with torch.inference_mode(), autocast(device, precision):
        x = torch.from_numpy(np.stack([as_channels(lr / n, input_kind)
                                       for lr, n in zip(lrs, norms)])).to(device)
        ref_t, ref_shape = None, None
        if model.uses_reference:
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
