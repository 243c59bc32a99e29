"""2D training pairs for multi-contrast arbitrary-scale SR (Dual-ArbNet, LIIF and ablations).

Every step draws a *global* batch from ``(seed, step)`` alone: one target scale (or one
thick-slice factor along one axis), one degradation and one reference type per batch (as the
reference code), then per sample a slice, a dihedral augmentation, the domain randomisation and
an LR patch position, each from a generator seeded by ``(seed, step, sample)``. The batch is
therefore identical after a resume and across process counts: under ``torchrun`` rank ``r`` of
``W`` builds samples ``r, r + W, ...`` of the same global batch (the distributed sampler), so
gradients averaged by DDP equal those of one process with the whole batch.

Slices come from :class:`SliceVolumes`: one or several *sources* (``data.sources``: BraTS
contrasts in every ordered pair, manifests, whole heads paired with synthetic contrasts), or the
single ``data.dataset`` pair of older configs. For each sample the full HR slices are
randomised (``data.randomise``: bias, noise, contrast, rotation, reference misregistration),
degraded (target at scale ``s``, reference at its own scale), normalised by the robust maximum
of the *degraded* images, and cropped: an LR patch of ``patch^2`` voxels, the HR patch of
``round(patch * s)`` voxels over the same field of view, and a reference patch covering that
field of view on the reference's own grid plus a margin.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from mrisr.data import randomise as rnd
from mrisr.data.datasets import DatasetSpec, load_subjects
from mrisr.data.intensity import as_channels, robust_max
from mrisr.data.selection import select_slices
from mrisr.data.synthetic import random_contrast
from mrisr.degradation import degrade
from mrisr.errors import InputError
from mrisr.models.dual_arbnet import GridQuery
from mrisr.training.config import DataConfig, Phase, SourceSpec, TrainConfig
from mrisr.training.losses import sr_loss


@dataclass
class TrainingVolume:
    """One subject's co-registered volumes ``(X, Y, Z)`` float32 by contrast name, its
    foreground mask and the ordered ``(target, reference)`` pairs drawn from it (reference
    ``None``: a synthetic contrast of the target)."""

    name: str
    images: dict[str, np.ndarray]
    mask: np.ndarray
    pairs: list[tuple[str, Optional[str]]]
    #: ``(axis, name)`` -> the image with that axis first, contiguous (fast slicing)
    views: dict = field(default_factory=dict, repr=False)

    def prepare(self, axes: list[int]) -> None:
        arrays = {**self.images, "__mask__": self.mask}
        for axis in axes:
            for name, image in arrays.items():
                self.views[axis, name] = np.ascontiguousarray(np.moveaxis(image, axis, 0))
        self.images = {}  # the views hold every voxel; no second copy of the volumes
        self.mask = None

    def slice(self, name: str, axis: int, index: int) -> np.ndarray:
        return self.views[axis, name][index]


@dataclass
class Source:
    spec: SourceSpec
    volumes: list[TrainingVolume] = field(default_factory=list)
    #: every valid slice as ``(volume, axis, index)`` rows
    slices: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))


def _head_mask(image: np.ndarray, threshold: float) -> np.ndarray:
    from scipy import ndimage
    mask = image > threshold * robust_max(image)
    return ndimage.binary_fill_holes(ndimage.binary_opening(mask, iterations=1))


def _load_source(spec: SourceSpec, need_reference: bool) -> list[TrainingVolume]:
    from mrisr.config import expand_vars
    from mrisr.io.manifest import brats_manifest
    from mrisr.io.nifti import load_nifti

    if spec.kind == "brats":
        manifest = brats_manifest(expand_vars(spec.root), target=spec.contrasts[0],
                                  references=tuple(spec.contrasts[1:]), n_test=spec.n_test)
        pairs = [tuple(p) for p in spec.pairs] or \
            list(itertools.permutations(spec.contrasts, 2))
        if not need_reference:  # every contrast as a target; no reference read
            pairs = [(c, None) for c in dict.fromkeys(p[0] for p in pairs)]
        volumes = []
        for subject in manifest.split(spec.split):
            files = dict(zip(spec.contrasts, (subject.target, *subject.references)))
            wanted = {c for p in pairs for c in p if c is not None}
            images = {c: load_nifti(files[c]).data.astype(np.float32) for c in sorted(wanted)}
            mask = np.any([im > 0 for im in images.values()], axis=0)
            volumes.append(TrainingVolume(subject.subject, images, mask, pairs))
        return volumes
    if spec.kind == "manifest":
        dataset = DatasetSpec(kind="manifest", manifest=expand_vars(spec.manifest))
        return [TrainingVolume(s.name, {"target": s.target, "reference": s.reference}
                               if s.reference is not None else {"target": s.target},
                               s.brain_mask(),
                               [("target", "reference" if need_reference else None)])
                for s in load_subjects(dataset, split=spec.split, use_reference=need_reference)]
    volumes = []
    for path in spec.files:
        data = load_nifti(expand_vars(path)).data.astype(np.float32)
        volumes.append(TrainingVolume(str(path), {"image": data},
                                      _head_mask(data, spec.head_threshold), [("image", None)]))
    return volumes


@dataclass
class SliceVolumes:
    """The training sources of one config, with their valid slices (see the module
    docstring); :meth:`draw` picks a sample's HR slices."""

    sources: list[Source]
    need_reference: bool

    @classmethod
    def load(cls, cfg: DataConfig, need_reference: bool = True) -> "SliceVolumes":
        specs = list(cfg.sources)
        legacy = not specs
        sources = []
        if legacy:  # one pair of one dataset (configs written before data.sources)
            spec = SourceSpec(name=cfg.dataset.kind, kind=cfg.dataset.kind,
                              slice_axes=[cfg.slice_axis % 3])
            vols = [TrainingVolume(s.name, {"target": s.target, **(
                {"reference": s.reference} if need_reference else {})}, s.brain_mask(),
                [("target", "reference" if need_reference else None)])
                for s in load_subjects(cfg.dataset, use_reference=need_reference)]
            sources.append(Source(spec, vols))
        else:
            sources = [Source(spec, _load_source(spec, need_reference)) for spec in specs]
        return cls.from_sources(sources, cfg.min_brain_fraction, need_reference)

    @classmethod
    def from_sources(cls, sources: list[Source], min_brain_fraction: float,
                     need_reference: bool) -> "SliceVolumes":
        """Index the valid slices of volumes already in memory (e.g. a user's own scan)."""
        for source in sources:
            rows = [(v, a, i) for v, vol in enumerate(source.volumes)
                    for a in source.spec.slice_axes
                    for i in select_slices(vol.mask, vol.mask, a, min_brain_fraction)]
            for vol in source.volumes:
                vol.prepare(source.spec.slice_axes)
            if not rows:
                raise InputError(f"training data: source '{source.spec.name}': no slice passes "
                                 "the brain-fraction threshold")
            source.slices = np.asarray(rows, dtype=np.int64)
        return cls(sources, need_reference)

    @property
    def subjects(self) -> list[str]:
        return [v.name for s in self.sources for v in s.volumes]

    @property
    def n_slices(self) -> int:
        return int(sum(len(s.slices) for s in self.sources))

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, Optional[np.ndarray], np.ndarray, float]:
        """One sample's HR slices: ``(target, reference or None, mask, synthetic)``; the
        reference is ``None`` when a synthetic contrast must stand in for it."""
        weights = np.array([s.spec.weight for s in self.sources], dtype=np.float64)
        source = self.sources[rng.choice(len(self.sources), p=weights / weights.sum())]
        v, axis, index = source.slices[rng.integers(len(source.slices))]
        vol = source.volumes[v]
        target_name, ref_name = vol.pairs[rng.integers(len(vol.pairs))]
        ref = vol.slice(ref_name, axis, index) if ref_name is not None and \
            self.need_reference else None
        return (vol.slice(target_name, axis, index), ref, vol.slice("__mask__", axis, index),
                source.spec.synthetic)


