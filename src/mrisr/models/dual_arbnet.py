"""Dual-ArbNet (Zhang et al., MICCAI 2023): multi-contrast SR with the target and the reference
each at its own arbitrary scale.

Structure (paper Sec. 2.2, Fig. 1), on a separable query grid (:mod:`mrisr.models.query`):

1. a shared RDN encodes the target LR image and the reference image, each on its own grid;
2. 3x3 feature unfold; both feature maps are resampled onto the output grid (``nearest`` as
   in the paper or ``linear`` as in the reference code);
3. a 5-layer fusion branch (1x1 conv, ReLU, residual block of 3x3 convs, channel + spatial
   attention, outer residual) runs at output resolution;
4. an implicit decoding function (IDF) of sine layers: layer 0 takes the per-pixel
   ``(S_tar, S_ref, relative coordinate)``, layer ``i`` is ``sin((W h + b) * F_fusion^(i))``
   with the target half of the fused features;
5. a skip branch of 1x1 convs on the resampled features is added to the IDF output.

Why the code looks different from a direct transcription: every *linear* operation that
precedes the resampling (the first 1x1 conv of the fusion input and of the skip branch) is
applied on the LR grid and resampled afterwards, which is mathematically identical (both are
linear, and nearest sampling also commutes with pointwise nonlinearities) but costs ``s^2``
times less. The reference stream of the decoder only reconstructs the reference image, which
no loss uses, so it is not computed.

Tensors: images ``(B, C, H, W)`` normalised to about [0, 1]; output ``(B, C, *L)`` on the query
grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from mrisr.models.base import ReferenceUse, SRModel
from mrisr.models.query import relative_offset, sample_grid
from mrisr.models.rdn import RDN, prefer_channels_last
from mrisr.models.registry import register_architecture
from mrisr.precision import float32


@dataclass
class GridQuery:
    """Where to decode.

    target_positions / reference_positions: per spatial axis, ``(B, L_axis)`` (or ``(1, L)``)
        continuous voxel indices of the output grid on the target-LR / reference grid.
    target_spacing / reference_spacing: ``(B, dims)`` output voxel size measured in target-LR /
        reference voxels, i.e. ``1 / scale`` per axis (the IDF's scale input).
    """

    target_positions: list[torch.Tensor]
    target_spacing: torch.Tensor
    reference_positions: Optional[list[torch.Tensor]] = None
    reference_spacing: Optional[torch.Tensor] = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(p.shape[-1] for p in self.target_positions)

    def window(self, index: tuple) -> "GridQuery":
        """The query restricted to ``index`` (one slice per axis of the output grid)."""
        ref = self.reference_positions
        return GridQuery([p[:, i] for p, i in zip(self.target_positions, index)],
                         self.target_spacing,
                         [p[:, i] for p, i in zip(ref, index)] if ref is not None else None,
                         self.reference_spacing)

    def to(self, device, float64: bool = True) -> "GridQuery":
        """Move to ``device``; positions stay float64 unless the device lacks it (MPS)."""
        dtype = torch.float64 if float64 and torch.device(device).type != "mps" else \
            torch.float32

        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype)
        ref = self.reference_positions
        return GridQuery([move(p) for p in self.target_positions], move(self.target_spacing),
                         [move(p) for p in ref] if ref is not None else None,
                         move(self.reference_spacing))


@dataclass
class Encoded:
    """Encoder output on the LR grids, reusable for any number of query grids (tiles)."""

    target_stem: torch.Tensor
    target_skip: torch.Tensor
    target_shape: tuple[int, ...]
    target_image: Optional[torch.Tensor] = None
    reference_stem: Optional[torch.Tensor] = None
    reference_shape: Optional[tuple[int, ...]] = None


def _reducible(x: torch.Tensor) -> torch.Tensor:
    """``x`` in a dtype whose max-reductions are fast: float32 for bfloat16 (torch 2.13's
    bfloat16 ``amax`` on a CPU measured 7-10 times slower than converting and reducing)."""
    return x.float() if x.dtype == torch.bfloat16 else x


def amax(x: torch.Tensor, dim) -> torch.Tensor:
    """``x.amax(dim, keepdim=True)``, computed in float32 for bfloat16 ``x``."""
    return _reducible(x).amax(dim=dim, keepdim=True)


class ChannelSpatialAttention(nn.Module):
    """CBAM: channel attention from global average and max pooling through a shared MLP, then
    spatial attention from channel-wise average and max through a 3x3 conv.

    The channel attention pools over the whole decoded grid. Tiled decoding passes the pooled
    statistics of the whole grid in ``pooled`` (see :meth:`DualArbNet.decode`) so that every
    tile uses the same channel weights as an untiled decode.
    """

    def __init__(self, channels: int, reduction: int = 16, channel: bool = True,
                 spatial: bool = True):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1)) if channel else None
        self.spatial = nn.Conv2d(2, 1, 3, padding=1) if spatial else None

    @staticmethod
    def pool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global (average, maximum) over the spatial axes: two ``(B, C, 1, 1)`` tensors."""
        return x.mean(dim=(2, 3), keepdim=True), amax(x, (2, 3))

    def forward(self, x: torch.Tensor, pooled=None, inplace: bool = False) -> torch.Tensor:
        """``inplace``: scale ``x`` itself (a fresh tensor nobody else reads; no gradients)."""
        if self.mlp is not None:
            avg, mx = pooled if pooled is not None else self.pool(x)
            weight = torch.sigmoid(self.mlp(avg) + self.mlp(mx))
            x = x.mul_(weight) if inplace else x * weight
        if self.spatial is not None:
            wide = _reducible(x)
            maps = torch.cat([wide.mean(dim=1, keepdim=True), amax(wide, 1)], 1)
            weight = torch.sigmoid(self.spatial(maps))
            x = x.mul_(weight) if inplace else x * weight
        return x


class FusionLayer(nn.Module):
    """1x1 conv + ReLU, residual block of ``n_convs`` (3x3 conv + ReLU), attention; residual."""

    def __init__(self, channels: int, n_convs: int, reduction: int, channel_attention: bool,
                 spatial_attention: bool):
        super().__init__()
        self.inp = nn.Conv2d(channels, channels, 1)
        self.body = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1)
                                  for _ in range(n_convs))
        self.attention = ChannelSpatialAttention(channels, reduction, channel_attention,
                                                 spatial_attention)
        #: the channel attention pools over the whole grid
        self.pools_globally = channel_attention
        #: the spatial attention's 3x3 conv reaches one voxel beyond the pre-attention state
        self.attention_radius = 1 if spatial_attention else 0

    def pre_attention(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            y = torch.relu(self.inp(x))
            r = y
            for conv in self.body:
                r = torch.relu(conv(r))
            return y + r
        # Without gradients: the same in place on the fresh conv outputs (less memory).
        y = torch.relu_(self.inp(x))
        r = y
        for conv in self.body:
            r = torch.relu_(conv(r))
        return y + r if r is y else r.add_(y)

    def attend(self, y: torch.Tensor, pooled=None, inplace: bool = False) -> torch.Tensor:
        """The attention applied to the pre-attention state ``y`` (``pooled``: the global
        statistics of the whole grid; ``inplace``: scale ``y`` itself)."""
        return self.attention(y, pooled, inplace=inplace)

    def forward(self, x: torch.Tensor, pooled=None) -> torch.Tensor:
        return x + self.attention(self.pre_attention(x), pooled)


@register_architecture("dualarbnet")
class DualArbNet(SRModel):
    """Dual-ArbNet. See the module docstring.

    Args:
        in_channels: 1 (magnitude) or 2 (real, imaginary); the output has the same channels.
        G0, D, C, G: RDN encoder width, blocks, convs per block, growth.
        fusion_channels: width of the fusion branch; its halves modulate the target stream,
            so the IDF's hidden width is ``fusion_channels // 2``.
        fusion_layers, fusion_convs: number of fusion layers (= modulated IDF layers) and 3x3
            convs in each layer's residual block.
        skip_hidden: width of the skip branch.
        sampling: ``nearest`` (paper) or ``linear`` (reference code) feature resampling.
        reference_grad: train the encoder through the reference path too (the reference code
            encodes the reference under ``no_grad``).
        use_reference / use_scale / use_coord: the ablations of the paper's Table 2.
        channel_attention, spatial_attention: the two halves of the fusion attention.
        image_residual: ``"cubic"`` or ``"linear"`` (``True``) adds the LR image interpolated
            to the output grid to the output, so the network predicts only what interpolation
            misses (not in the paper; it makes short CPU training converge much faster);
            ``False`` leaves the output to the network as in the paper.
    """

    dims = 2
    layerwise = True

    def __init__(self, in_channels: int = 1, G0: int = 64, D: int = 5, C: int = 10, G: int = 64,
                 fusion_channels: int = 128, fusion_layers: int = 5, fusion_convs: int = 4,
                 attention_reduction: int = 16, skip_hidden: int = 64, sampling: str = "nearest",
                 reference_grad: bool = True, use_reference: bool = True, use_scale: bool = True,
                 use_coord: bool = True, channel_attention: bool = True,
                 spatial_attention: bool = True, image_residual: Union[bool, str] = False):
        super().__init__()
        if sampling not in ("nearest", "linear"):
            raise ValueError(f"sampling must be 'nearest' or 'linear', got {sampling!r}")
        if not (use_scale or use_coord):
            raise ValueError("the IDF needs the scale or the coordinate input (or both)")
        self.in_channels = self.out_channels = in_channels
        self.reference_use = ReferenceUse.IMAGE if use_reference else ReferenceUse.NONE
        self.sampling = sampling
        self.reference_grad = reference_grad
        self.use_scale = use_scale
        self.use_coord = use_coord
        if image_residual is True:
            image_residual = "linear"
        if image_residual not in (False, None, "linear", "cubic"):
            raise ValueError(f"image_residual must be false, 'linear' or 'cubic', got "
                             f"{image_residual!r}")
        self.image_residual = image_residual or None
        self.encoder = RDN(in_channels, G0, D, C, G, dims=2)
        unfolded = 9 * G0
        self.stem_target = nn.Conv2d(unfolded, fusion_channels, 1)
        self.stem_reference = nn.Conv2d(unfolded, fusion_channels, 1, bias=False) \
            if use_reference else None
        self.fusion = nn.ModuleList(
            FusionLayer(fusion_channels, fusion_convs, attention_reduction, channel_attention,
                        spatial_attention) for _ in range(fusion_layers))
        hidden = fusion_channels // 2
        n_query = (2 * self.dims if use_scale else 0) + (self.dims if use_coord else 0)
        self.idf_in = nn.Conv2d(n_query, hidden, 1)
        self.idf = nn.ModuleList(nn.Conv2d(hidden, hidden, 1) for _ in range(fusion_layers))
        self.idf_out = nn.Conv2d(hidden, in_channels, 1)
        self.skip_in = nn.Conv2d(unfolded, skip_hidden, 1)
        self.skip_mid = nn.Conv2d(skip_hidden, skip_hidden, 1)
        self.skip_out = nn.Conv2d(skip_hidden, in_channels, 1)
        # Output voxels depend on fused features this many output voxels away (each fusion
        # layer reaches ``decoder_layer_radius``).
        self.decoder_layer_radius = fusion_convs + (1 if spatial_attention else 0)
        self.decoder_radius = fusion_layers * self.decoder_layer_radius
        self.encoder_radius = self.encoder.receptive_radius + 1  # + the 3x3 unfold

    # -- encoder -------------------------------------------------------------------------
    def _features(self, image: torch.Tensor) -> torch.Tensor:
        """Encoder features (not unfolded; see :meth:`_on_unfolded`)."""
        return self.encoder((image - 0.5) / 0.5)

    @staticmethod
    def _on_unfolded(conv: nn.Conv2d, features: torch.Tensor) -> torch.Tensor:
        """``conv`` (a 1x1 conv over the 3x3-unfolded features, channel ``c * 9 + k``) applied
        as the equal 3x3 conv over the features themselves (zero padded like the unfold),
        without materialising the nine-times larger unfolded tensor."""
        weight = conv.weight.reshape(conv.out_channels, features.shape[1], 3, 3)
        return F.conv2d(features, weight, conv.bias, padding=1).contiguous()

    def encode(self, lr: torch.Tensor, reference: Optional[torch.Tensor] = None) -> Encoded:
        """Encode the target LR image ``(B, C, h, w)`` and the reference ``(B, C, hr, wr)``."""
        target = self._features(lr)
        enc = Encoded(target_stem=self._on_unfolded(self.stem_target, target),
                      target_skip=self._on_unfolded(self.skip_in, target),
                      target_shape=tuple(lr.shape[2:]),
                      target_image=lr if self.image_residual else None)
        if self.uses_reference:
            if reference is None:
                raise ValueError("this Dual-ArbNet needs a reference image")
            with torch.set_grad_enabled(self.reference_grad and torch.is_grad_enabled()):
                ref = self._features(reference)
            enc.reference_stem = self._on_unfolded(self.stem_reference, ref)
            enc.reference_shape = tuple(reference.shape[2:])
        return enc

    # -- decoder -------------------------------------------------------------------------
    def _query_features(self, query: GridQuery, enc: Encoded, dtype) -> torch.Tensor:
        shape = query.shape
        batch = enc.target_stem.shape[0]
        parts = []
        if self.use_scale:
            spacing = [query.target_spacing,
                       query.reference_spacing if query.reference_spacing is not None
                       else query.target_spacing]
            for s in spacing:
                parts.append(s.to(dtype).reshape(-1, self.dims, 1, 1).expand(batch, -1, *shape))
        if self.use_coord:
            for axis, pos in enumerate(query.target_positions):
                rel = relative_offset(pos, enc.target_shape[axis]).to(dtype)
                view = [rel.shape[0], 1, 1, 1]
                view[2 + axis] = rel.shape[1]
                parts.append(rel.reshape(view).expand(batch, 1, *shape))
        return torch.cat(parts, dim=1)

    @property
    def has_global_pooling(self) -> bool:
        return any(layer.pools_globally for layer in self.fusion)

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.fusion

    def _fusion_input(self, enc: Encoded, query: GridQuery) -> torch.Tensor:
        x = sample_grid(enc.target_stem, query.target_positions, self.sampling)
        if self.uses_reference:
            x = x + sample_grid(enc.reference_stem, query.reference_positions, self.sampling)
        return x

    def layer_pooling(self, enc: Encoded, query: GridQuery, layer_index: int, pooled: list,
                       interior: tuple) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Sum and maximum of fusion layer ``layer_index``'s attention input over the
        ``interior`` (a tuple of slices) of the window ``query``, given the pooled statistics
        of the earlier layers: the pieces from which tiled decoding assembles the global
        pooling. Returns ``(sum (B, C, 1, 1), max (B, C, 1, 1), voxel count)``."""
        x = self._fusion_input(enc, query)
        for i in range(layer_index):
            x = self.fusion[i](x, pooled[i])
        y = self.fusion[layer_index].pre_attention(x)[(..., *interior)]
        return (y.sum(dim=(2, 3), keepdim=True), amax(y, (2, 3)),
                y.shape[2] * y.shape[3])

    def decode(self, enc: Encoded, query: GridQuery, pooled: Optional[list] = None
               ) -> torch.Tensor:
        """Decode the output grid described by ``query``: ``(B, C, *query.shape)``.

        ``pooled``: per fusion layer, the global (average, maximum) of its attention input over
        the *whole* output grid, when ``query`` is only a window of it (tiled decoding).
        """
        x, h = self.decode_begin(enc, query)
        for i in range(len(self.fusion)):
            x = self.fusion[i](x, pooled[i] if pooled is not None else None)
            h = self.decode_step(i, h, x)
        return self.decode_end(enc, query, h)

    # The pieces of :meth:`decode`, for decoding layer by layer (mrisr.inference.tiling).
    def decode_begin(self, enc: Encoded, query: GridQuery) -> tuple[torch.Tensor, torch.Tensor]:
        """The fusion input and the first IDF state on the grid of ``query``."""
        x = self._fusion_input(enc, query)
        cl = torch.channels_last if prefer_channels_last(x) else torch.contiguous_format
        x = x.contiguous(memory_format=cl)
        with float32(x):  # the scale and coordinate inputs keep their bits under autocast
            h = torch.sin(self.idf_in(self._query_features(query, enc, self.idf_in.weight.dtype)
                                      .contiguous(memory_format=cl)))
        return x, h

    def decode_step(self, i: int, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """IDF layer ``i`` modulated by the target half of fusion layer ``i``'s output ``x``."""
        return torch.sin(self.idf[i](h) * x[:, :x.shape[1] // 2])

    def decode_end(self, enc: Encoded, query: GridQuery, h: torch.Tensor) -> torch.Tensor:
        """The output from the last IDF state ``h`` on the grid of ``query``."""
        out = self.idf_out(h)
        if self.sampling == "nearest":
            skip = self.skip_out(torch.relu(self.skip_mid(torch.relu(enc.target_skip))))
            skip = sample_grid(skip, query.target_positions, "nearest")
        else:
            skip = sample_grid(enc.target_skip, query.target_positions, "linear")
            skip = self.skip_out(torch.relu(self.skip_mid(torch.relu(skip))))
        full = self.idf_out.weight.dtype  # the output in full precision, even under autocast
        out = (out + skip).to(full)
        if enc.target_image is not None:
            out = out + sample_grid(enc.target_image.to(full), query.target_positions,
                                    self.image_residual)
        return out

