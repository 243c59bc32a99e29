"""3D training patches for the CSR-dMRI family (``task: dmri3d``), the volumetric counterpart of
:mod:`mrisr.training.slices`.

Per step (deterministic from ``(run.seed, step)``): one scale ``s ~ U(scale_range)`` (or one per
axis) shared by the batch, so the HR patches stack; per sample a subject, one shell volume and a
brain voxel around which an HR patch of ``round(lr_patch * s)`` voxels per axis is cropped from
the training region. The LR patch (``lr_patch`` voxels per axis) is the cubic B-spline
downsampling of the HR patch (the paper's "bicubic"; ``spline_resize(order=3)``), and so is the
T1w patch stacked as the second channel. For a model with ``level_norm`` the HR patch is first
divided by its volume's :func:`~mrisr.data.dwi.attenuation_level` (over the training region);
with ``dmri.t1_gamma`` the T1w patch is raised to a random power (it is about 1 in brain tissue,
so this bends its contrast and keeps its scale), and with ``dmri.t1_shift`` it is cut up to that
many voxels away from the DWI patch (misregistration) in a ``dmri.t1_shift_fraction`` of the
samples. With ``dmri.augment`` every sample is randomly flipped and its axes permuted. With
``dmri.simulate_bvalues`` each subject also has volumes of other shells simulated
from its tensor fit (:func:`~mrisr.data.dwi.simulate_shells`), drawn like the measured ones.
With ``dmri.domain: signal`` the patches are cut from the signal instead of the attenuations
(:func:`as_signal`), so that the LR patch is a degraded signal, as a user's LR series is.
The queries are the HR voxels (all of them by default, so the 3D frequency loss sees the whole
patch). Rank ``r`` of ``w`` builds samples ``r::w``.

Each subject's volume is split into a training region and a held-out slab at the high end of
``dmri.holdout_axis``: with one subject per scanner, evaluation happens on the slab. Across
scanners (``configs/train_*_multivendor.yaml``) every series trains whole
(``holdout_fraction: 0``), ``dmri.holdout`` leaves one series out, ``dmri.all_shells`` keeps
every diffusion-weighted volume whatever its b-value, ``dmri.pad_to_patch`` zero-pads thin
series, and the diffusion randomisation of :class:`~mrisr.training.config.DmriDataConfig`
(``include_b0``, ``bvalue_power``, ``bvalue_mix``, ``noise``, ``bias``, ``antialias_fraction``,
``t1_dropout``) is drawn per sample from its own generator (:meth:`VolumePatchTask._draws`), so
that switching one on changes nothing else of a batch. ``fixed_scales`` makes every patch at one
requested upscaling (test-time adaptation, :func:`mrisr.inference.volume3d.adapt_volume_model`).

With ``dmri.direction_group`` ``g > 1`` the batch is made of groups of ``g`` volumes of one
subject cut at the same place, oriented and randomised alike (each with its own noise), and
``dmri.angular_weight`` adds the angular loss: errors that differ between the volumes of a
group are what a tensor fit reads as anisotropy (:func:`~mrisr.training.losses.angular_loss`).
A rank then builds whole groups (a contiguous share of the batch). ``dmri.tensor_weight``
adds the tensor loss instead or as well: a group then comes from one shell, and only the error
that the tensor fit reads as anisotropy counts (:func:`~mrisr.training.losses.tensor_loss`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from mrisr.data.dwi import (DwiSubject, attenuation_level, b0_indices, select_shell,
                            simulate_shells)
from mrisr.data.dwi_sources import load_dwi_subjects, split_slab  # noqa: F401  (their old home)
from mrisr.data.intensity import robust_max
from mrisr.degradation import spline_resize
from mrisr.errors import InputError
from mrisr.models.csr_dmri import PointQuery, grid_point_query
from mrisr.training.config import TrainConfig
from mrisr.training.losses import angular_loss, sr_loss, tensor_loss


def pad_subject(subject: DwiSubject, pads: Sequence[int]) -> DwiSubject:
    """``subject`` with ``pads[a]`` zero voxels added at the low end of each axis ``a`` (outside
    the brain mask; the affine moved so that the world positions of the voxels stay)."""
    width = [(int(p), 0) for p in pads]
    affine = np.array(subject.affine, dtype=np.float64)
    affine[:3, 3] -= affine[:3, :3] @ np.asarray(pads, dtype=np.float64)
    return dataclasses.replace(
        subject, shell=np.pad(subject.shell, width + [(0, 0)]),
        mean_b0=np.pad(subject.mean_b0, width), mask=np.pad(subject.mask, width),
        t1=None if subject.t1 is None else np.pad(subject.t1, width), affine=affine)


def with_mean_b0_volume(subject: DwiSubject) -> DwiSubject:
    """``subject`` with one more volume, the b=0 (attenuation 1 inside the brain mask, so
    the mean b=0 itself in the signal domain), b-value 0 and a zero b-vector."""
    b0 = subject.mask.astype(np.float32)[..., None]
    return dataclasses.replace(subject, shell=np.concatenate([subject.shell, b0], -1),
                               bvals=np.concatenate([subject.bvals, [0.0]]),
                               bvecs=np.concatenate([subject.bvecs, np.zeros((3, 1))], 1))


def as_signal(subject: DwiSubject, region: tuple[slice, ...]) -> DwiSubject:
    """``subject`` with its shell as signal (attenuation times the mean b=0), each volume
    divided by its robust maximum over the brain voxels of ``region``: the input that
    :class:`~mrisr.inference.volume3d.SeriesUpscaler3D` gives a model (``dmri.domain: signal``).
    """
    shell = subject.shell * subject.mean_b0[..., None].astype(np.float32)
    brain = subject.mask[region]
    for v in range(shell.shape[3]):
        shell[..., v] /= np.float32(robust_max(shell[region + (v,)][brain]))
    return dataclasses.replace(subject, shell=shell)


class VolumePatchTask:
    """Batches and loss of 3D diffusion training (see the module docstring).

    Args:
        cfg: the training config (``cfg.dmri`` and ``cfg.optim.batch_size`` are used).
        subjects: the training subjects (their T1w is required with ``use_t1``).
        use_t1: pass the T1w patch as the model's reference.
        t1_mode: ``lr_channel`` (T1w degraded like the DWI, on the LR grid) or
            ``own_resolution`` (the T1w at the HR patch's resolution, with its own query
            positions).
        level_norm: divide each patch by the level of its volume (the model's ``level_norm``).
        fixed_scales: per-axis scales used by every step instead of ``dmri.scale_range``
            (test-time adaptation to one requested upscaling).
    """

    n_spatial = 3
    #: Brain voxels per subject on which synthesised volumes (``bvalue_power``, ``bvalue_mix``)
    #: get their robust maximum and level.
    PROBE_VOXELS = 20000

    def __init__(self, cfg: TrainConfig, subjects: list[DwiSubject], use_t1: bool = True,
                 t1_mode: Optional[str] = "lr_channel", level_norm: bool = False,
                 fixed_scales: Optional[Sequence[float]] = None):
        self.cfg = cfg
        self.fixed_scales = None if fixed_scales is None else \
            tuple(float(f) for f in np.broadcast_to(np.asarray(fixed_scales, float), 3))
        self.level_norm = level_norm
        self.d = cfg.dmri
        self.subjects = subjects
        self.use_t1 = use_t1
        self.t1_mode = t1_mode or "lr_channel"
        if not subjects:
            raise InputError("dmri training: no subjects")
        if self.d.simulate_bvalues:
            subjects = [simulate_shells(s, self.d.simulate_bvalues, self.d.simulate_per_bvalue,
                                        seed=cfg.run.seed + i) for i, s in enumerate(subjects)]
            self.subjects = subjects
        top = max(self.fixed_scales) if self.fixed_scales else self.d.scale_range[1]
        largest = int(round(self.d.lr_patch * top))
        self.regions, self.centres = [], []
        prepared = []
        for s in subjects:
            if use_t1 and s.t1 is None and not self.d.t1_dropout:
                raise InputError(f"subject {s.name}: the model uses a T1w image, none loaded "
                                 "(dmri.t1_dropout > 0 trains such subjects with a zero T1w)")
            train, _ = split_slab(s.shape, self.d.holdout_axis, self.d.holdout_fraction)
            extent = [r.stop - r.start for r in train]
            if min(extent) < largest:
                if not self.d.pad_to_patch:
                    raise InputError(f"subject {s.name}: training region {tuple(extent)} is "
                                     f"smaller than the largest HR patch ({largest} voxels); "
                                     "lower dmri.lr_patch, dmri.scale_range or "
                                     "dmri.holdout_fraction, or set dmri.pad_to_patch")
                pads = [max(0, largest - e) for e in extent]
                s = pad_subject(s, pads)
                train = tuple(slice(0, r.stop + p) for r, p in zip(train, pads))
            if self.d.include_b0:
                s = with_mean_b0_volume(s)
            centres = np.argwhere(s.mask[train])
            if len(centres) == 0:
                raise InputError(f"subject {s.name}: no brain voxel in the training region")
            self.regions.append(train)
            self.centres.append(centres)
            prepared.append(s)
        self.subjects = subjects = prepared
        # The attenuations and brain probes that synthesised volumes are made from.
        self.attenuations = [s.shell for s in subjects] if self.d.bvalue_power else []
        self.probes = []
        for i, (s, region) in enumerate(zip(subjects, self.regions)):
            inside = np.zeros(s.shape, bool)
            inside[region] = s.mask[region]
            flat = np.flatnonzero(inside)
            if flat.size > self.PROBE_VOXELS:
                flat = np.sort(np.random.default_rng([cfg.run.seed, i]).choice(
                    flat, self.PROBE_VOXELS, replace=False))
            self.probes.append(flat)
        if self.d.domain == "signal":
            self.subjects = subjects = [as_signal(s, region)
                                        for s, region in zip(subjects, self.regions)]
        # Per subject, the level of every shell volume, from the training region only.
        self.levels = [np.array([attenuation_level(s.shell[region + (v,)])
                                 for v in range(s.shell.shape[3])], dtype=np.float32)
                       if level_norm else np.ones(s.shell.shape[3], np.float32)
                       for s, region in zip(subjects, self.regions)]

    def describe_data(self) -> dict:
        return {"task": "dmri3d", "dataset": self.d.kind,
                "subjects": [s.name for s in self.subjects],
                "files": [f.dwi for f in self.d.subjects] if self.d.kind == "files" else [],
                "volumes": [int(s.shell.shape[3]) for s in self.subjects],
                "bvalue": self.d.bvalue, "level_norm": self.level_norm,
                "t1_gamma": list(self.d.t1_gamma) if self.d.t1_gamma else None,
                "augment": self.d.augment, "domain": self.d.domain, "t1_shift": self.d.t1_shift,
                "t1_shift_fraction": self.d.t1_shift_fraction,
                "simulated": {"bvalues": list(self.d.simulate_bvalues),
                              "per_bvalue": self.d.simulate_per_bvalue}
                if self.d.simulate_bvalues else None,
                "holdout": {"axis": self.d.holdout_axis, "fraction": self.d.holdout_fraction,
                            "subject": self.d.holdout},
                "all_shells": self.d.all_shells, "include_b0": self.d.include_b0,
                "randomise": {"bvalue_power": list(self.d.bvalue_power),
                              "bvalue_power_fraction": self.d.bvalue_power_fraction,
                              "bvalue_mix": self.d.bvalue_mix, "noise": list(self.d.noise),
                              "noise_fraction": self.d.noise_fraction, "bias": self.d.bias,
                              "antialias_fraction": self.d.antialias_fraction,
                              "t1_dropout": self.d.t1_dropout},
                "fixed_scales": list(self.fixed_scales) if self.fixed_scales else None}

    def _plan(self, step: int):
        rng = np.random.default_rng([self.cfg.run.seed, step])
        lo, hi = self.d.scale_range
        drawn = rng.uniform(lo, hi, size=3 if self.d.per_axis else 1)
        if self.fixed_scales is not None:
            drawn = np.asarray(self.fixed_scales)
        hr_shape = tuple(int(round(self.d.lr_patch * s)) for s in np.broadcast_to(drawn, 3))
        samples = []
        group = self.d.direction_group
        if group == 1:
            # The draws of runs made before direction groups, so that they reproduce.
            for _ in range(self.cfg.optim.batch_size):
                i = int(rng.integers(len(self.subjects)))
                # Always drawn, so that t1_gamma changes nothing else of the plan.
                gamma = self._gamma(float(rng.random()))
                samples.append((i, int(rng.integers(self.subjects[i].shell.shape[3])),
                                float(rng.random()), int(rng.integers(2 ** 31)), gamma))
            return hr_shape, samples
        # Groups of `group` volumes of one subject cut at one place and drawn alike (the same
        # query seed: orientation, randomisation, T1w): the angular loss compares their errors.
        for _ in range(self.cfg.optim.batch_size // group):
            i = int(rng.integers(len(self.subjects)))
            gamma = self._gamma(float(rng.random()))
            n = self.subjects[i].shell.shape[3]
            if self.d.tensor_weight > 0:
                volumes = self._shell_group(i, rng)
            else:
                volumes = rng.choice(n, group, replace=n < group)
            u, seed = float(rng.random()), int(rng.integers(2 ** 31))
            samples.extend((i, int(v), u, seed, gamma) for v in volumes)
        return hr_shape, samples

    def _shell_group(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """A direction group for the tensor loss: a first volume drawn from all of the
        subject's, then, when it is diffusion-weighted, the others from its shell
        (``|b - b_first| <= 100``; repeated only when the shell is smaller than the group);
        after a b=0 first volume, from all volumes (a group the loss does not count)."""
        s, group = self.subjects[index], self.d.direction_group
        n = s.shell.shape[3]
        first = int(rng.integers(n))
        weighted = first not in b0_indices(s.bvals)
        shell = select_shell(s.bvals, float(s.bvals[first])) if weighted else np.zeros(0, int)
        shell = shell[shell != first]
        if shell.size == 0:
            return np.concatenate([[first], rng.choice(n, group - 1, replace=n < group)])
        return np.concatenate([[first], rng.choice(shell, group - 1,
                                                   replace=shell.size < group - 1)])

    def _gamma(self, u: float) -> float:
        if not self.d.t1_gamma:
            return 1.0
        lo, hi = self.d.t1_gamma
        return float(np.exp(np.log(lo) + u * np.log(hi / lo)))

    def batch(self, step: int, rank: int = 0, world: int = 1) -> dict:
        hr_shape, samples = self._plan(step)
        group = self.d.direction_group
        if len(samples) % (world * group):
            raise InputError(f"batch size {len(samples)} is not divisible by {world} processes "
                             f"times dmri.direction_group {group}")
        if group == 1:
            mine = samples[rank::world]
        else:
            # Whole groups per rank, so that each rank's angular loss sees them together.
            per_rank = len(samples) // world
            mine = samples[rank * per_rank:(rank + 1) * per_rank]
        lr_shape = (self.d.lr_patch,) * 3
        own = self.use_t1 and self.t1_mode == "own_resolution"
        grid = grid_point_query(lr_shape, hr_shape, t1_shape=hr_shape if own else None)
        items = [self._sample(plan, hr_shape, grid) for plan in mine]
        out = {key: torch.from_numpy(np.stack([it[key] for it in items])) for key in items[0]}
        if not self.d.queries:
            # Every sample queries the whole HR grid: one shared (batch 1) query.
            out["points"], out["coords"] = grid.points, grid.coords
            if own:
                out["t1_points"] = grid.t1_points
        out["scale"] = float(np.prod(np.divide(hr_shape, lr_shape)) ** (1 / 3))
        out["scales"] = torch.tensor(np.divide(hr_shape, lr_shape))
        out["ref_kind"] = self.t1_mode if self.use_t1 else "none"
        out["hr_shape"], out["lr_shape"] = hr_shape, lr_shape
        return out

    def _sample(self, plan, hr_shape, grid: PointQuery) -> dict:
        index, volume, u, query_seed, gamma = plan
        s = self.subjects[index]
        region, centres = self.regions[index], self.centres[index]
        centre = centres[int(u * len(centres)) % len(centres)] + [r.start for r in region]
        size = np.array(hr_shape)
        lo = np.array([r.start for r in region])
        hi = np.array([r.stop for r in region]) - size
        origin = np.clip(centre - size // 2, lo, hi)
        crop = tuple(slice(int(o), int(o + n)) for o, n in zip(origin, size))
        lr_shape = (self.d.lr_patch,) * 3
        orient = self._orientation(query_seed, hr_shape)
        draws = self._draws(query_seed, index)
        # A new array: the crop may be a view of the subject's data.
        raw, level = self._volume_patch(index, volume, crop, draws)
        if draws["bias"] is not None:
            raw = raw * self._bias_field(s.shape, crop, draws["bias"])
        hr = orient(raw).astype(np.float32)
        pick = np.random.default_rng(query_seed).choice(
            hr.size, self.d.queries, replace=hr.size < self.d.queries) if self.d.queries else None
        lr = spline_resize(hr, lr_shape, order=3, antialias=draws["antialias"])
        brain = np.ascontiguousarray(orient(s.mask[crop]), dtype=bool)
        if draws["noise"]:
            # Rician: the magnitude of the signal plus complex Gaussian noise, inside the brain
            # of the LR patch (outside it the series path gives the model zeros).
            sigma = np.float32(draws["noise"] / level)
            inside = spline_resize(brain.astype(np.float32), lr_shape, order=1) >= 0.5
            # Within a direction group each volume has its own noise, as the directions of a
            # series have; without groups the seed stays that of earlier runs.
            noise_seed = [query_seed, 4] + ([volume] if self.d.direction_group > 1 else [])
            n = np.random.default_rng(noise_seed).normal(size=(2,) + lr_shape)
            noisy = np.sqrt((lr + sigma * n[0]) ** 2 + (sigma * n[1]) ** 2)
            lr = np.where(inside, noisy, lr)
        item = {"lr": lr[None].astype(np.float32),
                "origin": origin.astype(np.int64), "volume": np.int64(volume)}
        if self.d.tensor_weight > 0:
            item["bvec"] = np.asarray(s.bvecs[:, volume], dtype=np.float32)
            item["bval"] = np.float32(s.bvals[volume])
            # A mixture of two directions is no single direction's signal.
            item["tensor_ok"] = np.bool_(draws["mix"] is None and
                                         volume not in b0_indices(s.bvals))
        if self.d.loss_region == "brain":
            item["brain"] = (brain[None].reshape(1, -1)[:, pick] if self.d.queries
                             else brain[None])
        if self.use_t1 and (s.t1 is None or draws["drop_t1"]):
            own = self.t1_mode == "own_resolution"
            item["ref"] = np.zeros((1,) + (hr.shape if own else lr_shape), np.float32)
        elif self.use_t1:
            t1_crop = crop
            # Its own generator, so that the shift changes nothing else of the plan.
            shift_rng = np.random.default_rng([query_seed, 1])
            k = self.d.t1_shift
            offset = shift_rng.integers(-k, k + 1, size=3)
            if k and shift_rng.random() < self.d.t1_shift_fraction:
                moved = np.clip(origin + offset, lo, hi)
                t1_crop = tuple(slice(int(o), int(o + n)) for o, n in zip(moved, size))
            t1 = np.ascontiguousarray(orient(s.t1[t1_crop]), dtype=np.float32)
            if gamma != 1.0:
                t1 = np.power(np.clip(t1, 0.0, None), gamma, dtype=np.float32)
            ref = t1 if self.t1_mode == "own_resolution" else spline_resize(t1, lr_shape, 3)
            item["ref"] = ref[None].astype(np.float32)
        if self.d.queries:
            item["hr"] = hr.reshape(1, -1)[:, pick]
            item["points"] = grid.points[0, pick].numpy()
            item["coords"] = grid.coords[0, pick].numpy()
            if grid.t1_points is not None:
                item["t1_points"] = grid.t1_points[0, pick].numpy()
        else:
            item["hr"] = hr[None]
        return item

    def _draws(self, query_seed: int, index: int) -> dict:
        """The diffusion randomisation of one sample (see :class:`DmriDataConfig`), from its own
        generator; every number is always drawn, so that a switch changes nothing else."""
        d = self.d
        rng = np.random.default_rng([query_seed, 3])
        u = rng.random(8)
        coefficients = rng.uniform(-1.0, 1.0, size=9)
        other = int(rng.integers(self.subjects[index].shell.shape[3]))
        power = None
        if d.bvalue_power and u[0] < d.bvalue_power_fraction:
            lo, hi = d.bvalue_power
            power = float(np.exp(np.log(lo) + u[1] * np.log(hi / lo)))
        noise = 0.0
        if d.noise and u[5] < d.noise_fraction:
            noise = float(d.noise[0] + u[6] * (d.noise[1] - d.noise[0]))
        return {"power": power,
                "mix": (other, float(u[3])) if u[2] < d.bvalue_mix else None,
                "bias": coefficients if d.bias > 0 else None,
                "antialias": bool(u[4] < d.antialias_fraction),
                "noise": noise, "drop_t1": bool(u[7] < d.t1_dropout)}

    def _volume_patch(self, index: int, volume: int, crop: tuple, draws: dict
                      ) -> tuple[np.ndarray, float]:
        """``(HR patch before orientation, the level it was divided by)``: the training volume
        cut at ``crop``, or with ``bvalue_power``/``bvalue_mix`` a volume synthesised from the
        subject's, normalised as a measured one (robust maximum 1 over the training brain in the
        signal domain, divided by its level with ``level_norm``), both on the brain probe."""
        s = self.subjects[index]
        if draws["power"] is None and draws["mix"] is None:
            level = float(self.levels[index][volume])
            return s.shell[crop + (volume,)] / np.float32(level), level
        probe = self.probes[index]
        n = s.shell.shape[3]
        signal = self.d.domain == "signal"

        def renormalise(patch: np.ndarray, sample: np.ndarray):
            factor = robust_max(sample) if signal else 1.0
            return patch / np.float32(factor), sample / np.float32(factor)

        if draws["power"] is not None:
            k = np.float32(draws["power"])
            a = self.attenuations[index]
            patch = np.power(a[crop + (volume,)], k)
            sample = np.power(a.reshape(-1, n)[probe, volume], k)
            if signal:
                patch = patch * s.mean_b0[crop]
                sample = sample * s.mean_b0.reshape(-1)[probe]
                patch, sample = renormalise(patch, sample)
        else:
            patch = s.shell[crop + (volume,)]
            sample = s.shell.reshape(-1, n)[probe, volume]
        if draws["mix"] is not None:
            other, w = draws["mix"]
            w = np.float32(w)
            patch = w * patch + (1 - w) * s.shell[crop + (other,)]
            sample = w * sample + (1 - w) * s.shell.reshape(-1, n)[probe, other]
            patch, sample = renormalise(patch, sample)
        level = attenuation_level(sample) if self.level_norm else 1.0
        return (patch / np.float32(level)).astype(np.float32), float(level)

    def _bias_field(self, shape, crop: tuple, coefficients: np.ndarray) -> np.ndarray:
        """``exp(bias * q(u))`` on the crop: ``q`` a quadratic in the volume's normalised
        coordinates ``u`` in [-1, 1], scaled so that ``|q| <= 1`` anywhere in the volume."""
        u = np.meshgrid(*[(np.arange(c.start, c.stop) + 0.5) / n * 2.0 - 1.0
                          for c, n in zip(crop, shape)], indexing="ij")
        terms = [u[0], u[1], u[2], u[0] * u[0], u[1] * u[1], u[2] * u[2], u[0] * u[1],
                 u[0] * u[2], u[1] * u[2]]
        q = sum(c * t for c, t in zip(coefficients, terms)) / np.abs(coefficients).sum()
        return np.exp(self.d.bias * q).astype(np.float32)

    def _orientation(self, query_seed: int, hr_shape) -> Callable[[np.ndarray], np.ndarray]:
        """With ``dmri.augment``, a random flip of each axis and a random order of the axes of
        equal length (all of them for isotropic scales), the same for every array of a sample;
        otherwise the identity. A reflected or transposed attenuation volume is that of the
        reflected anatomy under the reflected gradient direction, so it is still a valid
        training volume, and one subject gives many anatomies."""
        if not self.d.augment:
            return lambda a: a
        rng = np.random.default_rng([query_seed, 2])
        flips = tuple(int(axis) for axis in np.flatnonzero(rng.random(3) < 0.5))
        order = np.arange(3)
        for n in set(hr_shape):
            same = np.flatnonzero(np.array(hr_shape) == n)
            order[same] = rng.permutation(same)

        def orient(array: np.ndarray) -> np.ndarray:
            out = np.flip(array, flips) if flips else array
            return np.transpose(out, tuple(int(a) for a in order))
        return orient

    @staticmethod
    def query(batch: dict) -> PointQuery:
        scales = batch["scales"].reshape(1, 3).to(batch["points"].dtype)
        return PointQuery(batch["points"], batch["coords"], batch.get("t1_points"), scales)

    def loss(self, model, batch: dict):
        """``L1 (or loss.pixel_norm) + frequency_weight * mean |FFT(pred) - FFT(hr)|`` over the
        HR patch (3D), plus ``angular_weight *`` :func:`~mrisr.training.losses.angular_loss`
        over each direction group and ``tensor_weight *``
        :func:`~mrisr.training.losses.tensor_loss` over each one-shell group; with
        ``loss_region: brain`` only the brain voxels' errors count."""
        # A model on the output grid (spline_refiner) takes the HR patch's shape, not points.
        net = getattr(model, "module", model)  # DDP wraps the model
        query = batch["hr_shape"] if getattr(net, "grid_output", False) else self.query(batch)
        pred = model(batch["lr"], batch.get("ref"), query)
        target = batch["hr"]
        pred = pred.reshape(target.shape)
        inside = batch.get("brain")
        if inside is not None:
            pred = torch.where(inside, pred, target)
        weight = 0.0 if self.d.queries else self.d.frequency_weight
        loss, parts = sr_loss(pred, target, 3, weight, None, "all", "l1",
                              self.cfg.loss.pixel_norm)
        if self.d.angular_weight > 0:
            group = self.d.direction_group
            grouped = [x.reshape((-1, group) + x.shape[1:]) for x in (pred, target)]
            mask = None if inside is None else inside.reshape((-1, group) + inside.shape[1:])
            angular = angular_loss(*grouped, mask=mask)
            parts["aloss"] = float(angular.detach())
            loss = loss + self.d.angular_weight * angular
        if self.d.tensor_weight > 0:
            tensor = self._tensor_loss(pred, target, inside, batch)
            parts["tloss"] = float(tensor.detach())
            loss = loss + self.d.tensor_weight * tensor
        return loss, parts

    def _tensor_loss(self, pred, target, inside, batch) -> torch.Tensor:
        """:func:`~mrisr.training.losses.tensor_loss` over the groups whose volumes are all
        diffusion-weighted volumes of one shell, unmixed (0 when there is none)."""
        shape = (-1, self.d.direction_group)
        bvals = batch["bval"].reshape(shape)
        # A group is one shell's (_shell_group) unless it holds a b=0 or a mixed volume.
        ok = batch["tensor_ok"].reshape(shape).all(dim=1)
        if not bool(ok.any()):
            return 0 * pred.float().sum()
        grouped = [x.reshape(shape + x.shape[1:])[ok] for x in (pred, target)]
        mask = None if inside is None else inside.reshape(shape + inside.shape[1:])[ok]
        return tensor_loss(*grouped, batch["bvec"].reshape(shape + (3,))[ok], bvals[ok],
                           mask=mask)
