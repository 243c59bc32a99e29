"""A residual 3D CNN on the output grid over cubic B-spline interpolation (``spline_refiner``).

Why a model that is not an implicit function: it keeps the baseline a diffusion series is
judged against (cubic interpolation) as its output's bulk and learns only a non-linear
correction, on the output grid, where every scale looks alike to a small CNN that a CPU can
train in an hour (docs/benchmarks/dmri.md, "A refiner on the output grid", for what it gained
on scanners it never saw).

The LR volume ``(B, 1, x, y, z)`` is resampled to the output grid by the cubic B-spline
(:func:`~mrisr.models.query.bspline_resize`, what the ``cubic`` baseline computes), stacked with
one constant channel per axis holding ``log2`` of that axis' upscaling factor (``use_scale``),
and a stack of ``depth`` 3x3x3 convolutions (``width`` channels, (leaky) ReLU) adds a
correction. The last convolution starts at zero, so an untrained model is exactly cubic
interpolation. It decodes whole output grids, not point sets (``grid_output``), in slabs along
the first axis with a halo of ``depth`` planes, so memory is bounded and the slabs equal the
whole-grid result.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, Optional

import torch
from torch import nn

from mrisr.errors import InputError
from mrisr.models.base import ReferenceUse, SRModel
from mrisr.models.csr_dmri import VolumeFeatures
from mrisr.models.query import bspline_resize
from mrisr.models.registry import register_architecture


@register_architecture("spline_refiner")
class SplineRefiner(SRModel):
    """Cubic B-spline interpolation plus a residual CNN on the output grid (module docstring).

    Args:
        width: channels of the hidden convolutions.
        depth: 3x3x3 convolutions (>= 2); also the halo, in output voxels, of slab decoding.
        use_scale: give the network the per-axis upscaling factors as input channels.
        negative_slope: slope of the activations below zero (0: ReLU). A plain ReLU stack can
            die in training (every unit of a layer negative, the correction then constant):
            fold B of configs/train_dwi_refiner_heldout.yaml did; a leaky slope keeps a
            gradient.
        level_norm: the input is divided by its attenuation level (as the other 3D models).
        slab_voxels: output voxels per slab when decoding (bounds the activations' memory:
            ``width`` float32 channels of that many voxels, twice).
    """

    dims = 3
    grid_output = True
    reference_use = ReferenceUse.NONE

    def __init__(self, width: int = 32, depth: int = 5, use_scale: bool = True,
                 level_norm: bool = True, slab_voxels: int = 2 ** 21,
                 negative_slope: float = 0.0):
        super().__init__()
        if depth < 2 or width < 1:
            raise ValueError(f"depth must be >= 2 and width >= 1, got {depth}, {width}")
        self.level_norm = bool(level_norm)
        self.use_scale = bool(use_scale)
        self.slab_voxels = int(slab_voxels)
        self.decoder_radius = int(depth)
        inputs = 1 + (3 if use_scale else 0)

        def activation() -> nn.Module:
            return nn.LeakyReLU(negative_slope, inplace=True) if negative_slope else \
                nn.ReLU(inplace=True)

        layers: list[nn.Module] = [nn.Conv3d(inputs, width, 3, padding=1), activation()]
        for _ in range(depth - 2):
            layers += [nn.Conv3d(width, width, 3, padding=1), activation()]
        last = nn.Conv3d(width, 1, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.body = nn.Sequential(*layers, last)

    def encode(self, lr: torch.Tensor, reference: Optional[torch.Tensor] = None,
               apply: Optional[Callable] = None) -> VolumeFeatures:
        """Nothing to encode on the LR grid: the features are the LR volume ``(B, 1, x, y, z)``
        itself (``reference`` and ``apply`` are accepted for the 3D inference interface)."""
        return VolumeFeatures(dwi=lr)

    def decode(self, features: VolumeFeatures, query) -> torch.Tensor:
        raise InputError("spline_refiner decodes whole output grids (decode_grid), not point "
                         "sets")

    def _scale_channels(self, lr_shape: Sequence[int], out_shape: Sequence[int],
                        like: torch.Tensor) -> torch.Tensor:
        """``(B, 3, *like.shape[2:])``: ``log2(out / in)`` of each axis, constant in space."""
        factors = [math.log2(o / i) for i, o in zip(lr_shape, out_shape)]
        values = torch.tensor(factors, dtype=like.dtype, device=like.device)
        return values.view(1, 3, 1, 1, 1).expand(like.shape[0], 3, *like.shape[2:])

    def _refine(self, cubic: torch.Tensor, scales: Optional[torch.Tensor]) -> torch.Tensor:
        x = cubic if scales is None else torch.cat([cubic, scales.to(cubic.dtype)], 1)
        return cubic + self.body(x).to(cubic.dtype)

    def decode_grid(self, features: VolumeFeatures, out_shape: Sequence[int],
                    progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
        """Every voxel of ``out_shape`` (same field of view as the LR grid): ``(B, 1,
        *out_shape)`` float32. ``progress`` is called with the output planes (axis 0) finished
        by each slab."""
        lr = features.dwi.float()
        out_shape = tuple(int(n) for n in out_shape)
        # In float32 even under bfloat16 autocast: the interpolation is the output's bulk and
        # must be the cubic baseline itself, which bfloat16's 8-bit mantissa would round.
        with torch.autocast(lr.device.type, enabled=False):
            cubic = bspline_resize(lr, out_shape)
        scales = self._scale_channels(lr.shape[2:], out_shape, cubic[:, :1, :1, :1, :1]) \
            if self.use_scale else None
        plane = int(out_shape[1] * out_shape[2]) * cubic.shape[0]
        step = max(1, self.slab_voxels // max(plane, 1))
        if step >= out_shape[0]:
            out = self._refine(cubic, None if scales is None else
                               scales.expand(-1, -1, *out_shape)).float()
            if progress is not None:
                progress(out_shape[0])
            return out
        halo = self.decoder_radius
        out = torch.empty_like(cubic)
        for start in range(0, out_shape[0], step):
            stop = min(out_shape[0], start + step)
            lo, hi = max(0, start - halo), min(out_shape[0], stop + halo)
            window = cubic[:, :, lo:hi]
            channels = None if scales is None else scales.expand(-1, -1, *window.shape[2:])
            out[:, :, start:stop] = self._refine(window, channels)[:, :, start - lo:stop - lo]
            if progress is not None:
                progress(stop - start)
        return out

    def forward(self, lr: torch.Tensor, reference: Optional[torch.Tensor],
                query: Sequence[int]) -> torch.Tensor:
        """``query``: the output shape ``(X, Y, Z)``; returns ``(B, 1, X, Y, Z)``."""
        if not isinstance(query, (tuple, list, torch.Size)):
            raise InputError("spline_refiner decodes whole output grids: pass the output shape")
        return self.decode_grid(self.encode(lr, reference), query)
