"""The interface every mrisr model declares.

A model is an :class:`SRModel`: an ``nn.Module`` that encodes a low-resolution image (and,
when it uses one, a reference) once, and decodes any number of query grids or point sets from
that encoding. Whatever applies a model (inference, evaluation, training, tiling) reads the
attributes declared here instead of probing the model:

=====================  =========================================================================
``dims``               spatial dimensions of what it reads: 2 (slices) or 3 (volumes)
``in_channels``        image channels of the target (1 magnitude, 2 real/imaginary)
``out_channels``       channels of the output (the same as the target's for every model here)
``reference_use``      how a reference is used (:class:`ReferenceUse`); ``uses_reference``
``level_norm``         the input is divided by its attenuation level (3D diffusion models)
``encoder_radius``     LR voxels an encoded voxel depends on: the halo of exact tiled encoding
``decoder_radius``     output voxels an output voxel depends on (0: pointwise decoder)
``has_global_pooling`` the decoder pools over the whole output grid (tiling must pass the
                       pooled statistics of the whole grid)
``grid_output``        the model decodes whole output grids (``decode_grid``), not point sets
                       (``spline_refiner``); ``forward`` then takes the output shape
``layerwise``          the decoder is exposed layer by layer (:meth:`SRModel.decode_begin`,
                       :attr:`SRModel.decoder_layers`, :meth:`SRModel.decode_step`,
                       :meth:`SRModel.decode_end`) for band-wise decoding with bounded memory
``architecture``,      set by :func:`mrisr.models.loading.build_architecture`: the registered
``architecture_args``, name and arguments (what a checkpoint stores) and the preset, if any
``preset``
=====================  =========================================================================

Entry points: :meth:`SRModel.encode` (``lr``, ``reference`` -> an encoding),
:meth:`SRModel.decode` (encoding, query -> output), ``forward`` (both).
"""
from __future__ import annotations

import enum
from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from typing import Any, Optional, Protocol

import torch
from torch import nn


class ReferenceUse(str, enum.Enum):
    """How a model uses a second image besides the low-resolution target."""

    #: no reference (LIIF, ArSSR, the ablations without one)
    NONE = "none"
    #: a reference image on its own grid, at its own scale, encoded beside the target
    #: (Dual-ArbNet)
    IMAGE = "image"
    #: a T1w degraded to the LR grid and stacked as a second input channel (CSR-dMRI)
    LR_CHANNEL = "lr_channel"
    #: a T1w at its own resolution, encoded by a second encoder (CSR-dMRI ``own_resolution``)
    OWN_RESOLUTION = "own_resolution"


class DecoderLayer(Protocol):
    """One layer of a layerwise decoder (Dual-ArbNet's fusion layer), as the band-wise decoder
    of :mod:`mrisr.inference.tiling` drives it: ``layer(x, pooled) == x + attend(
    pre_attention(x), pooled)``."""

    #: the attention pools over the whole grid (channel attention)
    pools_globally: bool
    #: output voxels the attention reaches beyond the pre-attention state (its 3x3 conv)
    attention_radius: int

    def pre_attention(self, x: torch.Tensor) -> torch.Tensor: ...

    def attend(self, y: torch.Tensor, pooled=None, inplace: bool = False) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor, pooled=None) -> torch.Tensor: ...


class SRModel(nn.Module, metaclass=ABCMeta):
    """Base class of every model (see the module docstring for the declared attributes)."""

    dims: int = 2
    in_channels: int = 1
    out_channels: int = 1
    reference_use: ReferenceUse = ReferenceUse.NONE
    level_norm: bool = False
    encoder_radius: int = 0
    decoder_radius: int = 0
    has_global_pooling: bool = False
    grid_output: bool = False
    layerwise: bool = False
    #: output voxels one decoder layer reaches (layerwise decoders)
    decoder_layer_radius: int = 0
    architecture: Optional[str] = None
    architecture_args: Optional[dict] = None
    preset: Optional[str] = None

    @property
    def uses_reference(self) -> bool:
        """Whether :meth:`encode` needs a reference image."""
        return self.reference_use is not ReferenceUse.NONE

    @abstractmethod
    def encode(self, lr: torch.Tensor, reference: Optional[torch.Tensor] = None) -> Any:
        """Encode the LR target ``(B, C, *lr_shape)`` (and the reference) once."""

    @abstractmethod
    def decode(self, features: Any, query: Any) -> torch.Tensor:
        """The output at the points or on the grid described by ``query``."""

    def forward(self, lr: torch.Tensor, reference: Optional[torch.Tensor], query: Any
                ) -> torch.Tensor:
        return self.decode(self.encode(lr, reference), query)

    # -- layerwise decoding (``layerwise`` models only) ---------------------------------------
    @property
    def decoder_layers(self) -> Sequence[DecoderLayer]:
        """The decoder's layers at output resolution, in order."""
        return ()

    def decode_begin(self, features: Any, query: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The first layer's input ``x`` and the first decoder state ``h`` on ``query``."""
        raise NotImplementedError(f"{type(self).__name__} does not decode layer by layer")

    def decode_step(self, i: int, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The decoder state after layer ``i``, whose output is ``x``."""
        raise NotImplementedError(f"{type(self).__name__} does not decode layer by layer")

    def decode_end(self, features: Any, query: Any, h: torch.Tensor) -> torch.Tensor:
        """The output from the last decoder state ``h`` on ``query``."""
        raise NotImplementedError(f"{type(self).__name__} does not decode layer by layer")

    def layer_pooling(self, features: Any, query: Any, layer_index: int, pooled: list,
                      interior: tuple) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Sum, maximum and count of layer ``layer_index``'s pooled input over the
        ``interior`` of the window ``query`` (tiled decoding of ``has_global_pooling``
        models)."""
        raise NotImplementedError(f"{type(self).__name__} does not pool globally")
