"""Training losses: L1 in the image domain plus frequency-domain terms.

* Dual-ArbNet's K-loss compares the centred orthonormal spectra of prediction and target on a
  mask. The paper describes a masked L2 norm with the mask set to 0 in the cut-off (high
  frequency) region; the reference code uses the mean absolute difference with the mask set to
  0 on the central block that the LR input already holds. Both are selectable.
* CSR-dMRI's frequency loss is the mean absolute difference of the (3D) FFTs, no mask.
* The angular loss (mrisr's, for diffusion series): the spread across gradient directions of
  each voxel's relative error, which a tensor fit turns into FA error.
* The tensor loss (mrisr's): only the part of that spread which the tensor fit keeps, the error
  of the fitted anisotropy.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from mrisr.data.tensor_design import anisotropic_projection
from mrisr.degradation.kspace import centered_fft, kspace_lowpass_mask


def frequency_loss(pred: torch.Tensor, target: torch.Tensor, n_spatial: int,
                   lr_shape: Sequence[int] | None = None, mask: str = "all",
                   norm: str = "l1") -> torch.Tensor:
    """Frequency-domain distance over the last ``n_spatial`` axes.

    mask: ``all`` (CSR-dMRI), ``unseen`` (frequencies outside the central ``lr_shape`` block:
    the reference code's K-loss) or ``seen`` (only that block: the paper's description).
    norm: ``l1`` (mean absolute difference) or ``l2`` (root of the mean squared difference).
    """
    # Spectra in full precision even under autocast; complex inputs (real/imag images) stay so.
    def spectrum(x):
        return centered_fft(x if x.is_complex() else x.float(), n_spatial)
    diff = spectrum(pred) - spectrum(target)
    if mask != "all":
        if lr_shape is None:
            raise ValueError("a masked frequency loss needs the LR shape")
        known = kspace_lowpass_mask(pred.shape[-n_spatial:], lr_shape, device=pred.device)
        keep = ~known if mask == "unseen" else known
        diff = diff[..., keep]
        if diff.numel() == 0:  # e.g. x1: the LR input already holds every frequency
            return 0 * pred.float().sum()
    if norm == "l1":
        return diff.abs().mean()
    if norm == "l2":
        return torch.sqrt((diff.abs() ** 2).mean() + 1e-12)
    raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")


def sr_loss(pred: torch.Tensor, target: torch.Tensor, n_spatial: int, kspace_weight: float = 0.0,
            lr_shape: Sequence[int] | None = None, kspace_mask: str = "unseen",
            kspace_norm: str = "l1", pixel_norm: str = "l1"
            ) -> tuple[torch.Tensor, dict[str, float]]:
    """``pixel loss + weight * frequency loss``; returns the loss and its parts for logging.

    ``pixel_norm``: ``l1`` (mean absolute difference) or ``l2`` (root of the mean squared
    difference, on the scale of ``l1``). The logged ``l1`` part is the mean absolute difference
    either way, so logs of both compare."""
    diff = pred.float() - target.float()
    l1 = diff.abs().mean()
    parts = {"l1": float(l1.detach())}
    if pixel_norm == "l1":
        loss = l1
    elif pixel_norm == "l2":
        loss = torch.sqrt(diff.square().mean() + 1e-12)
    else:
        raise ValueError(f"pixel_norm must be 'l1' or 'l2', got {pixel_norm!r}")
    if kspace_weight > 0:
        k = frequency_loss(pred, target, n_spatial, lr_shape, kspace_mask, kspace_norm)
        parts["kloss"] = float(k.detach())
        loss = loss + kspace_weight * k
    return loss, parts


def angular_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                 floor: float = 0.05) -> torch.Tensor:
    """Spread across the volumes of a group of each voxel's relative error.

    ``pred``, ``target``: ``(G, K, ...)``, ``K`` volumes (gradient directions, shells) of the
    same place, each of ``G`` groups; ``mask``: same shape, bool, the voxels that count (all
    when ``None``). The relative error ``d_k = (pred_k - target_k) / max(target_k, floor)`` is
    to first order the error of ``log S_k`` that a log-linear tensor fit sees: its mean over
    the group moves the mean diffusivity, its deviation from that mean moves the anisotropy.
    Returns the mean over counted voxels of ``|d_k - mean_k d_k|``; ``floor`` (in the units of
    ``target``, about 1 for a volume normalised to its robust maximum) keeps the ratio finite
    where there is no signal. A correction that is the same relative sharpening in every
    direction scores 0, whatever its size.
    """
    if pred.shape != target.shape or pred.dim() < 3:
        raise ValueError(f"angular_loss needs equal (groups, volumes, ...) shapes, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = pred.float(), target.float()
    relative = (pred - target) / target.clamp_min(floor)
    if mask is None:
        return (relative - relative.mean(dim=1, keepdim=True)).abs().mean()
    # A voxel counts in every volume of its group or in none, so the mean is over the same K.
    keep = mask.all(dim=1, keepdim=True).to(relative.dtype)
    centred = relative - (relative * keep).mean(dim=1, keepdim=True)
    return (centred.abs() * keep).sum() / (keep.sum() * pred.shape[1]).clamp_min(1.0)


def tensor_loss(pred: torch.Tensor, target: torch.Tensor, bvecs: torch.Tensor,
                bvals: torch.Tensor, mask: torch.Tensor | None = None,
                floor: float = 0.05) -> torch.Tensor:
    """Error of the anisotropy that a log-linear tensor fit reads from each voxel of a group.

    ``pred``, ``target``: ``(G, K, ...)``, ``K`` diffusion-weighted volumes of one shell at the
    same place; ``bvecs`` ``(G, K, 3)`` and ``bvals`` ``(G, K)`` their gradients; ``mask``: same
    shape as ``pred``, bool. The relative error ``d_k = (pred_k - target_k) / max(target_k,
    floor)`` is to first order the error of ``log S_k``; the fit is linear, so the error of the
    fitted tensor is the fit of ``d`` (:func:`~mrisr.data.tensor_design.tensor_design`). Its
    constant and isotropic part (the mean over the group, which moves ``S_0`` and the mean
    diffusivity) is left out; what
    remains is ``e = (P - 11^T / K) d`` with ``P`` the projection onto the design's columns:
    the anisotropic tensor error, as signal. Returns the mean over counted voxels of
    ``sqrt(mean_k e_k^2)``.

    The projection depends only on the span of the quadratic terms, which a rotation or
    reflection of every direction of the group leaves as it is: the flips and axis permutations
    of ``dmri.augment`` need no reorientation of the b-vectors. Of the ``K - 1`` dimensions of
    the spread across ``K`` directions, only the 5 that move the tensor count; the rest (noise,
    crossing fibres, what the fit discards) costs nothing, unlike in :func:`angular_loss`.
    """
    if pred.shape != target.shape or pred.dim() < 3:
        raise ValueError(f"tensor_loss needs equal (groups, volumes, ...) shapes, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    groups, k = pred.shape[:2]
    if bvecs.shape != (groups, k, 3) or bvals.shape != (groups, k):
        raise ValueError(f"tensor_loss needs b-vectors {(groups, k, 3)} and b-values "
                         f"{(groups, k)}, got {tuple(bvecs.shape)} and {tuple(bvals.shape)}")
    # A few small matrices: in float64 on the CPU, which every device's tensors can reach.
    anisotropic = anisotropic_projection(bvecs.detach().cpu(), bvals.detach().cpu()).to(
        device=pred.device, dtype=torch.float32)
    pred, target = pred.float(), target.float()
    relative = ((pred - target) / target.clamp_min(floor)).reshape(groups, k, -1)
    if mask is None:
        keep = torch.ones_like(relative[:, :1])
    else:
        # A voxel counts in every volume of its group or in none, as in the fit.
        keep = mask.reshape(groups, k, -1).all(dim=1, keepdim=True).to(relative.dtype)
    error = anisotropic @ (relative * keep)
    per_voxel = torch.sqrt(error.square().mean(dim=1, keepdim=True) + 1e-12)
    return (per_voxel * keep).sum() / keep.sum().clamp_min(1.0)
