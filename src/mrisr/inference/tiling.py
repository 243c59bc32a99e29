"""Tiled decoding of an output grid with bounded memory and the untiled result.

The output grid is cut into tiles; each is decoded from a window that adds a halo of
``model.decoder_radius`` voxels (the reach of the decoder's convolutions at output resolution),
and only the tile's interior is kept, so every kept voxel sees exactly the neighbourhood it
would see in a whole-grid decode. Models whose decoder pools over the whole grid (Dual-ArbNet's
channel attention) get those global statistics first, layer by layer, accumulated over the tile
interiors; pointwise decoders (LIIF) need neither halo nor pooling.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Optional

import torch


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
def global_pooling(model, encoded, query, tile: int, halo: int) -> list:
    """Per fusion layer, the (average, maximum) of its attention input over the whole grid,
    computed tile by tile (layer ``i`` needs the statistics of layers ``< i``)."""
    pooled: list = []
    for i, layer in enumerate(model.fusion):
        if layer.attention.mlp is None:
            pooled.append(None)
            continue
        total, peak, count = 0.0, None, 0
        for _, window, interior in tile_windows(query.shape, tile, halo):
            s, m, c = model.fusion_pooling(encoded, query.window(window), i, pooled, interior)
            total = total + s
            peak = m if peak is None else torch.maximum(peak, m)
            count += c
        pooled.append((total / count, peak))
    return pooled


@torch.no_grad()
def decode_tiled(model, encoded, query, tile: Optional[int] = None) -> torch.Tensor:
    """``model.decode(encoded, query)`` computed in tiles of ``tile`` output voxels per axis
    (``None`` or a tile covering the grid: one decode). Returns ``(B, C, *query.shape)``."""
    shape = query.shape
    if tile is None or all(tile >= n for n in shape):
        return model.decode(encoded, query)
    halo = int(getattr(model, "decoder_radius", 0))
    pooled = global_pooling(model, encoded, query, tile, halo) \
        if getattr(model, "has_global_pooling", False) else None
    out = None
    for tile_idx, window, interior in tile_windows(shape, tile, halo):
        part = model.decode(encoded, query.window(window), pooled) if pooled is not None \
            else model.decode(encoded, query.window(window))
        part = part[(..., *interior)]
        if out is None:
            out = part.new_empty(part.shape[:2] + tuple(shape))
        out[(..., *tile_idx)] = part
    return out
