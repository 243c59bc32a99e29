"""Settings of ``mrisr train`` (every key may appear in the YAML file)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from mrisr.data.datasets import DatasetSpec
from mrisr.data.dwi_sources import DwiFiles, DwiSourceConfig  # noqa: F401  (DwiFiles: old home)
from mrisr.config import MAX_SCALE, is_scale
from mrisr.errors import ConfigError

#: Adam moves each weight by about the learning rate per step: beyond this bound every step
#: dwarfs weights of order one (a slip of the keyboard, as 1e308 is).
MAX_LEARNING_RATE = 10.0


def is_learning_rate(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and \
        math.isfinite(value) and 0 < value <= MAX_LEARNING_RATE
from mrisr.precision import PRECISIONS


@dataclass
class ModelSpec:
    """Registry name (preset or architecture) and argument overrides.

    init: start from trained weights instead of a random initialisation: a preset with shipped
    weights or a checkpoint path, of the same architecture and arguments (fine-tuning).
    """

    name: str = "dualarbnet_s"
    args: dict = field(default_factory=dict)
    init: Optional[str] = None


@dataclass
class Phase:
    """One curriculum phase.

    target_scales: explicit list of target scales, or empty to draw from
        ``scale_range`` on a grid of ``scale_step`` (Dual-ArbNet: 1.0 .. 4.0 step 0.1).
    reference: probabilities of the reference types: ``hr`` (full resolution), ``lr``
        (degraded like the target) and ``own`` (degraded at its own scale drawn from
        ``reference_scale_range``, independent of the target's: the dual-arbitrary setting).
    lr: learning rate for this phase (default: ``optim.lr``).
    """

    name: str = "train"
    steps: int = 1000
    target_scales: list[float] = field(default_factory=list)
    scale_range: list[float] = field(default_factory=lambda: [1.0, 4.0])
    scale_step: float = 0.1
    reference: dict = field(default_factory=lambda: {"hr": 1.0})
    reference_scale_range: list[float] = field(default_factory=lambda: [1.0, 4.0])
    lr: Optional[float] = None

    def validate(self, source: str) -> None:
        unknown = set(self.reference) - {"hr", "lr", "own"}
        if unknown:
            raise ConfigError(f"{source}: phase '{self.name}': unknown reference type(s) "
                              f"{', '.join(sorted(unknown))} (known: hr, lr, own)")
        if not self.reference or any(float(p) < 0 for p in self.reference.values()) or \
                sum(float(p) for p in self.reference.values()) <= 0:
            raise ConfigError(f"{source}: phase '{self.name}': reference probabilities must be "
                              "non-negative and not all zero")
        if self.steps <= 0:
            raise ConfigError(f"{source}: phase '{self.name}': steps must be positive")
        scales = self.target_scales or self.scale_range
        if not all(is_scale(s) for s in scales) or len(self.scale_range) != 2:
            raise ConfigError(f"{source}: phase '{self.name}': scales must be numbers from 1 "
                              f"to {MAX_SCALE:g} and scale_range must be [min, max]")
        if self.lr is not None and not is_learning_rate(self.lr):
            raise ConfigError(f"{source}: phase '{self.name}': lr must be a number in "
                              f"(0, {MAX_LEARNING_RATE:g}], got {self.lr}")


@dataclass
class SourceSpec:
    """One source of 2D training slices in ``data.sources`` (several sources: one model that
    has seen several sites, contrasts and fields of view).

    kind: ``brats`` (folder ``root`` of patients with ``<patient>_<contrast>.nii.gz``, split by
        patient as :class:`~mrisr.data.datasets.DatasetSpec`: the last ``n_test`` are ``test``),
        ``manifest`` (the subjects of ``manifest`` in ``split``; the first reference is
        resampled onto the target's grid through the affines) or ``images`` (single volumes in
        ``files``, e.g. whole heads with skull; each is paired with synthetic second contrasts).
    contrasts: for ``brats``, the contrasts loaded. pairs: ordered ``[target, reference]``
        pairs drawn from them; empty: every ordered pair.
    slice_axes: the axes along which slices are taken (all three: in-plane and through-plane
        views, which thick-slice training needs).
    synthetic: probability that a sample's reference is replaced by a random remapping of its
        target or reference (:mod:`mrisr.data.synthetic`); ``images`` sources always use one,
        and their target is remapped too with this probability.
    weight: the source's share of the samples (relative to the other sources); within a source,
        every valid slice is equally likely.
    head_threshold: for volumes without a mask, the foreground is where the image exceeds this
        fraction of its robust maximum.
    """

    name: str = "brats"
    kind: str = "brats"
    root: str = "${MRISR_DATA}/brats18-tcia"
    manifest: Optional[str] = None
    files: list[str] = field(default_factory=list)
    contrasts: list[str] = field(default_factory=lambda: ["t1", "t1ce", "t2", "flair"])
    pairs: list[list[str]] = field(default_factory=list)
    split: str = "train"
    n_test: int = 2
    slice_axes: list[int] = field(default_factory=lambda: [2])
    synthetic: float = 0.0
    weight: float = 1.0
    head_threshold: float = 0.05

    def validate(self, source: str) -> None:
        where = f"{source}: data.sources '{self.name}'"
        if self.kind not in ("brats", "manifest", "images"):
            raise ConfigError(f"{where}: kind must be brats, manifest or images, got "
                              f"'{self.kind}'")
        if self.kind == "manifest" and not self.manifest:
            raise ConfigError(f"{where}: manifest is required for kind 'manifest'")
        if self.kind == "images" and not self.files:
            raise ConfigError(f"{where}: files is required for kind 'images'")
        if any(len(p) != 2 or p[0] == p[1] or not set(p) <= set(self.contrasts)
               for p in self.pairs):
            raise ConfigError(f"{where}: pairs must be [target, reference] of two different "
                              "contrasts listed in contrasts")
        if not self.slice_axes or any(a not in (0, 1, 2) for a in self.slice_axes):
            raise ConfigError(f"{where}: slice_axes must list axes 0, 1 or 2")
        if not 0.0 <= self.synthetic <= 1.0 or self.weight <= 0:
            raise ConfigError(f"{where}: synthetic must be in [0, 1] and weight positive")


@dataclass
class RandomiseConfig:
    """Domain randomisation of each training sample (``data.randomise``), applied to the
    high-resolution images before the acquisition is simulated (:mod:`mrisr.data.randomise`).
    Every field has the value recommended for a model meant for other sites' scans; a
    probability of 0 switches that part off.

    bias: largest log-amplitude of a smooth multiplicative bias field (independent for target
        and reference). noise_snr: ``[min, max]`` signal-to-noise ratio (robust maximum over
        noise sigma, log-uniform), Rician with probability ``rician``, else Gaussian.
    gamma: ``[min, max]`` of a random power (log-uniform), independent for both images.
    rotation: largest in-plane rotation in degrees (both images together).
    reference_shift: largest misregistration of the reference, in its own voxels per axis.
    background_patches: share of patches centred anywhere in the slice (the others on the
        foreground), so that noise and background are seen as well as anatomy.
    """

    bias: float = 0.3
    bias_probability: float = 0.5
    noise_snr: list[float] = field(default_factory=lambda: [12.0, 100.0])
    noise_probability: float = 0.6
    rician: float = 0.7
    gamma: list[float] = field(default_factory=lambda: [0.7, 1.4])
    gamma_probability: float = 0.5
    rotation: float = 10.0
    rotation_probability: float = 0.3
    reference_shift: float = 1.0
    reference_shift_probability: float = 0.5
    background_patches: float = 0.1

    def validate(self, source: str) -> None:
        probs = (self.bias_probability, self.noise_probability, self.rician,
                 self.gamma_probability, self.rotation_probability,
                 self.reference_shift_probability, self.background_patches)
        if any(not 0.0 <= p <= 1.0 for p in probs):
            raise ConfigError(f"{source}: data.randomise probabilities must be in [0, 1]")
        for name in ("noise_snr", "gamma"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
                raise ConfigError(f"{source}: data.randomise.{name} must be [min, max] with "
                                  "0 < min <= max")
        if self.bias < 0 or self.rotation < 0 or self.reference_shift < 0:
            raise ConfigError(f"{source}: data.randomise bias, rotation and reference_shift "
                              "must be >= 0")


@dataclass
class DegradationMix:
    """Random acquisitions (``data.degradations``), drawn once per batch.

    kinds: probabilities of the in-plane degradations of the target (names of
        :data:`mrisr.degradation.DEGRADATIONS`), at the phase's isotropic scale.
    thick_slice: share of batches degraded along one axis only, as thick slices, with a factor
        from ``thick_scale_range`` and a slice profile from ``thick_profiles`` (probabilities of
        ``box`` and ``gaussian``) of width ``thickness_range`` times the slice spacing.
    reference_kinds: probabilities of the degradations of a reference below full resolution.
    """

    kinds: dict = field(default_factory=lambda: {
        "kspace": 0.4, "kspace_hamming": 0.1, "kspace_tukey": 0.1, "kspace_partial": 0.1,
        "gaussian": 0.3})
    thick_slice: float = 0.3
    thick_scale_range: list[float] = field(default_factory=lambda: [2.0, 6.0])
    thick_profiles: dict = field(default_factory=lambda: {"box": 0.6, "gaussian": 0.4})
    thickness_range: list[float] = field(default_factory=lambda: [0.8, 1.2])
    reference_kinds: dict = field(default_factory=lambda: {"kspace": 0.7, "gaussian": 0.3})

    def validate(self, source: str) -> None:
        from mrisr.degradation import DEGRADATIONS
        for name, table in (("kinds", self.kinds), ("reference_kinds", self.reference_kinds)):
            unknown = set(table) - set(DEGRADATIONS) | {k for k in table if "thick" in k}
            if unknown or not table or any(float(p) < 0 for p in table.values()) or \
                    sum(float(p) for p in table.values()) <= 0:
                raise ConfigError(f"{source}: data.degradations.{name} must give non-negative "
                                  "probabilities of in-plane degradations "
                                  f"({', '.join(k for k in DEGRADATIONS if 'thick' not in k)})")
        if set(self.thick_profiles) - {"box", "gaussian"} or not self.thick_profiles:
            raise ConfigError(f"{source}: data.degradations.thick_profiles: box and/or gaussian")
        if not 0.0 <= self.thick_slice <= 1.0:
            raise ConfigError(f"{source}: data.degradations.thick_slice must be in [0, 1]")
        for name in ("thick_scale_range", "thickness_range"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
                raise ConfigError(f"{source}: data.degradations.{name} must be [min, max]")
        if self.thick_scale_range[0] < 1:
            raise ConfigError(f"{source}: data.degradations.thick_scale_range must be >= 1")


@dataclass
class DataConfig:
    """Training pairs: 2D slices of co-registered target/reference volumes.

    input: ``magnitude`` (what NIfTI users have; the default) or ``complex`` (real and
    imaginary channels, as the reference code). patch: LR patch size (voxels).
    """

    dataset: DatasetSpec = field(default_factory=lambda: DatasetSpec(split="train"))
    slice_axis: int = 2
    min_brain_fraction: float = 0.1
    degradation: str = "kspace"
    input: str = "magnitude"
    patch: int = 32
    reference_margin: int = 4
    augment: bool = True
    sources: list[SourceSpec] = field(default_factory=list)
    randomise: Optional[RandomiseConfig] = None
    degradations: Optional[DegradationMix] = None

    def validate(self, source: str) -> None:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"{source}: data.sources need unique names")
        if (self.randomise or self.degradations) and self.input != "magnitude":
            raise ConfigError(f"{source}: data.randomise and data.degradations need "
                              "input: magnitude")
        if self.input not in ("magnitude", "complex"):
            raise ConfigError(f"{source}: data.input must be magnitude or complex")
        if self.patch < 4:
            raise ConfigError(f"{source}: data.patch must be at least 4")


@dataclass
class DmriDataConfig(DwiSourceConfig):
    """3D diffusion training (``task: dmri3d``, CSR-dMRI Sec. 3.1): the subjects
    (:class:`DwiSourceConfig`) and the patches.

    lr_patch: LR patch size (the paper: 10); the HR patch is ``round(lr_patch * s)`` per axis
        with ``s ~ U(scale_range)`` drawn per step (per axis with ``per_axis``).
    queries: HR voxels decoded per patch; 0 = all (needed by the frequency loss).
    frequency_weight: lambda of ``L1 + lambda * mean |FFT(pred) - FFT(hr)|`` (paper 0.01). The
        ``loss`` section configures the 2D task only; for this task the phase's ``steps`` and
        ``lr`` apply, its scale and reference settings do not.
    loss_region: ``patch`` (the paper: every HR voxel of the patch) or ``brain`` (only voxels
        inside the brain mask, where the evaluation scores and the attenuation is defined;
        outside it the prediction is replaced by the target before both loss terms).
    t1_gamma: ``[min, max]`` of a random power applied to each T1w patch (log-uniform), so the
        model does not learn one T1w sequence's contrast; empty: none.
    t1_shift: the T1w patch is cut at a random offset of up to this many HR voxels per axis
        from the DWI patch (within the training region), so the model learns not to trust
        T1w detail that a distorted EPI does not share; 0: aligned.
    t1_shift_fraction: the share of samples whose T1w patch is shifted (the others stay
        aligned), so that the model has to tell from the data how far to trust the T1w.
    augment: flip each axis and permute the axes of each sample at random (the same for its
        DWI, mask and T1w patches): one subject's anatomy in 48 orientations.
    domain: what the patches hold: ``attenuation`` (the shell divided by the mean b=0, as the
        paper) or ``signal`` (the shell times the mean b=0, each volume divided by its robust
        maximum in the training region: what ``mrisr upscale`` gives a model from a series).
    simulate_bvalues, simulate_per_bvalue: add to each training subject ``simulate_per_bvalue``
        volumes per b-value simulated from its tensor fit and noise
        (:func:`~mrisr.data.dwi.simulate_shells`), so one measured shell teaches others.
    pad_to_patch: zero-pad (at the low end of an axis, away from the held-out slab) a subject
        whose training region is thinner than the largest HR patch along that axis (thick-slice
        series of 25 slices), instead of refusing it; the padding is outside the brain mask.

    Diffusion randomisation (each drawn per sample from its own generator, so that switching one
    on changes nothing else of the plan):

    include_b0: ``domain: signal`` only: the mean b=0 is one more training volume of each
        subject (a user's series has b=0 volumes, and the series path upscales them too).
    bvalue_power: ``[min, max]``: in ``bvalue_power_fraction`` of the samples the attenuation
        is raised to a log-uniform power ``k`` (``exp(-b ADC)^k``: the same direction at ``k``
        times its b-value, a mono-exponential stand-in for other shells); empty: off.
    bvalue_mix: share of samples that are a random convex combination of two volumes of the
        subject (two directions, two shells, or a b=0 and a diffusion-weighted volume with
        ``include_b0``); like ``bvalue_power``, renormalised as a measured volume is.
    noise: ``[min, max]``: in ``noise_fraction`` of the samples Rician noise of a uniform
        standard deviation (relative to the volume's robust maximum in the signal domain, to
        ``S_0`` in the attenuation domain) is added to the brain of the LR patch: the noise
        floor of a lower-SNR series; empty: off.
    bias: strength of a random smooth multiplicative field ``exp(bias * q(u))`` (``q`` a random
        quadratic in the volume's normalised coordinates, ``|q| <= 1``) applied to the HR patch
        before it is degraded (coil sensitivity); 0: off.
    antialias_fraction: share of samples whose LR patch is Gaussian-filtered before the cubic
        B-spline downsampling (``degrade(kind="bicubic_aa")``: an LR series acquired, not
        subsampled); the T1w channel is degraded as always.
    t1_dropout: share of samples whose T1w channel is zero, so that one T1w-guided model also
        serves series without a T1w (given zeros); subjects without a T1w are allowed then,
        and always get zeros.
    direction_group: the batch is made of groups of this many volumes of one subject cut at
        the same place and drawn alike (``optim.batch_size`` must be a multiple); 1: every
        sample drawn on its own.
    angular_weight: weight of :func:`~mrisr.training.losses.angular_loss` over each direction
        group (needs ``direction_group >= 2``): the part of the error that differs between
        directions, which the tensor fit reads as anisotropy (FA error); 0: off.
    tensor_weight: weight of :func:`~mrisr.training.losses.tensor_loss` over each direction
        group (needs ``direction_group >= 7``, so that a group holds more directions than the
        tensor's 6 unknowns): only the part of the error that moves the fitted diffusion
        tensor's anisotropy. With it, a group drawn from a diffusion-weighted volume is drawn
        from that volume's shell; groups with a b=0 volume or a mixed volume
        (``bvalue_mix``) do not count. 0: off.
    """

    lr_patch: int = 10
    scale_range: list[float] = field(default_factory=lambda: [2.0, 3.0])
    per_axis: bool = False
    queries: int = 0
    frequency_weight: float = 0.01
    loss_region: str = "patch"
    t1_gamma: list[float] = field(default_factory=list)
    simulate_bvalues: list[float] = field(default_factory=list)
    simulate_per_bvalue: int = 8
    t1_shift: int = 0
    t1_shift_fraction: float = 1.0
    augment: bool = False
    domain: str = "attenuation"
    pad_to_patch: bool = False
    include_b0: bool = False
    bvalue_power: list[float] = field(default_factory=list)
    bvalue_power_fraction: float = 0.5
    bvalue_mix: float = 0.0
    noise: list[float] = field(default_factory=list)
    noise_fraction: float = 0.5
    bias: float = 0.0
    antialias_fraction: float = 0.0
    t1_dropout: float = 0.0
    direction_group: int = 1
    angular_weight: float = 0.0
    tensor_weight: float = 0.0

    def validate(self, source: str) -> None:
        super().validate(source)
        if self.direction_group < 1:
            raise ConfigError(f"{source}: dmri.direction_group must be at least 1")
        if self.angular_weight < 0:
            raise ConfigError(f"{source}: dmri.angular_weight must be >= 0")
        if self.angular_weight and self.direction_group < 2:
            raise ConfigError(f"{source}: dmri.angular_weight compares the volumes of a group; "
                              "set dmri.direction_group to 2 or more")
        if self.tensor_weight < 0:
            raise ConfigError(f"{source}: dmri.tensor_weight must be >= 0")
        if self.tensor_weight and self.direction_group < 7:
            raise ConfigError(f"{source}: dmri.tensor_weight fits a tensor (6 unknowns) to the "
                              "volumes of a group; set dmri.direction_group to 7 or more")
        for name in ("bvalue_power_fraction", "bvalue_mix", "noise_fraction",
                     "antialias_fraction", "t1_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{source}: dmri.{name} must be in [0, 1]")
        if self.bvalue_power and (len(self.bvalue_power) != 2 or
                                  not 0 < self.bvalue_power[0] <= self.bvalue_power[1]):
            raise ConfigError(f"{source}: dmri.bvalue_power must be [min, max] with "
                              "0 < min <= max, or empty")
        if self.noise and (len(self.noise) != 2 or not 0 <= self.noise[0] <= self.noise[1]):
            raise ConfigError(f"{source}: dmri.noise must be [min, max] with 0 <= min <= max, "
                              "or empty")
        if self.bias < 0:
            raise ConfigError(f"{source}: dmri.bias must be >= 0")
        if self.include_b0 and self.domain != "signal":
            raise ConfigError(f"{source}: dmri.include_b0 needs dmri.domain signal (a b=0 "
                              "attenuation is 1 everywhere)")
        if self.domain not in ("attenuation", "signal"):
            raise ConfigError(f"{source}: dmri.domain must be attenuation or signal, got "
                              f"'{self.domain}'")
        if self.loss_region not in ("patch", "brain"):
            raise ConfigError(f"{source}: dmri.loss_region must be patch or brain, got "
                              f"'{self.loss_region}'")
        if self.lr_patch < 2:
            raise ConfigError(f"{source}: dmri.lr_patch must be at least 2")
        if self.t1_gamma and (len(self.t1_gamma) != 2 or
                              not 0 < self.t1_gamma[0] <= self.t1_gamma[1]):
            raise ConfigError(f"{source}: dmri.t1_gamma must be [min, max] with "
                              "0 < min <= max, or empty")
        if self.t1_shift < 0:
            raise ConfigError(f"{source}: dmri.t1_shift must be >= 0 voxels")
        if not 0.0 <= self.t1_shift_fraction <= 1.0:
            raise ConfigError(f"{source}: dmri.t1_shift_fraction must be in [0, 1]")
        if any(b <= 0 for b in self.simulate_bvalues) or self.simulate_per_bvalue < 1:
            raise ConfigError(f"{source}: dmri.simulate_bvalues must be positive b-values and "
                              "dmri.simulate_per_bvalue at least 1")
        if len(self.scale_range) != 2 or not all(is_scale(s) for s in self.scale_range) or \
                self.scale_range[0] > self.scale_range[1]:
            raise ConfigError(f"{source}: dmri.scale_range must be [min, max] with "
                              f"1 <= min <= max <= {MAX_SCALE:g}")
        if self.queries < 0 or self.frequency_weight < 0:
            raise ConfigError(f"{source}: dmri.queries and dmri.frequency_weight must be >= 0")
        if self.queries and self.frequency_weight:
            raise ConfigError(f"{source}: dmri.frequency_weight needs the whole HR patch; set "
                              "dmri.queries to 0 or the weight to 0")


@dataclass
class LossConfig:
    """The objective: ``pixel_norm`` distance to the HR image plus ``kspace_weight`` times the
    frequency loss (:func:`mrisr.training.losses.sr_loss`; the ``kspace_*`` keys are 2D's, the
    3D task weighs its own by ``dmri.frequency_weight``). ``pixel_norm``: ``l1`` (the papers)
    or ``l2`` (root mean square: its minimiser under uncertainty is the mean, which is what PSNR
    rewards, where L1's is the median)."""

    kspace_weight: float = 0.05
    kspace_mask: str = "unseen"
    kspace_norm: str = "l1"
    pixel_norm: str = "l1"

    def validate(self, source: str) -> None:
        if self.pixel_norm not in ("l1", "l2"):
            raise ConfigError(f"{source}: loss.pixel_norm must be l1 or l2")
        if self.kspace_mask not in ("unseen", "seen", "all"):
            raise ConfigError(f"{source}: loss.kspace_mask must be unseen, seen or all")
        if self.kspace_norm not in ("l1", "l2"):
            raise ConfigError(f"{source}: loss.kspace_norm must be l1 or l2")


@dataclass
class OptimConfig:
    """Adam; ``schedule`` ``step`` (multiply by ``gamma`` every ``decay_every`` steps, the
    papers) or ``cosine`` (to ``min_lr_ratio`` at the end of the curriculum).

    ``ema_decay``: keep an exponential moving average of the weights (decay per step; 0 = off)
    and write it as the trained model (``final.pt``, validation). With targets as noisy as
    diffusion attenuations the last SGD iterate overshoots; the average does not.
    """

    lr: float = 1e-4
    batch_size: int = 6
    schedule: str = "step"
    decay_every: int = 100000
    gamma: float = 0.5
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: Optional[float] = None
    ema_decay: float = 0.0

    def validate(self, source: str) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"{source}: optim.ema_decay must be in [0, 1), got "
                              f"{self.ema_decay}")
        if self.schedule not in ("step", "cosine"):
            raise ConfigError(f"{source}: optim.schedule must be step or cosine")
        if self.batch_size < 1 or not is_learning_rate(self.lr):
            raise ConfigError(f"{source}: optim.batch_size must be positive and optim.lr a "
                              f"number in (0, {MAX_LEARNING_RATE:g}], got {self.batch_size} "
                              f"and {self.lr}")


@dataclass
class ValidationConfig:
    """Periodic evaluation with the shared harness (0 disables)."""

    every: int = 0
    evaluate: dict = field(default_factory=dict)


@dataclass
class RunConfig:
    """How a run executes.

    precision: ``auto`` (bf16 autocast where the device has fast bf16 units, else fp32),
        ``fp32`` or ``bf16`` (:mod:`mrisr.precision`); weights and optimiser state stay fp32.
    amp: configs written before ``precision`` existed: ``false`` means ``fp32``.
    max_minutes: time budget of the whole run, summed over resumed pieces (the cosine
        schedule anneals to it); the run then ends with ``final.pt``.
    session_minutes: time budget of one invocation: training stops cleanly after it with
        ``last.pt`` (no ``final.pt``), to be continued with ``mrisr train ... --resume auto``,
        possibly on another machine.
    """

    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    amp: bool = True
    threads: Optional[int] = None
    max_minutes: Optional[float] = None
    session_minutes: Optional[float] = None
    checkpoint_every: int = 200
    log_every: int = 10
    tensorboard: bool = False

    @property
    def requested_precision(self) -> str:
        return "fp32" if not self.amp and self.precision == "auto" else self.precision

    def validate(self, source: str) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{source}: run.precision must be one of {', '.join(PRECISIONS)}, "
                              f"got '{self.precision}'")
        for key in ("max_minutes", "session_minutes"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"{source}: run.{key} must be positive, got {value}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ConfigError(f"{source}: run.checkpoint_every and run.log_every must be >= 1")
        if self.threads is not None and not 1 <= self.threads <= 4096:
            raise ConfigError(f"{source}: run.threads must be from 1 to 4096, got {self.threads}")


#: Training tasks: 2D slices (Dual-ArbNet, LIIF) and 3D diffusion patches (CSR-dMRI family).
TASKS = ("slices2d", "dmri3d")


@dataclass
class TrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    curriculum: list[Phase] = field(default_factory=lambda: [Phase()])
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    run: RunConfig = field(default_factory=RunConfig)
    output: str = "runs/train"
    task: str = "slices2d"
    dmri: DmriDataConfig = field(default_factory=DmriDataConfig)

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.curriculum)

    def phase_at(self, step: int) -> tuple[int, Phase]:
        """The phase that step ``step`` (0-based) belongs to."""
        start = 0
        for i, phase in enumerate(self.curriculum):
            if step < start + phase.steps:
                return i, phase
            start += phase.steps
        return len(self.curriculum) - 1, self.curriculum[-1]

    def validate(self, source: str) -> None:
        if not self.curriculum:
            raise ConfigError(f"{source}: curriculum needs at least one phase")
        if self.task not in TASKS:
            raise ConfigError(f"{source}: task must be one of {', '.join(TASKS)}, "
                              f"got '{self.task}'")
        if self.task == "dmri3d" and self.validation.every:
            raise ConfigError(f"{source}: validation.every runs the 2D slice evaluation; set it "
                              "to 0 for task dmri3d")
        if self.task == "dmri3d" and self.optim.batch_size % self.dmri.direction_group:
            raise ConfigError(f"{source}: optim.batch_size {self.optim.batch_size} must be a "
                              f"multiple of dmri.direction_group {self.dmri.direction_group}")
