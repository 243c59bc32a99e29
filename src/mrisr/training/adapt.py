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

**Never worse than the model given** (:func:`finetune_held_out`): a share of the pairs (whole
slices of the input, contiguous blocks of them: :data:`HELD_OUT_FRACTION`) is never trained
on; its loss is measured before the first step (the unadapted model) and every
:data:`CHECK_EVERY` steps. Adaptation stops after :data:`PATIENCE` checks without a new best
or when :data:`DEFAULT_ADAPT_SECONDS` have passed, and the copy with the lowest held-out loss is
used only when that loss is at least :data:`MIN_IMPROVEMENT` below the unadapted model's;
otherwise the model given is returned unchanged. The training loss cannot make that call: it
is measured on a new random batch at each step and on the pairs being fitted. A lower held-out
loss does not promise a better output either (the pairs are the input reduced once more): on
co-registered brats volumes at x2 the copy it chose cost 0.6-1.1 dB
(docs/benchmarks/cross_dataset.md, "Adaptation that never harms"), which is why
``mrisr upscale`` adapts by default only where it was measured to help
(:func:`mrisr.inference.decisions.decide_adaptation`).
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
#: Share of the self-supervised pairs held out to judge the adapted copy (never trained on).
HELD_OUT_FRACTION = 0.2
#: Batches (of the training batch size) of held-out pairs, fixed for the whole adaptation.
HELD_OUT_BATCHES = 4
#: Steps between two measurements of the held-out loss.
CHECK_EVERY = 5
#: Measurements without a new lowest held-out loss after which adaptation stops.
PATIENCE = 2
#: Relative decrease of the held-out loss, below the unadapted model's, that the adapted copy
#: must reach to be used (a smaller one is within what the choice of held-out pairs moves).
MIN_IMPROVEMENT = 0.01
#: The same for thick-slice pairs (in-plane planes blurred along one axis), which stand further
#: from the through-plane problem. Measured with ``dualarbnet_robust`` on whole volumes in 3 and
#: 5 mm slices (docs/benchmarks/cross_dataset.md, "Adaptation of thick-slice jobs"): the copies
#: whose held-out loss fell 9.3-28.6 % added +0.27 to +1.74 dB on five sets (the IXI and the
#: whole head, the phantom and the ICBM152 template, a brats patient at 5 mm); the one that
#: fell 7.4 % cost 0.64 dB (the same brats patient at 3 mm).
THICK_MIN_IMPROVEMENT = 0.08
#: Steps of ``--adapt`` for a thick-slice job by default (the time bound usually ends it first
#: on a CPU).
THICK_ADAPT_STEPS = 150
#: Wall-clock bound of one adaptation, measurements included (seconds): the best copy so far
#: is judged then.
DEFAULT_ADAPT_SECONDS = 120.0


@dataclass
class AdaptResult:
    """What an adaptation did. ``model``: the fine-tuned copy (eval mode) when it beat the
    unadapted model on the held-out pairs, else the model given, unchanged. ``losses``: the
    training loss of every step run. ``checks``: ``(steps done, held-out loss)``, the first
    ``(0, loss of the unadapted model)``. ``best_step``: steps of the copy used (0: none).
    ``stop``: ``steps`` (all requested steps ran), ``early`` (:data:`PATIENCE`) or ``time``."""

    model: nn.Module
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    mode: str = ""
    pair_scale: float = 1.0
    checks: list[tuple[int, float]] = field(default_factory=list)
    best_step: int = 0
    stop: str = "steps"
    steps_requested: int = 0
    reason: str = ""

    @property
    def adapted(self) -> bool:
        """Whether ``model`` is a fine-tuned copy (not the model given)."""
        return self.best_step > 0

    def describe(self) -> dict:
        held = [loss for _, loss in self.checks]
        return {"steps": len(self.losses), "steps_requested": self.steps_requested,
                "used": "adapted" if self.adapted else "unadapted",
                "used_step": self.best_step, "stopped": self.stop, "reason": self.reason,
                "held_out_loss_unadapted": round(held[0], 6) if held else None,
                "held_out_loss_used": round(min(held), 6) if self.adapted else
                (round(held[0], 6) if held else None),
                "held_out_checks": [[s, round(v, 6)] for s, v in self.checks],
                "mode": self.mode, "pair_scale": self.pair_scale,
                "seconds": round(self.seconds, 2),
                "loss_first": self.losses[0] if self.losses else None,
                "loss_last": self.losses[-1] if self.losses else None}


