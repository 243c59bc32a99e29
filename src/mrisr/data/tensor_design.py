"""The log-linear diffusion tensor fit as a linear map on a shell's volumes.

A tensor fit is linear in ``log S``, so a small relative change ``d_k`` of the signal of the
``K`` volumes of one shell changes the fitted tensor by the fit of ``d``. The part of ``d`` that
moves the fitted anisotropy (FA, directions) is ``(P - 11^T / K) d``, ``P`` the projection onto
the fit's design: what :func:`mrisr.training.losses.tensor_loss` penalises in training and
:mod:`mrisr.inference.anisotropy` takes out of a model's detail at run time.
"""
from __future__ import annotations

import torch

__all__ = ["tensor_design", "anisotropic_projection"]


def tensor_design(bvecs: torch.Tensor, bvals: torch.Tensor) -> torch.Tensor:
    """The log-linear tensor fit's design for a group of volumes of one shell.

    ``bvecs``: ``(G, K, 3)``; ``bvals``: ``(G, K)``. Returns ``(G, K, 7)``: a constant column
    (``log S_0`` and whatever scales each volume) and ``b_k / mean(b)`` times the six quadratic
    terms ``g_x^2, g_y^2, g_z^2, 2 g_x g_y, 2 g_x g_z, 2 g_y g_z`` of the unit direction ``g_k``.
    """
    g = bvecs.double()
    g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z = g.unbind(-1)
    quadratic = torch.stack([x * x, y * y, z * z, 2 * x * y, 2 * x * z, 2 * y * z], -1)
    b = bvals.double()
    weight = (b / b.mean(dim=1, keepdim=True).clamp_min(1e-12)).unsqueeze(-1)
    return torch.cat([torch.ones_like(quadratic[..., :1]), weight * quadratic], -1)


def anisotropic_projection(bvecs: torch.Tensor, bvals: torch.Tensor) -> torch.Tensor:
    """``(G, K, K)`` float64: ``P - 11^T / K``, with ``P`` the projection onto the columns of
    :func:`tensor_design`. Applied to a group's relative errors (or corrections) it keeps the
    part that a log-linear tensor fit reads as anisotropy."""
    design = tensor_design(bvecs, bvals)
    return design @ torch.linalg.pinv(design) - 1.0 / design.shape[1]
