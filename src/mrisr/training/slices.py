"""2D training pairs for multi-contrast arbitrary-scale SR (Dual-ArbNet, LIIF and ablations).

Every step draws a *global* batch from ``(seed, step)`` alone: one target scale and one
reference type per batch (as the reference code), then per sample a brain slice, a dihedral
augmentation and an LR patch position. The batch is therefore identical after a resume and
across process counts: under ``torchrun`` rank ``r`` of ``W`` builds samples ``r, r + W, ...``
of the same global batch (the distributed sampler), so gradients averaged by DDP equal those of
one process with the whole batch.

For each sample the full HR slices are degraded (target at scale ``s``, reference at its own
scale), normalised by the robust maximum of the *degraded* images, and cropped: an LR patch of
``patch^2`` voxels, the HR patch of ``round(patch * s)`` voxels over the same field of view, and
a reference patch covering that field of view on the reference's own grid plus a margin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from mrisr.data.datasets import load_subjects
from mrisr.data.intensity import as_channels, robust_max
from mrisr.degradation import degrade
from mrisr.errors import InputError
from mrisr.evaluation.harness import select_slices
from mrisr.models.dual_arbnet import GridQuery
from mrisr.training.config import DataConfig, Phase, TrainConfig
from mrisr.training.losses import sr_loss


@dataclass
class SlicePairs:
    """HR target and reference slices ``(N, H, W)`` float32 of one split, with subject names."""

    target: np.ndarray
    reference: Optional[np.ndarray]
    subjects: list[str]

    @classmethod
    def load(cls, cfg: DataConfig, need_reference: bool = True) -> "SlicePairs":
        targets, refs, names = [], [], []
        for subject in load_subjects(cfg.dataset, use_reference=need_reference):
            axis = cfg.slice_axis % subject.target.ndim
            idx = select_slices(subject.target, subject.brain_mask(), axis,
                                cfg.min_brain_fraction)
            targets.append(np.moveaxis(np.take(subject.target, idx, axis=axis), axis, 0))
            if need_reference:
                refs.append(np.moveaxis(np.take(subject.reference, idx, axis=axis), axis, 0))
            names.append(subject.name)
        if not targets or sum(len(t) for t in targets) == 0:
            raise InputError("training data: no slice passes the brain-fraction threshold")
        shapes = {t.shape[1:] for t in targets}
        if len(shapes) != 1:
            raise InputError(f"training data: slices of different sizes {sorted(shapes)}; "
                             "resample the subjects to one in-plane grid first")
        return cls(target=np.concatenate(targets).astype(np.float32),
                   reference=np.concatenate(refs).astype(np.float32) if need_reference else None,
                   subjects=names)


def _dihedral(image: np.ndarray, k: int) -> np.ndarray:
    out = np.rot90(image, k % 4)
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def _scale_grid(lo: float, hi: float, step: float) -> np.ndarray:
    return np.round(np.arange(lo, hi + step / 2, step), 6)


def _crop(image: np.ndarray, start: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Crop with zero padding outside the image."""
    out = np.zeros(image.shape[:-2] + tuple(size), dtype=image.dtype)
    src, dst = [], []
    for a, (s0, n) in enumerate(zip(start, size)):
        lo, hi = max(s0, 0), min(s0 + n, image.shape[-2 + a])
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s0, hi - s0))
    out[(...,) + tuple(dst)] = image[(...,) + tuple(src)]
    return out