def finetune_held_out(model: nn.Module, train_batch: Callable[[int], dict],
                      loss: Callable[[nn.Module, dict], torch.Tensor], held_out: list[dict],
                      steps: int, *, lr: float, device: torch.device,
                      max_seconds: Optional[float] = DEFAULT_ADAPT_SECONDS,
                      progress: Optional[Callable[[int], None]] = None,
                      min_improvement: float = MIN_IMPROVEMENT) -> AdaptResult:
    """Fine-tune a copy of ``model`` with Adam for up to ``steps`` steps on
    ``train_batch(step)`` (host batches), judged on the fixed ``held_out`` batches (see the
    module docstring: early stopping, time bound, the unadapted model kept unless the held-out
    loss falls by ``min_improvement``, a fraction). ``loss(net, batch)`` is the scalar
    training loss. Without held-out batches nothing is trained and ``model`` is returned."""
    result = AdaptResult(model, steps_requested=int(steps))
    if not held_out:
        result.reason = "no held-out pairs (the input is too small to set any aside)"
        if progress:
            progress(steps)
        return result
    net = copy.deepcopy(model).to(device)
    held = [_batch_to(b, device) for b in held_out]

    def held_out_loss() -> float:
        net.eval()
        with torch.no_grad():
            value = float(np.mean([float(loss(net, b)) for b in held]))
        net.train()
        return value

    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    t0 = time.perf_counter()
    result.checks.append((0, held_out_loss()))
    best, best_state, since_best = result.checks[0][1], None, 0
    for step in range(steps):
        value = loss(net, _batch_to(train_batch(step), device))
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        result.losses.append(float(value.detach()))
        if progress:
            progress(1)
        done = step + 1
        late = max_seconds is not None and time.perf_counter() - t0 > max_seconds
        if done % CHECK_EVERY and done < steps and not late:
            continue
        current = held_out_loss()
        result.checks.append((done, current))
        if current < best:
            best, since_best, result.best_step = current, 0, done
            best_state = copy.deepcopy(net.state_dict())
        else:
            since_best += 1
        if done < steps and (late or since_best >= PATIENCE):
            result.stop = "time" if late else "early"
            if progress:
                progress(steps - done)  # the bar counted the steps not run
            break
    result.seconds = time.perf_counter() - t0
    unadapted = result.checks[0][1]
    if best_state is not None and best <= (1.0 - min_improvement) * unadapted:
        net.load_state_dict(best_state)
        result.model = net.eval()
        result.reason = (f"held-out loss {unadapted:.4g} -> {best:.4g} after "
                         f"{result.best_step} steps")
    else:
        result.best_step = 0
        result.reason = (f"held-out loss {unadapted:.4g} unadapted, at best {best:.4g} "
                         f"adapted: less than {min_improvement:.0%} lower, the model given "
                         "is kept")
    return result


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


def split_held_out(volumes: SliceVolumes, fraction: float = HELD_OUT_FRACTION
                   ) -> tuple[SliceVolumes, Optional[SliceVolumes]]:
    """``(training, held-out)`` slices of ``volumes`` (one source, one volume: the input):
    ``round(fraction * n)`` of its ``n`` valid slices, at least one, in two contiguous blocks
    centred at a third and two thirds of them (whole blocks, because a slice next to a
    training slice is nearly a copy of it). Held-out is ``None`` below three valid slices."""
    (source,) = volumes.sources
    rows = source.slices[np.argsort(source.slices[:, 2], kind="stable")]
    n = len(rows)
    if n < 3:
        return volumes, None
    n_held = max(1, int(round(fraction * n)))
    held = np.zeros(n, dtype=bool)
    sizes = [n_held] if n_held == 1 else [n_held // 2, n_held - n_held // 2]
    centres = [n / 2] if n_held == 1 else [n / 3, 2 * n / 3]
    for size, centre in zip(sizes, centres):
        start = int(np.clip(round(centre - size / 2), 0, n - size))
        held[start:start + size] = True

    def subset(mask: np.ndarray) -> SliceVolumes:
        return SliceVolumes([Source(source.spec, source.volumes, rows[mask])],
                            volumes.need_reference)
    return subset(~held), subset(held)


def adapt_model(model: SRModel, target: np.ndarray, factors: Sequence[float],
                slice_axis: int, reference: Optional[np.ndarray] = None,
                steps: int = DEFAULT_ADAPT_STEPS, *, lr: float = 1e-4, batch_size: int = 4,
                patch: int = 24, seed: int = 0, device: Optional[torch.device] = None,
                loss=None, max_seconds: Optional[float] = DEFAULT_ADAPT_SECONDS,
                progress: Optional[Callable[[int], None]] = None) -> AdaptResult:
    """Fine-tune a copy of ``model`` on pairs made from ``target``, judged on held-out slices
    (:func:`split_held_out`, :func:`finetune_held_out`: the result's ``model`` is ``model``
    itself unless the copy lowered the held-out loss).

    target: the low-resolution input ``(X, Y, Z)`` (magnitude, any units). reference: the
    reference contrast on the *same grid* as ``target`` (brought to its resolution), or
    ``None`` for models without reference. factors: the per-axis upscaling that will be asked
    of the model; slice_axis: the axis along which it runs. ``loss``: a
    :class:`~mrisr.training.config.LossConfig` (default: the training default).
    ``max_seconds``: the wall-clock bound (``None``: none). The copy must lower the held-out
    loss by :data:`MIN_IMPROVEMENT` (in-plane pairs) or :data:`THICK_MIN_IMPROVEMENT`
    (thick-slice pairs) to be used.
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
    volumes = SliceVolumes.from_sources([Source(spec, [volume])], 0.05, uses_ref)
    training, held_slices = split_held_out(volumes)
    task = SlicePatchTask(adapt_config(mode, pair_scale, steps, batch_size, patch, lr, seed,
                                       loss), training, needs_reference=uses_ref)
    held = []
    if held_slices is not None:
        # Other draws (seed + 1) from the held-out slices, the same kind of pairs.
        held_task = SlicePatchTask(adapt_config(mode, pair_scale, max(steps, HELD_OUT_BATCHES),
                                                batch_size, patch, lr, seed + 1, loss),
                                   held_slices, needs_reference=uses_ref)
        held = [held_task.batch(i) for i in range(HELD_OUT_BATCHES)]
    device = device or next(model.parameters()).device
    result = finetune_held_out(model, task.batch, lambda net, b: task.loss(net, b)[0], held,
                               steps, lr=lr, device=device, max_seconds=max_seconds,
                               progress=progress,
                               min_improvement=THICK_MIN_IMPROVEMENT if mode == "thick_slice"
                               else MIN_IMPROVEMENT)
    result.mode, result.pair_scale = mode, pair_scale
    return result
