"""Residual Dense Network encoder (Zhang et al., CVPR 2018) for 2D or 3D images, without the
upsampler: a feature extractor that keeps the input's spatial size.

Shapes: input ``(B, in_channels, *spatial)``, output ``(B, out_channels, *spatial)`` with
``len(spatial) == dims``.
"""
from __future__ import annotations

import torch
from torch import nn


def conv_nd(dims: int, in_ch: int, out_ch: int, kernel_size: int) -> nn.Module:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    return conv(in_ch, out_ch, kernel_size, padding=kernel_size // 2)


class ResidualDenseBlock(nn.Module):
    """``C`` densely connected 3x3 conv + ReLU layers of growth ``G``, 1x1 fusion, residual."""

    def __init__(self, dims: int, channels: int, growth: int, n_convs: int):
        super().__init__()
        self.layers = nn.ModuleList(
            conv_nd(dims, channels + i * growth, growth, 3) for i in range(n_convs))
        self.fuse = conv_nd(dims, channels + n_convs * growth, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(torch.relu(layer(torch.cat(features, dim=1))))
        return x + self.fuse(torch.cat(features, dim=1))


class RDN(nn.Module):
    """RDN feature extractor.

    Args:
        in_channels: image channels (1 magnitude, 2 real/imaginary, or stacked contrasts).
        G0: feature width. D: number of dense blocks. C: convs per block. G: growth rate.
        out_channels: optional 1x1 projection of the output (CSR-dMRI uses 128); ``None``
            returns the ``G0`` features.
        dims: 2 or 3 spatial dimensions.
    """

    def __init__(self, in_channels: int = 1, G0: int = 64, D: int = 16, C: int = 8, G: int = 64,
                 out_channels: int | None = None, dims: int = 2):
        super().__init__()
        self.dims = dims
        self.sfe1 = conv_nd(dims, in_channels, G0, 3)
        self.sfe2 = conv_nd(dims, G0, G0, 3)
        self.blocks = nn.ModuleList(ResidualDenseBlock(dims, G0, G, C) for _ in range(D))
        self.gff = nn.Sequential(conv_nd(dims, D * G0, G0, 1), conv_nd(dims, G0, G0, 3))
        self.project = conv_nd(dims, G0, out_channels, 1) if out_channels else None
        self.out_channels = out_channels or G0
        # Number of 3x3 convolutions on the longest path: an output voxel depends on inputs
        # up to this many voxels away (needed for exact tiled inference).
        self.receptive_radius = 2 + D * C + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shallow = self.sfe1(x)
        h = self.sfe2(shallow)
        outputs = []
        for block in self.blocks:
            h = block(h)
            outputs.append(h)
        h = self.gff(torch.cat(outputs, dim=1)) + shallow
        return self.project(h) if self.project is not None else h
