"""Residual Dense Network encoder (Zhang et al., CVPR 2018) for 2D or 3D images, without the
upsampler: a feature extractor that keeps the input's spatial size.

Shapes: input ``(B, in_channels, *spatial)``, output ``(B, out_channels, *spatial)`` with
``len(spatial) == dims``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mrisr.precision import autocast_active


def channels_last_format(ndim: int) -> torch.memory_format:
    """The channels-last memory format of a ``ndim``-dimensional (4 or 5) tensor."""
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """Channels-last when ``x`` is stored that way (a layout oneDNN convolves faster)."""
    if x.ndim in (4, 5) and x.is_contiguous(memory_format=channels_last_format(x.ndim)) \
            and not x.is_contiguous():
        return channels_last_format(x.ndim)
    return torch.contiguous_format


def prefer_channels_last(x: torch.Tensor) -> bool:
    """Whether convolutions on ``x`` should run channels-last: in 2D always without gradients,
    and in 2D and 3D with gradients under bfloat16 autocast. Measured with oneDNN on a CPU
    (1 thread; 2D 64->64 and 3D 32->32, 3x3(x3)): forward + backward in fp32 is about as fast
    in either layout (so training in fp32 keeps the default layout), in bf16 1.3 (3D) to 1.9
    (2D) times as fast channels-last as channels-first."""
    if torch.is_grad_enabled() and autocast_active(x.device.type):
        return x.ndim in (4, 5)
    return x.ndim == 4 and not torch.is_grad_enabled()


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
        if x.ndim != 4:
            features = [x]
            for layer in self.layers:
                features.append(torch.relu(layer(torch.cat(features, dim=1))))
            return x + self.fuse(torch.cat(features, dim=1))
        features = self._dense_features(x)
        if torch.is_grad_enabled() or not x.is_contiguous(memory_format=torch.channels_last):
            return x + self.fuse(torch.cat(features, dim=1))
        # Without gradients: the 1x1 fusion as a sum of matrix products over the features
        # (channels-last tensors are (pixels, channels) matrices), without concatenating them.
        b, _, h, w = x.shape
        # In the features' dtype: bfloat16 under autocast, which does not cover addmm_.
        out = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) + self.fuse.bias.to(x.dtype)
        start = 0
        weight = self.fuse.weight[:, :, 0, 0].to(x.dtype)
        for f in features:
            width = f.shape[1]
            out.addmm_(f.permute(0, 2, 3, 1).reshape(-1, width), weight[:, start:start + width].T)
            start += width
        return out.reshape(b, h, w, -1).permute(0, 3, 1, 2)

    def _dense_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The block's input and its ``C`` layer outputs, computed "fanned out" (2D).

        Layer ``i`` convolves the concatenation of the input and outputs ``0 .. i-1``; as a
        convolution is linear in its input channels, that is the sum over those features of
        each one's own convolution. So each feature, as soon as it exists, is convolved once
        with the weights of *all* later layers stacked (one conv with ``G * (C - j)`` outputs),
        and layer ``j`` takes the partial sum that is then complete. The arithmetic is the
        same as the concatenating form, but every convolution reads one contiguous feature
        map (no copies of growing concatenations) and gets more output channels. Equal up to
        float rounding (the terms are summed in another order)."""
        n = len(self.layers)
        growth = self.layers[0].out_channels
        layout = _memory_format(x)
        features = [x]
        pending = None  # partial sums of layers j .. n-1: (B, (n - j) * G, H, W)
        start = 0
        for j in range(n):
            f = features[-1]
            width = f.shape[1]
            weight = torch.cat([self.layers[i].weight[:, start:start + width]
                                for i in range(j, n)], dim=0)
            bias = torch.cat([layer.bias for layer in self.layers]) if j == 0 else None
            y = F.conv2d(f, weight, bias, padding=1)
            if pending is None:
                pending = y
            elif torch.is_grad_enabled():
                pending = pending[:, growth:] + y
            else:  # accumulate in place (no new buffer per layer)
                pending = pending[:, growth:].add_(y)
            del y
            start += width
            features.append(torch.relu(pending[:, :growth]).contiguous(memory_format=layout))
        return features


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
        if prefer_channels_last(shallow):
            # The 2D convolutions then run channels-last (the same numbers up to float
            # rounding), and the output keeps that layout. (A 1-channel input is both layouts
            # at once, so the layout is set on the first features.)
            shallow = shallow.contiguous(memory_format=channels_last_format(shallow.ndim))
        h = self.sfe2(shallow)
        outputs = []
        for block in self.blocks:
            h = block(h)
            outputs.append(h)
        h = self.gff(torch.cat(outputs, dim=1)) + shallow
        return self.project(h) if self.project is not None else h
