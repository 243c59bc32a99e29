"""Tiled decoding of an output grid with bounded memory and the untiled result.

The output grid is cut into tiles; each is decoded from a window that adds a halo of
``model.decoder_radius`` voxels (the reach of the decoder's convolutions at output resolution),
and only the tile's interior is kept, so every kept voxel sees exactly the neighbourhood it
would see in a whole-grid decode. Models whose decoder pools over the whole grid
(``model.has_global_pooling``: Dual-ArbNet's channel attention) get those global statistics
first, layer by layer, accumulated over the tile interiors; pointwise decoders (LIIF) need
neither halo nor pooling.

Models that expose their decoder layer by layer (``model.layerwise``: ``decode_begin`` /
``decoder_layers`` / ``decode_step`` / ``decode_end``, :class:`mrisr.models.base.SRModel`;
Dual-ArbNet) are decoded by :func:`decode_layerwise` instead: the state of the whole grid is
kept between layers and each layer runs once over bands of rows with a halo of one layer's
reach, rather than the whole decoder being recomputed per tile and per pooled layer. Only the
attributes and methods that :class:`~mrisr.models.base.SRModel` and
:class:`~mrisr.models.base.DecoderLayer` declare are used.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Optional

import torch

from mrisr.models.base import SRModel


def tile_windows(shape: tuple[int, ...], tile: int, halo: int
                 ) -> Iterator[tuple[tuple[slice, ...], tuple[slice, ...], tuple[slice, ...]]]:
    """Yield ``(tile, window, interior)``: the tile and its haloed window as slices of the
    grid, and the tile as slices of the window."""
    starts = [range(0, n, tile) for n in shape]
    for corner in itertools.product(*starts):
        tile_idx, window_idx, interior = [], [], []
        for start, n in zip(corner, shape):
            stop = min(start + tile, n)
            w0, w1 = max(0, start - halo), min(n, stop + halo)
            tile_idx.append(slice(start, stop))
            window_idx.append(slice(w0, w1))
            interior.append(slice(start - w0, stop - w0))
        yield tuple(tile_idx), tuple(window_idx), tuple(interior)


@torch.no_grad()
def global_pooling(model: SRModel, encoded, query, tile: int, halo: int) -> list:
    """Per decoder layer, the (average, maximum) of its pooled input over the whole grid,
    computed tile by tile (layer ``i`` needs the statistics of layers ``< i``)."""
    pooled: list = []
    for i, layer in enumerate(model.decoder_layers):
        if not layer.pools_globally:
            pooled.append(None)
            continue
        total, peak, count = 0.0, None, 0
        for _, window, interior in tile_windows(query.shape, tile, halo):
            s, m, c = model.layer_pooling(encoded, query.window(window), i, pooled, interior)
            total = total + s
            peak = m if peak is None else torch.maximum(peak, m)
            count += c
        pooled.append((total / count, peak))
    return pooled


#: Largest fusion-layer activation of a whole grid that :func:`decode_layerwise` keeps instead
#: of computing it twice (by default a 480x480 grid of 32 channels is kept, 960x960 is not).
KEEP_BYTES = 2 ** 25


def _band_query(query, rows: slice):
    """The query restricted to output rows ``rows`` (all columns)."""
    return query.window((rows,) + (slice(None),) * (len(query.shape) - 1))


def _layout(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.ndim == 4 and not t.is_contiguous() and \
        t.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _empty_grid(like: torch.Tensor, shape: tuple) -> torch.Tensor:
    return torch.empty(like.shape[:2] + tuple(shape), dtype=like.dtype, device=like.device,
                       memory_format=_layout(like))


@torch.no_grad()
def decode_layerwise(model: SRModel, encoded, query, tile: int,
                     keep_bytes: Optional[int] = None) -> torch.Tensor:
    """``model.decode(encoded, query)`` of a 2D grid, layer by layer over bands of rows.

    The layer state ``x`` and the decoder state ``h`` of the whole grid stay in memory (updated
    in place); each layer runs once per band of about ``tile**2`` output voxels with a halo of
    ``model.decoder_layer_radius`` rows. A layer that pools globally first accumulates the
    global (average, maximum) of its attention input ``y`` over the bands; ``y`` is kept for the
    whole grid when it takes at most ``keep_bytes``, and otherwise computed again in the second
    pass (the halo rows it needs that an earlier band has already updated are kept aside).
    Equals an untiled decode up to float rounding. Returns ``(B, C, *query.shape)``.
    """
    keep_bytes = KEEP_BYTES if keep_bytes is None else keep_bytes
    shape = query.shape
    n_rows, width = shape
    radius = int(model.decoder_layer_radius)
    rows = max(radius, 1, (tile * tile) // width)

    def cut(rows: int) -> list:
        return [slice(a, min(a + rows, n_rows)) for a in range(0, n_rows, rows)]
    bands = cut(rows)

    def halo(band: slice, r: int) -> slice:
        return slice(max(0, band.start - r), min(n_rows, band.stop + r))

    def inner(band: slice, window: slice) -> slice:
        return slice(band.start - window.start, band.stop - window.start)

    x = h = None
    for band in bands:  # the fusion input and the first IDF state
        xb, hb = model.decode_begin(encoded, _band_query(query, band))
        if x is None:
            x, h = _empty_grid(xb, shape), _empty_grid(hb, shape)
        x[:, :, band] = xb
        h[:, :, band] = hb
    del xb, hb
    keep = x.numel() * x.element_size() <= keep_bytes
    if not keep:  # half-height bands: the second pass's temporaries are then smaller
        bands = cut(max(radius, 1, rows // 2))
    for i, layer in enumerate(model.decoder_layers):
        pooled, y = None, None
        if layer.pools_globally:
            y = torch.empty_like(x) if keep else None
            total, peak = 0.0, None
            for band in bands:
                window = halo(band, radius)
                yb = layer.pre_attention(x[:, :, window])[:, :, inner(band, window)]
                if y is not None:
                    y[:, :, band] = yb
                total = total + yb.sum(dim=(2, 3), keepdim=True)
                m = yb.amax(dim=(2, 3), keepdim=True)
                peak = m if peak is None else torch.maximum(peak, m)
            pooled = (total / (n_rows * width), peak)
        spatial = layer.attention_radius
        saved = None  # the old rows of x just above the band (already updated in place)
        for band in bands:
            if y is not None:  # only the attention is left: y is needed within its 3x3 conv
                window = halo(band, spatial)
                att = layer.attend(y[:, :, window], pooled)
                x[:, :, band] += att[:, :, inner(band, window)]
            else:
                window = halo(band, radius)
                below = x[:, :, band.start:window.stop]
                xw = below if saved is None else torch.cat([saved, below], dim=2)
                new = layer.attend(layer.pre_attention(xw), pooled, inplace=True).add_(xw)[
                    :, :, inner(band, window)]
                del xw
                saved = x[:, :, band.stop - radius:band.stop].clone() if radius else None
                x[:, :, band] = new
            h[:, :, band] = model.decode_step(i, h[:, :, band], x[:, :, band])
        del y
    out = None
    for band in bands:
        part = model.decode_end(encoded, _band_query(query, band), h[:, :, band])
        if out is None:
            out = part.new_empty(part.shape[:2] + tuple(shape))
        out[:, :, band] = part
    return out


@torch.no_grad()
def decode_tiled(model: SRModel, encoded, query, tile: Optional[int] = None) -> torch.Tensor:
    """``model.decode(encoded, query)`` computed in tiles of ``tile`` output voxels per axis
    (``None`` or a tile covering the grid: one decode). Returns ``(B, C, *query.shape)``.
    Decoders exposed layer by layer go through :func:`decode_layerwise`."""
    shape = query.shape
    if tile is None or all(tile >= n for n in shape):
        return model.decode(encoded, query)
    if model.layerwise and len(shape) == 2:
        return decode_layerwise(model, encoded, query, tile)
    halo = int(model.decoder_radius)
    pooled = global_pooling(model, encoded, query, tile, halo) \
        if model.has_global_pooling else None
    out = None
    for tile_idx, window, interior in tile_windows(shape, tile, halo):
        part = model.decode(encoded, query.window(window), pooled) if pooled is not None \
            else model.decode(encoded, query.window(window))
        part = part[(..., *interior)]
        if out is None:
            out = part.new_empty(part.shape[:2] + tuple(shape))
        out[(..., *tile_idx)] = part
    return out