def _dihedral(image: np.ndarray, k: int) -> np.ndarray:
    out = np.rot90(image, k % 4)
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def _scale_grid(lo: float, hi: float, step: float) -> np.ndarray:
    return np.round(np.arange(lo, hi + step / 2, step), 6)


def _choose(rng: np.random.Generator, table: dict) -> str:
    names = sorted(table)
    probs = np.array([float(table[n]) for n in names])
    return names[rng.choice(len(names), p=probs / probs.sum())]


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


@dataclass
class BatchPlan:
    """What one batch shares: the target's per-axis scale and degradation, the reference's."""

    scale: tuple[float, float]
    kind: str
    ref_kind: str
    ref_scale: tuple[float, float]
    ref_degradation: str
    thickness: float = 1.0

    @property
    def label(self) -> float:
        return float(max(self.scale))


class SlicePatchTask:
    """Batches and loss of 2D training (see the module docstring)."""

    n_spatial = 2

    def __init__(self, cfg: TrainConfig, volumes: SliceVolumes, needs_reference: bool = True):
        self.cfg = cfg
        self.volumes = volumes
        self.needs_reference = needs_reference and volumes.need_reference

    def describe_data(self) -> dict:
        d = self.cfg.data
        return {"subjects": self.volumes.subjects, "slices": self.volumes.n_slices,
                "sources": [s.spec.name for s in self.volumes.sources] if d.sources else None,
                "split": d.dataset.split if not d.sources else
                sorted({s.split for s in d.sources}),
                "dataset": d.dataset.kind if not d.sources else "sources",
                "randomise": d.randomise is not None, "degradations": d.degradations is not None}

    def _batch_plan(self, step: int, phase: Phase) -> tuple[BatchPlan, list[int]]:
        rng = np.random.default_rng([self.cfg.run.seed, step])
        scales = phase.target_scales or list(_scale_grid(*phase.scale_range, phase.scale_step))
        iso = float(scales[rng.integers(len(scales))])
        mix = self.cfg.data.degradations
        scale, kind, thickness = (iso, iso), self.cfg.data.degradation, 1.0
        if mix is not None:
            if rng.random() < mix.thick_slice:
                lo, hi = mix.thick_scale_range
                thick = float(np.round(rng.uniform(lo, hi), 1))
                scale = (thick, 1.0) if rng.random() < 0.5 else (1.0, thick)
                kind = "thick_slice" if _choose(rng, mix.thick_profiles) == "box" else \
                    "thick_slice_gaussian"
                thickness = float(rng.uniform(*mix.thickness_range))
            else:
                kind = _choose(rng, mix.kinds)
        ref_kind = _choose(rng, phase.reference)
        own = _scale_grid(*phase.reference_scale_range, 0.1)
        if ref_kind == "hr":
            ref_scale, ref_deg = (1.0, 1.0), "kspace"
        elif ref_kind == "lr":
            ref_scale, ref_deg = scale, kind
        else:
            r = float(own[rng.integers(len(own))])
            ref_scale = (r, r)
            ref_deg = _choose(rng, mix.reference_kinds) if mix is not None else \
                self.cfg.data.degradation
        plan = BatchPlan(scale, kind, ref_kind, ref_scale, ref_deg, thickness)
        return plan, list(range(self.cfg.optim.batch_size))

    def batch(self, step: int, rank: int = 0, world: int = 1) -> dict:
        _, phase = self.cfg.phase_at(step)
        plan, samples = self._batch_plan(step, phase)
        if len(samples) % world:
            raise InputError(f"batch size {len(samples)} is not divisible by {world} processes")
        items = [self._sample(np.random.default_rng([self.cfg.run.seed, step, i]), plan)
                 for i in samples[rank::world]]
        out = {key: torch.from_numpy(np.stack([it[key] for it in items]))
               for key in items[0] if key != "lr_shape"}
        out["lr_shape"] = items[0]["lr_shape"]
        out["scale"], out["ref_kind"] = plan.label, plan.ref_kind
        out["ref_scale"] = float(max(plan.ref_scale))
        return out

    def _degrade(self, image: np.ndarray, scale: tuple[float, float], kind: str,
                 thickness: float) -> np.ndarray:
        if all(abs(s - 1.0) < 1e-9 for s in scale):
            return image.astype(np.complex64) if self.cfg.data.input == "complex" else image
        if kind.startswith("thick_slice"):
            from mrisr.degradation.image import thick_slice
            axis = int(np.argmax(scale))
            return thick_slice(image, scale[axis], axis=axis, thickness=thickness,
                               profile="gaussian" if kind.endswith("gaussian") else "box")
        return degrade(image, scale, kind=kind)

    def _randomise(self, rng: np.random.Generator, hr: np.ndarray,
                   ref: Optional[np.ndarray], mask: np.ndarray, synthetic: float, ref_scale):
        """Synthetic contrasts and domain randomisation of one sample's HR slices."""
        r = self.cfg.data.randomise
        if self.needs_reference and ref is None:  # a single-image source: synthesise one
            ref = random_contrast(hr, rng)
            if rng.random() < synthetic:
                hr = random_contrast(hr, rng)
        elif self.needs_reference and rng.random() < synthetic:
            ref = random_contrast(hr if rng.random() < 0.5 else ref, rng)
        elif not self.needs_reference and rng.random() < synthetic:
            hr = random_contrast(hr, rng)
        if r is None:
            return hr, ref, mask
        if rng.random() < r.rotation_probability:
            angle = rng.uniform(-r.rotation, r.rotation)
            rotated = rnd.rotate([hr, mask.astype(np.float32)] +
                                 ([ref] if ref is not None else []), angle)
            hr, mask = rotated[0], rotated[1] > 0.5
            ref = rotated[2] if ref is not None else None

        def scan(image: np.ndarray) -> np.ndarray:
            if rng.random() < r.gamma_probability:
                image = rnd.gamma(image, rnd.log_uniform(rng, *r.gamma))
            if rng.random() < r.bias_probability:
                image = image * rnd.bias_field(image.shape, rng, rng.uniform(0, r.bias))
            if rng.random() < r.noise_probability:
                image = rnd.add_noise(image, rng, rnd.log_uniform(rng, *r.noise_snr),
                                      rician=rng.random() < r.rician)
            return image.astype(np.float32)
        hr = scan(hr)
        if ref is not None:
            if rng.random() < r.reference_shift_probability:
                offset = rng.uniform(-r.reference_shift, r.reference_shift, 2) * \
                    np.asarray(ref_scale)
                ref = rnd.shift(ref, tuple(offset))
            ref = scan(ref)
        return hr, ref, mask

    def _sample(self, rng: np.random.Generator, plan: BatchPlan) -> dict:
        d = self.cfg.data
        hr, ref_hr, mask, synthetic = self.volumes.draw(rng)
        k = int(rng.integers(8)) if d.augment else 0
        hr, mask = _dihedral(hr, k), _dihedral(mask, k)
        ref_hr = _dihedral(ref_hr, k) if ref_hr is not None else None
        hr, ref_hr, mask = self._randomise(rng, hr, ref_hr, mask, synthetic, plan.ref_scale)
        # Slices too small for a whole patch at this scale get a zero (background) border.
        need = np.ceil(d.patch * np.asarray(plan.scale)).astype(int) + 1
        pad = [(int(p) // 2, int(p) - int(p) // 2) for p in np.maximum(need - hr.shape, 0)]
        if any(p[0] or p[1] for p in pad):
            hr, mask = np.pad(hr, pad), np.pad(mask, pad)
            ref_hr = np.pad(ref_hr, pad) if ref_hr is not None else None
        lr = self._degrade(hr, plan.scale, plan.kind, plan.thickness)
        norm = robust_max(lr)
        big_n, n = np.array(hr.shape), np.array(lr.shape)
        patch = np.minimum(d.patch, n)
        f = big_n / n
        # Batches stack: the HR patch size follows the nominal scale, not each slice's own f.
        hr_patch = np.minimum(np.round(patch * np.asarray(plan.scale)).astype(int), big_n)
        fg = np.argwhere(mask)
        r = d.randomise
        if len(fg) and not (r is not None and rng.random() < r.background_patches):
            centre = np.floor(fg[rng.integers(len(fg))] / f).astype(int)
        else:
            centre = rng.integers(0, n)
        i0 = np.clip(centre - patch // 2, 0, n - patch)
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
            ref = self._degrade(ref_hr, plan.ref_scale, plan.ref_degradation, plan.thickness)
            ref_norm = robust_max(ref)
            fr = big_n / np.array(ref.shape)
            size = np.ceil(hr_patch / np.asarray(plan.ref_scale)).astype(int) + \
                2 * d.reference_margin + 2
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
                       lc.kspace_mask, lc.kspace_norm, lc.pixel_norm)
