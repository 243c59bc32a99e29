"""CSR-dMRI (Wu et al., MICCAI 2024) and its family: 3D arbitrary-scale SR of diffusion MRI
guided by a T1w image, with ArSSR's decoder and a no-INR baseline as options.

Structure (paper Sec. 2.2): a 3D RDN (:class:`~mrisr.models.rdn.RDN` with ``dims=3``,
upsampler removed, 128 output channels) encodes the LR diffusion-weighted volume and the T1w
image stacked as two channels on the LR grid; each query point reads the feature map by
trilinear interpolation (:func:`~mrisr.models.query.sample_points`); an implicit function of 8
fully connected ReLU layers takes ``cat(coordinate, feature)`` with a residual from its input
to the output of the 4th ReLU, and a last linear layer gives the intensity.

Options, for the paper's comparisons:

* ``use_t1=False``: 1-channel encoder (Table 2's M1; with ``decoder="arssr"`` this is ArSSR).
* ``decoder="arssr"``: ArSSR's decoder (two 4-layer ReLU stages of width 256; the first ends
  with a projection back to the input width, the second takes input + first stage's output).
* ``decoder="baseline"``: no implicit representation (Table 2's Baseline): the trilinearly
  upsampled features through a pointwise (1x1x1 conv) head, no coordinates.
* ``t1_mode="own_resolution"``: the T1w stays on its own (finer) grid, is encoded by a second
  1-channel RDN and read at the same world points (the "dual-arbitrary" setting).

Tensors: volumes ``(B, 1, X, Y, Z)`` (attenuations / scaled T1w, about [0, 1]); queries as a
:class:`PointQuery`; outputs ``(B, 1, P)`` for point sets and ``(B, 1, *out_shape)`` for grids.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch
from torch import nn

from mrisr.models.base import ReferenceUse, SRModel
from mrisr.models.query import (bspline_coefficients, relative_offset, sample_bspline,
                                sample_points)
from mrisr.models.rdn import RDN
from mrisr.models.registry import register_architecture
from mrisr.precision import float32

__all__ = ["PointQuery", "VolumeFeatures", "CSRdMRI", "ArSSR", "ImplicitFunction",
           "ArSSRDecoder", "PointwiseHead", "grid_point_query", "iter_grid_queries"]


@dataclass
class PointQuery:
    """Where to decode: ``P`` points per batch item.

    points: ``(B, P, 3)`` continuous voxel indices on the LR grid (array axis order; voxel
        ``i``'s centre is at ``i``, see :mod:`mrisr.models.query`).
    coords: ``(B, P, 3)`` the points' normalised coordinates in ``[-1, 1]`` on the output grid
        being decoded (the whole volume at inference, the HR patch in training).
    t1_points: ``(B, P, 3)`` the same points as continuous voxel indices on the T1w's own grid
        (only for ``t1_mode="own_resolution"``).
    scales: ``(B, 3)`` output voxels per LR voxel along each axis (only for models with
        ``use_scale``).
    A batch dimension of 1 is broadcast over the batch.
    """

    points: torch.Tensor
    coords: torch.Tensor
    t1_points: Optional[torch.Tensor] = None
    scales: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.points.shape[1])

    def chunk(self, start: int, stop: int) -> "PointQuery":
        """The points ``start .. stop-1``."""
        t1 = self.t1_points[:, start:stop] if self.t1_points is not None else None
        return PointQuery(self.points[:, start:stop], self.coords[:, start:stop], t1,
                          self.scales)

    def to(self, device) -> "PointQuery":
        t1 = self.t1_points.to(device) if self.t1_points is not None else None
        scales = self.scales.to(device) if self.scales is not None else None
        return PointQuery(self.points.to(device), self.coords.to(device), t1, scales)


def _grid_indices(shape: Sequence[int], start: int, stop: int, device=None) -> torch.Tensor:
    """Array indices ``(stop - start, 3)`` of the flat (C-order) voxels ``start .. stop-1``."""
    flat = torch.arange(start, stop, device=device, dtype=torch.int64)
    idx = []
    for n in reversed(shape):
        idx.append(flat % n)
        flat = torch.div(flat, n, rounding_mode="floor")
    return torch.stack(idx[::-1], dim=-1)


def grid_point_query(lr_shape: Sequence[int], out_shape: Sequence[int], start: int = 0,
                     stop: Optional[int] = None, t1_shape: Optional[Sequence[int]] = None,
                     device=None, dtype=torch.float32) -> PointQuery:
    """Query for the flat (C-order) voxels ``start .. stop-1`` of an ``out_shape`` grid covering
    the same field of view as the ``lr_shape`` grid (and the ``t1_shape`` grid), following the
    FOV-preserving convention of :mod:`mrisr.grid`. Batch dimension 1."""
    stop = int(np.prod(out_shape)) if stop is None else stop
    idx = _grid_indices(out_shape, start, stop, device).to(torch.float64)
    out = torch.tensor(list(out_shape), dtype=torch.float64, device=device)

    def positions(shape):
        n = torch.tensor(list(shape), dtype=torch.float64, device=device)
        return ((idx + 0.5) * (n / out) - 0.5).to(dtype)[None]
    coords = ((2 * idx + 1) / out - 1).to(dtype)[None]
    scales = (out / torch.tensor(list(lr_shape), dtype=torch.float64, device=device))
    return PointQuery(positions(lr_shape), coords,
                      positions(t1_shape) if t1_shape is not None else None,
                      scales.to(dtype)[None])


def iter_grid_queries(lr_shape: Sequence[int], out_shape: Sequence[int], chunk: int,
                      t1_shape: Optional[Sequence[int]] = None, device=None
                      ) -> Iterator[tuple[int, int, PointQuery]]:
    """``(start, stop, query)`` over a whole output grid, ``chunk`` voxels at a time, so that
    neither the query nor the decoder's activations of a large grid are held at once."""
    total = int(np.prod(out_shape))
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        yield start, stop, grid_point_query(lr_shape, out_shape, start, stop, t1_shape, device)


@dataclass
class VolumeFeatures:
    """Encoder output: ``dwi`` features ``(B, F, *lr_shape)``; with
    ``t1_mode="own_resolution"``, the T1w's ``(B, F, *t1_shape)``; with an image residual,
    ``residual``: the LR DWI ``(B, 1, *lr_shape)`` (``linear``) or its cubic B-spline
    coefficients (``bspline``)."""

    dwi: torch.Tensor
    t1: Optional[torch.Tensor] = None
    residual: Optional[torch.Tensor] = None


def exact_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in float32 even under bfloat16 autocast: for the layers that read the
    query's coordinates (a bfloat16 coordinate in [-1, 1] is off by up to 1/256, which is
    a large part of an output voxel)."""
    weight = getattr(layer, "weight", None)  # nn.Identity has none
    dtype = weight.dtype if weight is not None else \
        (torch.float32 if x.dtype == torch.bfloat16 else x.dtype)
    with float32(x):
        return layer(x.to(dtype))


class ImplicitFunction(nn.Module):
    """CSR-dMRI's implicit function: ``n_layers`` Linear+ReLU of width ``hidden``, the input
    (projected when its width differs) added to the output of ReLU number ``skip_at``, then a
    linear layer to ``out_channels``. ``(..., in_features) -> (..., out_channels)``.
    ``zero_output`` starts the last layer at zero (for a decoder that corrects an
    interpolation, so training starts from that interpolation)."""

    def __init__(self, in_features: int, hidden: int = 256, n_layers: int = 8, skip_at: int = 4,
                 out_channels: int = 1, zero_output: bool = False):
        super().__init__()
        if not 1 <= skip_at <= n_layers:
            raise ValueError(f"skip_at must be in 1..{n_layers}, got {skip_at}")
        widths = [in_features] + [hidden] * n_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.skip = nn.Identity() if in_features == hidden else \
            nn.Linear(in_features, hidden, bias=False)
        self.skip_at = skip_at
        self.out = nn.Linear(hidden, out_channels)
        if zero_output:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, layer in enumerate(self.layers, start=1):
            h = torch.relu(exact_linear(layer, h) if i == 1 else layer(h))
            if i == self.skip_at:
                h = h + exact_linear(self.skip, x)
        return self.out(h)


class ArSSRDecoder(nn.Module):
    """ArSSR's decoder: stage one maps the input through ``depth`` ReLU layers back to the
    input width; stage two decodes ``input + stage_one(input)`` with ``depth`` layers, the last
    one linear. ``(..., in_features) -> (..., out_channels)``."""

    def __init__(self, in_features: int, hidden: int = 256, depth: int = 4,
                 out_channels: int = 1):
        super().__init__()
        if depth < 2:
            raise ValueError(f"ArSSR decoder depth must be at least 2, got {depth}")

        def stage(out_width: int, final_relu: bool) -> nn.Sequential:
            widths = [in_features] + [hidden] * (depth - 1) + [out_width]
            layers: list[nn.Module] = []
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
                layers.append(nn.Linear(a, b))
                if i < depth - 1 or final_relu:
                    layers.append(nn.ReLU(inplace=True))
            return nn.Sequential(*layers)
        self.stage_one = stage(in_features, final_relu=True)
        self.stage_two = stage(out_channels, final_relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def run(stage: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
            return stage[1:](exact_linear(stage[0], h))  # the layer that reads x: float32
        return run(self.stage_two, x + run(self.stage_one, x).to(x.dtype))


class PointwiseHead(nn.Module):
    """The no-INR baseline's head: 1x1x1 convolutions (pointwise linear layers with ReLU in
    between) on the upsampled features. ``(..., in_features) -> (..., out_channels)``."""

    def __init__(self, in_features: int, hidden: int = 64, n_layers: int = 2,
                 out_channels: int = 1):
        super().__init__()
        widths = [in_features] + [hidden] * (n_layers - 1) + [out_channels]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            if i:
                layers.append(nn.ReLU(inplace=True))
            layers.append(nn.Linear(a, b))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_architecture("csr_dmri")
class CSRdMRI(SRModel):
    """CSR-dMRI and its ablations (see the module docstring).

    Args:
        G0, D, C, G: RDN width, dense blocks, convs per block, growth (ArSSR's RDN: 64, 8, 3,
            64).
        feature_channels: encoder output channels (the paper: 128).
        hidden: decoder width (256 in the paper and ArSSR).
        n_layers, skip_at: CSR decoder depth and the ReLU that receives the input residual.
        use_t1: encode the T1w image too (2 input channels on the LR grid).
        use_coord: feed a coordinate of the query point to the decoder.
        coordinate: which one: ``absolute`` (the paper and ArSSR: the position on the output
            grid in ``[-1, 1]``, normalised over the HR patch in training and over the volume
            at inference) or ``relative`` (the offset from the nearest LR voxel centre in half
            voxels, in ``[-1, 1)``: the same in training and inference, on any field of view).
        use_scale: feed the query's cell size (LR voxels per output voxel, per axis) to the
            decoder, so one model can tell x2 from x4.
        decoder: ``csr``, ``arssr`` or ``baseline``.
        t1_mode: ``lr_channel`` (the paper: T1w degraded to the LR grid, stacked as channel 2)
            or ``own_resolution`` (T1w on its own grid, second encoder).
        chunk: query points per decoder call in :meth:`decode_grid`.
        image_residual: ``"bspline"`` adds the LR DWI interpolated at the query point by a
            cubic B-spline (the interpolation of the training degradation and of the Bicubic
            baseline) to the decoder's output, so the network learns only what interpolation
            misses; ``"linear"`` uses trilinear interpolation; ``False`` (the paper) none.
            The CSR decoder's last layer then starts at zero: an untrained model is the
            interpolation.
        t1_encoder: RDN sizes (``G0, D, C, G, out_channels``) of the second encoder of
            ``own_resolution``; missing keys take the DWI encoder's.
        level_norm: a data convention, not a layer: the model reads each diffusion volume
            divided by its :func:`~mrisr.data.dwi.attenuation_level` (training divides the
            patches by their volume's level, inference the LR volume by its own and multiplies
            the output back), so a b=2500 shell looks like the b=1000 one it was trained on.
            ``False`` (the paper): the attenuations as they are.
    """

    in_channels = 1
    out_channels = 1
    dims = 3

    def __init__(self, G0: int = 64, D: int = 8, C: int = 3, G: int = 64,
                 feature_channels: int = 128, hidden: int = 256, n_layers: int = 8,
                 skip_at: int = 4, use_t1: bool = True, use_coord: bool = True,
                 decoder: str = "csr", t1_mode: str = "lr_channel", chunk: int = 2 ** 16,
                 image_residual: Union[bool, str] = False, coordinate: str = "absolute",
                 use_scale: bool = False, t1_encoder: Optional[dict] = None,
                 level_norm: bool = False):
        super().__init__()
        self.level_norm = bool(level_norm)
        if coordinate not in ("absolute", "relative"):
            raise ValueError(f"coordinate must be absolute or relative, got {coordinate!r}")
        if image_residual not in (False, None, "linear", "bspline"):
            raise ValueError(f"image_residual must be false, 'linear' or 'bspline', got "
                             f"{image_residual!r}")
        self.image_residual = image_residual or None
        if decoder not in ("csr", "arssr", "baseline"):
            raise ValueError(f"decoder must be csr, arssr or baseline, got {decoder!r}")
        if t1_mode not in ("lr_channel", "own_resolution"):
            raise ValueError(f"t1_mode must be lr_channel or own_resolution, got {t1_mode!r}")
        self.use_t1 = use_t1
        self.t1_mode = t1_mode if use_t1 else None
        self.reference_use = ReferenceUse(t1_mode) if use_t1 else ReferenceUse.NONE
        # The baseline has no implicit function, hence no coordinate input.
        self.use_coord = use_coord and decoder != "baseline"
        self.coordinate = coordinate
        self.use_scale = use_scale and decoder != "baseline"
        self.decoder_kind = decoder
        self.chunk = chunk
        stacked = use_t1 and t1_mode == "lr_channel"
        self.encoder = RDN(2 if stacked else 1, G0, D, C, G, out_channels=feature_channels,
                           dims=3)
        self.encoder_radius = self.encoder.receptive_radius
        self.t1_encoder = None
        width = feature_channels + (3 if self.use_coord else 0) + (3 if self.use_scale else 0)
        if use_t1 and t1_mode == "own_resolution":
            sizes = {"G0": G0, "D": D, "C": C, "G": G, "out_channels": feature_channels,
                     **(t1_encoder or {})}
            self.t1_encoder = RDN(1, sizes["G0"], sizes["D"], sizes["C"], sizes["G"],
                                  out_channels=sizes["out_channels"], dims=3)
            width += sizes["out_channels"]
        if decoder == "csr":
            self.decoder = ImplicitFunction(width, hidden, n_layers, skip_at,
                                            zero_output=self.image_residual is not None)
        elif decoder == "arssr":
            self.decoder = ArSSRDecoder(width, hidden)
        else:
            self.decoder = PointwiseHead(width, hidden)

    # -- encoder -------------------------------------------------------------------------
    def encode(self, lr: torch.Tensor, reference: Optional[torch.Tensor] = None,
               apply: Optional[Callable[[nn.Module, torch.Tensor], torch.Tensor]] = None
               ) -> VolumeFeatures:
        """Encode the LR volume ``(B, 1, x, y, z)`` and the T1w ``reference``: ``(B, 1, x, y, z)``
        on the LR grid (``lr_channel``) or ``(B, 1, *t1_shape)`` (``own_resolution``).

        ``apply(encoder, input)`` runs an encoder on its input (default: ``encoder(input)``);
        whole-volume inference passes a tiled runner (:mod:`mrisr.inference.volume3d`)."""
        def run(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
            # Features in the input's precision (bfloat16 under autocast otherwise), so that
            # the decoder's trilinear reads sample at exact positions.
            return (apply(encoder, x) if apply is not None else encoder(x)).to(lr.dtype)
        residual = None
        if self.image_residual == "bspline":
            with float32(lr):  # interpolation stays float32 under autocast
                residual = bspline_coefficients(lr)
        elif self.image_residual == "linear":
            residual = lr
        if not self.use_t1:
            return VolumeFeatures(run(self.encoder, lr), residual=residual)
        if reference is None:
            raise ValueError("this CSR-dMRI model needs a T1w reference image")
        if self.t1_mode == "lr_channel":
            if reference.shape[2:] != lr.shape[2:]:
                raise ValueError(f"T1w of shape {tuple(reference.shape[2:])} is not on the LR "
                                 f"grid {tuple(lr.shape[2:])}")
            return VolumeFeatures(run(self.encoder, torch.cat([lr, reference], dim=1)),
                                  residual=residual)
        return VolumeFeatures(run(self.encoder, lr), run(self.t1_encoder, reference), residual)

    # -- decoder -------------------------------------------------------------------------
    def decode(self, features: VolumeFeatures, query: PointQuery) -> torch.Tensor:
        """Intensities at the query points: ``(B, 1, P)``."""
        b = features.dwi.shape[0]
        points = query.points.expand(b, -1, -1)
        dtype = features.dwi.dtype  # full precision: the decoder reads it with exact_linear
        parts = []
        if self.use_coord:
            if self.coordinate == "absolute":
                parts.append(query.coords.expand(b, -1, -1).to(dtype))
            else:
                sizes = features.dwi.shape[2:]
                parts.append(torch.stack([relative_offset(points[..., axis], n)
                                          for axis, n in enumerate(sizes)], dim=-1).to(dtype))
        if self.use_scale:
            if query.scales is None:
                raise ValueError("this model reads the scale: query.scales is missing")
            cell = (1 / query.scales.to(dtype)).expand(b, -1)
            parts.append(cell[:, None, :].expand(-1, points.shape[1], -1))
        parts.append(sample_points(features.dwi, points).to(dtype))
        if features.t1 is not None:
            if query.t1_points is None:
                raise ValueError("t1_mode='own_resolution' needs query.t1_points")
            parts.append(sample_points(features.t1, query.t1_points.expand(b, -1, -1))
                         .to(dtype))
        out = self.decoder(torch.cat(parts, dim=-1)).to(dtype)
        if features.residual is not None:
            out = out + (sample_bspline(features.residual, points)
                         if self.image_residual == "bspline"
                         else sample_points(features.residual, points))
        return out.transpose(1, 2)

    def decode_grid(self, features: VolumeFeatures, out_shape: Sequence[int],
                    chunk: Optional[int] = None) -> torch.Tensor:
        """Decode every voxel of ``out_shape`` (same FOV as the LR grid), ``chunk`` points at a
        time: ``(B, 1, *out_shape)``."""
        chunk = chunk or self.chunk
        b = features.dwi.shape[0]
        out_shape = tuple(int(n) for n in out_shape)
        out = features.dwi.new_empty((b, 1, int(np.prod(out_shape))), dtype=torch.float32)
        t1_shape = features.t1.shape[2:] if features.t1 is not None else None
        for start, stop, query in iter_grid_queries(features.dwi.shape[2:], out_shape, chunk,
                                                    t1_shape, features.dwi.device):
            out[:, :, start:stop] = self.decode(features, query)
        return out.reshape(b, 1, *out_shape)

    def forward(self, lr: torch.Tensor, reference: Optional[torch.Tensor],
                query: Union[PointQuery, Sequence[int]]) -> torch.Tensor:
        """``query``: a :class:`PointQuery` (returns ``(B, 1, P)``) or an output shape (returns
        the whole grid ``(B, 1, *shape)``)."""
        features = self.encode(lr, reference)
        if isinstance(query, PointQuery):
            return self.decode(features, query)
        return self.decode_grid(features, query)


@register_architecture("arssr")
class ArSSR(CSRdMRI):
    """ArSSR (Wu et al., JBHI 2022) as the single-contrast member of the family: RDN encoder
    (G0 = G = 64, D = 8, C = 3, 128 features), ArSSR decoder, no T1w."""

    def __init__(self, G0: int = 64, D: int = 8, C: int = 3, G: int = 64,
                 feature_channels: int = 128, hidden: int = 256, use_coord: bool = True,
                 chunk: int = 2 ** 16, level_norm: bool = False):
        super().__init__(G0, D, C, G, feature_channels, hidden, use_t1=False,
                         use_coord=use_coord, decoder="arssr", chunk=chunk,
                         level_norm=level_norm)
