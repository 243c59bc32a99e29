"""Settings of ``mrisr train`` (every key may appear in the YAML file)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from mrisr.data.datasets import DatasetSpec
from mrisr.errors import ConfigError


@dataclass
class ModelSpec:
    """Registry name (preset or architecture) and argument overrides."""

    name: str = "dualarbnet_s"
    args: dict = field(default_factory=dict)


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
        if any(s < 1.0 for s in scales) or len(self.scale_range) != 2:
            raise ConfigError(f"{source}: phase '{self.name}': scales must be >= 1 and "
                              "scale_range must be [min, max]")


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

    def validate(self, source: str) -> None:
        if self.input not in ("magnitude", "complex"):
            raise ConfigError(f"{source}: data.input must be magnitude or complex")
        if self.patch < 4:
            raise ConfigError(f"{source}: data.patch must be at least 4")


@dataclass
class LossConfig:
    kspace_weight: float = 0.05
    kspace_mask: str = "unseen"
    kspace_norm: str = "l1"

    def validate(self, source: str) -> None:
        if self.kspace_mask not in ("unseen", "seen", "all"):
            raise ConfigError(f"{source}: loss.kspace_mask must be unseen, seen or all")
        if self.kspace_norm not in ("l1", "l2"):
            raise ConfigError(f"{source}: loss.kspace_norm must be l1 or l2")


@dataclass
class OptimConfig:
    """Adam; ``schedule`` ``step`` (multiply by ``gamma`` every ``decay_every`` steps, the
    papers) or ``cosine`` (to ``min_lr_ratio`` at the end of the curriculum)."""

    lr: float = 1e-4
    batch_size: int = 6
    schedule: str = "step"
    decay_every: int = 100000
    gamma: float = 0.5
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: Optional[float] = None

    def validate(self, source: str) -> None:
        if self.schedule not in ("step", "cosine"):
            raise ConfigError(f"{source}: optim.schedule must be step or cosine")
        if self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"{source}: optim.batch_size and optim.lr must be positive")


@dataclass
class ValidationConfig:
    """Periodic evaluation with the shared harness (0 disables)."""

    every: int = 0
    evaluate: dict = field(default_factory=dict)


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    threads: Optional[int] = None
    max_minutes: Optional[float] = None
    checkpoint_every: int = 200
    log_every: int = 10
    tensorboard: bool = False


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
