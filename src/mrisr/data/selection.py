"""Which 2D slices of a volume hold enough brain: shared by the evaluation harness (the
slices it scores) and the training tasks (the slices they draw from)."""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["select_slices"]


def select_slices(target: np.ndarray, mask: np.ndarray, axis: int, min_fraction: float,
                  step: int = 1, max_slices: Optional[int] = None) -> list[int]:
    """Indices of 2D slices of ``target`` along ``axis`` whose brain-mask fraction is at
    least ``min_fraction``: every ``step``-th, at most ``max_slices`` evenly spread."""
    other = tuple(a for a in range(target.ndim) if a != axis)
    fraction = mask.mean(axis=other)
    chosen = [i for i in range(0, target.shape[axis], step) if fraction[i] >= min_fraction]
    if max_slices is not None and len(chosen) > max_slices:
        picks = np.linspace(0, len(chosen) - 1, max_slices).round().astype(int)
        chosen = [chosen[i] for i in picks]
    return chosen
