"""LIIF (Chen et al., CVPR 2021): local implicit image function, the single-contrast
arbitrary-scale baseline of both papers.

For each query point: the 3x3-unfolded features of the 4 nearest latent codes (local
ensemble), each with the query's offset from that code (in LR voxels x 2, as in LIIF) and the
cell size, go through an MLP; the 4 predictions are blended with the area weights of the
opposite sub-rectangles. Shapes: LR ``(B, C, h, w)``; queries as a :class:`GridQuery`
(decoded in chunks of points to bound memory) or ``(B, P, 2)`` points.

The MLP's first layer is linear in the latent code, so its code part is applied once per LR
voxel when encoding (on the 3x3-unfolded features it is a 3x3 convolution of the features) and
each query reads that projection, adding the offset and cell terms: the same numbers as the
direct form up to float rounding, without running the widest layer ``4 * s**2`` times per LR
voxel.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mrisr.models.base import ReferenceUse, SRModel
from mrisr.models.dual_arbnet import GridQuery
from mrisr.models.rdn import RDN
from mrisr.models.registry import register_architecture
from mrisr.precision import float32


@register_architecture("liif")
class LIIF(SRModel):
    """LIIF with an RDN encoder.

    Args:
        in_channels: image channels (output has the same number).
        G0, D, C, G: RDN encoder. hidden: MLP widths (LIIF: four layers of 256).
        local_ensemble, cell_decode, unfold: LIIF's three components (all on by default).
        chunk: query points decoded per batch item at once.
    """

    dims = 2
    reference_use = ReferenceUse.NONE

    def __init__(self, in_channels: int = 1, G0: int = 64, D: int = 16, C: int = 8, G: int = 64,
                 hidden: tuple = (256, 256, 256, 256), local_ensemble: bool = True,
                 cell_decode: bool = True, unfold: bool = True, chunk: int = 30000):
        super().__init__()
        self.in_channels = self.out_channels = in_channels
        self.local_ensemble = local_ensemble
        self.cell_decode = cell_decode
        self.unfold = unfold
        self.chunk = chunk
        self.encoder = RDN(in_channels, G0, D, C, G, dims=2)
        width = G0 * (9 if unfold else 1) + 2 + (2 if cell_decode else 0)
        layers = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, in_channels))
        self.mlp = nn.Sequential(*layers)
        self.encoder_radius = self.encoder.receptive_radius + (1 if unfold else 0)

    def encode(self, lr: torch.Tensor, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The code part of the MLP's first layer (with its bias) at every LR voxel:
        ``(B, hidden[0], h, w)``, what :meth:`query_points` reads."""
        feat = self.encoder((lr - 0.5) / 0.5)
        first = self.mlp[0]
        c = feat.shape[1]
        if self.unfold:  # a linear map of the 3x3-unfolded code (channel c * 9 + k)
            weight = first.weight[:, :9 * c].reshape(first.out_features, c, 3, 3)
            return F.conv2d(feat, weight, first.bias, padding=1).contiguous()
        weight = first.weight[:, :c].reshape(first.out_features, c, 1, 1)
        return F.conv2d(feat, weight, first.bias).contiguous()

    def query_points(self, feat: torch.Tensor, points: torch.Tensor,
                     cell: torch.Tensor) -> torch.Tensor:
        """feat: :meth:`encode`'s output; points ``(B, P, 2)`` continuous LR indices, cell
        ``(B, 2)`` output voxel size in LR voxels; returns ``(B, P, C)``."""
        b, c, h, w = feat.shape
        first = self.mlp[0]
        n_code = first.in_features - 2 - (2 if self.cell_decode else 0)
        w_rel = first.weight[:, n_code:n_code + 2]
        extra = 0.0
        # The offset and cell terms in float32 (under bf16 autocast too): position inputs.
        if self.cell_decode:  # the same cell term for every query of an item
            with float32(feat):
                extra = ((2.0 * cell).to(first.weight.dtype) @ first.weight[:, n_code + 2:].T
                         )[:, None, :]
        sizes = torch.tensor([h, w], dtype=points.dtype, device=points.device)
        flat = feat.reshape(b, c, h * w)
        base = torch.floor(points) if self.local_ensemble else torch.floor(points + 0.5)
        offsets = [(0, 0), (0, 1), (1, 0), (1, 1)] if self.local_ensemble else [(0, 0)]
        preds, areas = [], []
        for dy, dx in offsets:
            idx = base + torch.tensor([dy, dx], dtype=points.dtype, device=points.device)
            idx = torch.minimum(idx.clamp(min=0), sizes - 1)
            linear = (idx[..., 0] * w + idx[..., 1]).long()
            codes = torch.gather(flat, 2, linear.unsqueeze(1).expand(b, c, -1)).transpose(1, 2)
            rel = 2.0 * (points - idx)
            with float32(feat):
                position = rel.to(w_rel.dtype) @ w_rel.T + extra
            preds.append(self.mlp[1:](codes + position).to(w_rel.dtype))
            areas.append((rel[..., 0] * rel[..., 1]).abs().to(w_rel.dtype) / 4 + 1e-9)
        if len(preds) == 1:
            return preds[0]
        # Each prediction is weighted by the area of the rectangle diagonally opposite to it.
        total = sum(areas)
        return sum(p * a.unsqueeze(-1) for p, a in zip(preds, reversed(areas))) / \
            total.unsqueeze(-1)

    def decode(self, feat: torch.Tensor, query: GridQuery) -> torch.Tensor:
        ys, xs = query.target_positions
        b = feat.shape[0]
        ys, xs = ys.expand(b, -1), xs.expand(b, -1)
        grid = torch.stack(torch.broadcast_tensors(ys[:, :, None], xs[:, None, :]), dim=-1)
        points = grid.reshape(b, -1, 2)
        cell = query.target_spacing.expand(b, -1)
        outs = [self.query_points(feat, points[:, i:i + self.chunk], cell)
                for i in range(0, points.shape[1], self.chunk)]
        out = torch.cat(outs, dim=1)
        return out.transpose(1, 2).reshape(b, -1, ys.shape[1], xs.shape[1])
