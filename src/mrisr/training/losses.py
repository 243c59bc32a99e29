"""Training losses: L1 in the image domain plus frequency-domain terms.

* Dual-ArbNet's K-loss compares the centred orthonormal spectra of prediction and target on a
  mask. The paper describes a masked L2 norm with the mask set to 0 in the cut-off (high
  frequency) region; the reference code uses the mean absolute difference with the mask set to
  0 on the central block that the LR input already holds. Both are selectable.
* CSR-dMRI's frequency loss is the mean absolute difference of the (3D) FFTs, no mask.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

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
            kspace_norm: str = "l1") -> tuple[torch.Tensor, dict[str, float]]:
    """``L1 + weight * frequency loss``; returns the loss and its parts for logging."""
    l1 = (pred.float() - target.float()).abs().mean()
    parts = {"l1": float(l1.detach())}
    loss = l1
    if kspace_weight > 0:
        k = frequency_loss(pred, target, n_spatial, lr_shape, kspace_mask, kspace_norm)
        parts["kloss"] = float(k.detach())
        loss = loss + kspace_weight * k
    return loss, parts