class SlicePatchTask:
    """Batches and loss of 2D training (see the module docstring)."""

    n_spatial = 2

    def __init__(self, cfg: TrainConfig, pairs: SlicePairs, needs_reference: bool = True):
        self.cfg = cfg
        self.pairs = pairs
        self.needs_reference = needs_reference and pairs.reference is not None

    def describe_data(self) -> dict:
        return {"subjects": self.pairs.subjects, "slices": int(len(self.pairs.target)),
                "split": self.cfg.data.dataset.split, "dataset": self.cfg.data.dataset.kind}

    def _batch_plan(self, step: int, phase: Phase):
        rng = np.random.default_rng([self.cfg.run.seed, step])
        scales = phase.target_scales or list(_scale_grid(*phase.scale_range, phase.scale_step))
        scale = float(scales[rng.integers(len(scales))])
        kinds = sorted(phase.reference)
        probs = np.array([float(phase.reference[k]) for k in kinds])
        ref_kind = kinds[rng.choice(len(kinds), p=probs / probs.sum())]
        own = _scale_grid(*phase.reference_scale_range, 0.1)
        ref_scale = {"hr": 1.0, "lr": scale}.get(ref_kind) or float(own[rng.integers(len(own))])
        n = self.cfg.optim.batch_size
        samples = [(int(rng.integers(len(self.pairs.target))),
                    int(rng.integers(8)) if self.cfg.data.augment else 0, rng.random())
                   for _ in range(n)]
        return scale, ref_kind, ref_scale, samples

    def batch(self, step: int, rank: int = 0, world: int = 1) -> dict:
        _, phase = self.cfg.phase_at(step)
        scale, ref_kind, ref_scale, samples = self._batch_plan(step, phase)
        if len(samples) % world:
            raise InputError(f"batch size {len(samples)} is not divisible by {world} processes")
        items = [self._sample(s, scale, ref_scale) for s in samples[rank::world]]
        out = {key: torch.from_numpy(np.stack([it[key] for it in items]))
               for key in items[0] if key != "lr_shape"}
        out["lr_shape"] = items[0]["lr_shape"]
        out["scale"], out["ref_kind"], out["ref_scale"] = scale, ref_kind, ref_scale
        return out

    def _sample(self, plan, scale: float, ref_scale: float) -> dict:
        index, k, u1 = plan
        d = self.cfg.data
        hr = _dihedral(self.pairs.target[index], k)
        lr = degrade(hr, scale, kind=d.degradation)
        norm = robust_max(lr)
        big_n, n = np.array(hr.shape), np.array(lr.shape)
        patch = np.minimum(d.patch, n)
        # Centre the patch on a random foreground LR voxel (u1 picks it deterministically).
        fg = np.argwhere(np.abs(lr) > 0.05 * norm)
        centre = fg[int(u1 * len(fg)) % len(fg)] if len(fg) else n // 2
        i0 = np.clip(centre - patch // 2, 0, n - patch)
        f = big_n / n
        hr_patch = np.round(patch * f).astype(int)
        j0 = np.clip(np.round(i0 * f).astype(int), 0, big_n - hr_patch)
        target_pos = [((j0[a] + np.arange(hr_patch[a]) + 0.5) / f[a] - 0.5 - i0[a])
                      for a in range(2)]
        item = {
            "lr": as_channels(lr[i0[0]:i0[0] + patch[0], i0[1]:i0[1] + patch[1]] / norm,
                              d.input),
            "hr": as_channels(hr[j0[0]:j0[0] + hr_patch[0], j0[1]:j0[1] + hr_patch[1]] / norm,
                              d.input),
            "target_pos_0": target_pos[0], "target_pos_1": target_pos[1],
            "target_spacing": (1.0 / f).astype(np.float64),
            "lr_shape": tuple(int(p) for p in patch),
        }
        if self.needs_reference:
            ref_hr = _dihedral(self.pairs.reference[index], k)
            ref = degrade(ref_hr, ref_scale, kind=d.degradation)
            ref_norm = robust_max(ref)
            fr = big_n / np.array(ref.shape)
            size = np.ceil(hr_patch / fr).astype(int) + 2 * d.reference_margin + 1
            abs_pos = [(j0[a] + np.arange(hr_patch[a]) + 0.5) / fr[a] - 0.5 for a in range(2)]
            r0 = np.array([math.floor(p[0]) - d.reference_margin for p in abs_pos])
            item["ref"] = as_channels(_crop(ref, tuple(r0), tuple(size)) / ref_norm, d.input)
            item["ref_pos_0"], item["ref_pos_1"] = abs_pos[0] - r0[0], abs_pos[1] - r0[1]
            item["ref_spacing"] = (1.0 / fr).astype(np.float64)
        return item

    @staticmethod
    def query(batch: dict) -> GridQuery:
        ref = "ref_pos_0" in batch
        return GridQuery(
            target_positions=[batch["target_pos_0"], batch["target_pos_1"]],
            target_spacing=batch["target_spacing"],
            reference_positions=[batch["ref_pos_0"], batch["ref_pos_1"]] if ref else None,
            reference_spacing=batch["ref_spacing"] if ref else None)

    def loss(self, model, batch: dict):
        pred = model(batch["lr"], batch.get("ref"), self.query(batch))
        lc = self.cfg.loss
        return sr_loss(pred, batch["hr"], 2, lc.kspace_weight, batch["lr_shape"],
                       lc.kspace_mask, lc.kspace_norm)
