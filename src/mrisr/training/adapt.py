"""Test-time adaptation: fine-tune a copy of a 2D model on pairs made from the user's own scan.

The low-resolution input is the only truth there is about the scan's contrast, noise and
anatomy, so it is used as the *high-resolution* side of training pairs (the self-supervised
idea of ZSSR and SMORE, here with the reference contrast):

* **In-plane upscaling** (every factor > 1 along the slice plane): slices of the input along the
  slice axis are degraded again by the requested in-plane factor with the k-space crop; the
  reference, brought to the input's resolution, stands at full resolution beside them, as the
  reference stands beside the input at upscaling time.
* **Thick slices** (one axis upscaled, the others ~1): the input's own high-resolution planes
  (perpendicular to the thick axis) are degraded along one in-plane axis by the thick factor
  with a box slice profile, which is the problem the model meets through-plane.

Every step draws a batch from ``(seed, step)`` as training does (:mod:`mrisr.training.slices`);
the result is a fine-tuned *copy*, the given model is not changed.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from mrisr.data.intensity import robust_max
from mrisr.errors import InputError
from mrisr.models.base import SRModel
from mrisr.training.config import (DataConfig, DegradationMix, OptimConfig, Phase, RunConfig,
                                   SourceSpec, TrainConfig)
from mrisr.training.slices import SlicePatchTask, SliceVolumes, Source, TrainingVolume
from mrisr.training.trainer import _batch_to

#: Steps of ``mrisr upscale --adapt`` without a number: about a minute for one volume on two
#: CPU cores with the compact presets (docs/BENCHMARKS.md).
DEFAULT_ADAPT_STEPS = 40


@dataclass
class AdaptResult:
    model: nn.Module
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    mode: str = ""
    pair_scale: float = 1.0

    def describe(self) -> dict:
        return {"steps": len(self.losses), "mode": self.mode, "pair_scale": self.pair_scale,
                "seconds": round(self.seconds, 2),
                "loss_first": self.losses[0] if self.losses else None,
                "loss_last": self.losses[-1] if self.losses else None}


def pair_setup(factors: Sequence[float], slice_axis: int) -> tuple[str, int, float]:
    """``(mode, axis whose slices make the pairs, pair scale)`` for per-axis upscaling
    ``factors`` (output / input voxels) of a volume upscaled in slices along ``slice_axis``."""
    f = np.asarray(factors, dtype=np.float64)
    thick = int(np.argmax(f))
    others = np.delete(f, thick)
    if f[thick] > 1.05 and np.all(others < 1.05):
        return "thick_slice", thick, float(np.round(f[thick], 1))
    inplane = np.delete(f, slice_axis)
    return "inplane", slice_axis, float(np.round(max(np.mean(inplane), 1.0), 1))


def adapt_config(mode: str, pair_scale: float, steps: int, batch_size: int, patch: int,
                 lr: float, seed: int, loss=None) -> TrainConfig:
    """The training settings of one adaptation (see the module docstring)."""
    thick = mode == "thick_slice"
    mix = DegradationMix(kinds={"kspace": 1.0}, thick_slice=1.0 if thick else 0.0,
                         thick_scale_range=[pair_scale, pair_scale], thick_profiles={"box": 1.0},
                         thickness_range=[1.0, 1.0], reference_kinds={"kspace": 1.0})
    cfg = TrainConfig(
        data=DataConfig(patch=patch, augment=True, degradations=mix, min_brain_fraction=0.05),
        curriculum=[Phase(name="adapt", steps=steps, target_scales=[pair_scale],
                          reference={"hr": 1.0})],
        optim=OptimConfig(lr=lr, batch_size=batch_size),
        run=RunConfig(seed=seed), output="")
    if loss is not None:
        cfg.loss = loss
    return cfg


def adapt_model(model: SRModel, target: np.ndarray, factors: Sequence[float],
                slice_axis: int, reference: Optional[np.ndarray] = None,
                steps: int = DEFAULT_ADAPT_STEPS, *, lr: float = 1e-4, batch_size: int = 4,
                patch: int = 24, seed: int = 0, device: Optional[torch.device] = None,
                loss=None, progress: Optional[Callable[[int], None]] = None) -> AdaptResult:
    """Fine-tune a copy of ``model`` on pairs made from ``target``.

    target: the low-resolution input ``(X, Y, Z)`` (magnitude, any units). reference: the
    reference contrast on the *same grid* as ``target`` (brought to its resolution), or
    ``None`` for models without reference. factors: the per-axis upscaling that will be asked
    of the model; slice_axis: the axis along which it runs. ``loss``: a
    :class:`~mrisr.training.config.LossConfig` (default: the training default).
    """
    if steps < 1:
        raise InputError(f"adaptation needs at least one step, got {steps}")
    uses_ref = model.uses_reference
    if uses_ref and reference is None:
        raise InputError("adaptation of a reference-guided model needs the reference")
    target = np.abs(np.asarray(target, dtype=np.float32))
    mode, axis, pair_scale = pair_setup(factors, slice_axis)
    mask = target > 0.05 * robust_max(target)
    images = {"target": target}
    if uses_ref:
        images["reference"] = np.abs(np.asarray(reference, dtype=np.float32))
    volume = TrainingVolume("input", images, mask,
                            [("target", "reference" if uses_ref else None)])
    spec = SourceSpec(name="input", kind="images", files=["input"], slice_axes=[axis])
    cfg = adapt_config(mode, pair_scale, steps, batch_size, patch, lr, seed, loss)
    volumes = SliceVolumes.from_sources([Source(spec, [volume])], 0.05, uses_ref)
    task = SlicePatchTask(cfg, volumes, needs_reference=uses_ref)
    device = device or next(model.parameters()).device
    net = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        batch = _batch_to(task.batch(step), device)
        value, _ = task.loss(net, batch)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        losses.append(float(value.detach()))
        if progress:
            progress(1)
    net.eval()
    return AdaptResult(net, losses, time.perf_counter() - t0, mode, pair_scale)
