"""``mrisr evaluate``: methods x dataset x degradation x scales x reference type.

One :func:`evaluate` function serves the command line, the benchmarks and validation during
training. It is deterministic: degradations are fixed functions of the data and the scale, the
slice choice is fixed by the config, and methods run in evaluation mode.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

from mrisr.data.datasets import DatasetSpec, SubjectVolumes, count_subjects, load_subjects
from mrisr.data.selection import select_slices
from mrisr.degradation import DEGRADATIONS, degrade
from mrisr.config import MAX_SCALE, is_scale
from mrisr.errors import ConfigError
from mrisr.evaluation.methods import SRCase, SRMethod, make_method
from mrisr.evaluation.metrics import PROTOCOLS, evaluate_case
from mrisr.grid import effective_scale
from mrisr.progress import progress

__all__ = ["DEFAULT_SCALES", "MethodSpec", "EvaluateConfig", "scale_label", "FigureCase",
           "EvaluationResult", "select_slices", "evaluate"]

DEFAULT_SCALES = [1.5, 2.0, 3.0, 4.0, 6.0, 8.0]


@dataclass
class MethodSpec:
    """A method to evaluate: registry ``name``, constructor ``args`` and a display ``label``."""

    name: str
    args: dict = field(default_factory=dict)
    label: Optional[str] = None

    @property
    def display(self) -> str:
        return self.label or self.name


def _default_methods() -> list[MethodSpec]:
    return [MethodSpec(n) for n in ("nearest", "linear", "cubic", "kspace_zerofill")]


@dataclass
class EvaluateConfig:
    """Settings of an evaluation run (every key may appear in the YAML file).

    mode: ``slices`` (2D slices along ``slice_axis`` whose brain fraction is at least
    ``min_brain_fraction``, every ``slice_step``-th, at most ``max_slices`` evenly spread per
    subject) or ``volume`` (whole 3D volumes).
    references: reference types: ``hr`` (full resolution), ``lr`` (degraded like the target)
    or a number (degraded at that scale of its own). Methods without a reference are run once.
    scales: isotropic scales, or per-axis lists such as ``[1, 1, 4]`` (thick-slice data).
    in_distribution_max: the largest training scale; larger scales are marked
    out-of-distribution in the table.
    task: ``slices2d`` (this harness); ``mrisr evaluate`` sends ``dmri3d`` configs to
    :mod:`mrisr.evaluation.dmri`.
    crop_margin: in ``volume`` mode, crop every volume to the bounding box of its mask plus
    this many voxels (background costs model time and says little); ``None``: whole volumes.
    slab: in ``volume`` mode, keep only this many central slices along ``slice_axis`` (after
    cropping; the centre of the mask), to bound the cost of slow methods; ``None``: all.
    """

    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    mode: str = "slices"
    slice_axis: int = 2
    min_brain_fraction: float = 0.1
    slice_step: int = 1
    max_slices: Optional[int] = None
    crop_multiple: int = 1
    crop_margin: Optional[int] = None
    slab: Optional[int] = None
    degradation: str = "kspace"
    scales: list = field(default_factory=lambda: list(DEFAULT_SCALES))
    references: list[str] = field(default_factory=lambda: ["hr", "lr"])
    methods: list[MethodSpec] = field(default_factory=_default_methods)
    protocol: str = "dualarbnet"
    use_mask: bool = False
    figure_scale: Optional[float] = 4.0
    in_distribution_max: float = 4.0
    output: str = "results/evaluate"
    task: str = "slices2d"

    def validate(self, source: str) -> None:
        if self.task != "slices2d":
            raise ConfigError(f"{source}: task must be slices2d (this evaluation) or dmri3d "
                              f"(the diffusion evaluation), got '{self.task}'")
        if self.mode not in ("slices", "volume"):
            raise ConfigError(f"{source}: mode must be 'slices' or 'volume', got '{self.mode}'")
        if self.degradation not in DEGRADATIONS:
            raise ConfigError(f"{source}: unknown degradation '{self.degradation}' "
                              f"(known: {', '.join(DEGRADATIONS)})")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"{source}: unknown protocol '{self.protocol}' "
                              f"(known: {', '.join(PROTOCOLS)})")
        for s in self.scales:
            values = s if isinstance(s, list) else [s]
            if not values or not all(is_scale(v) for v in values):
                raise ConfigError(f"{source}: scales must be numbers from 1 to {MAX_SCALE:g} "
                                  f"(or lists of them per axis), got {s!r}")
        if not 0.0 <= self.min_brain_fraction <= 1.0:
            raise ConfigError(f"{source}: min_brain_fraction must be between 0 and 1, got "
                              f"{self.min_brain_fraction!r}")
        for key in ("slice_step", "crop_multiple", "max_slices"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{source}: {key} must be a whole number >= 1, got {value!r}")
        if self.crop_margin is not None and self.crop_margin < 0:
            raise ConfigError(f"{source}: crop_margin must be >= 0, got {self.crop_margin!r}")
        for r in self.references:
            if r not in ("hr", "lr"):
                try:
                    if float(r) <= 0:
                        raise ValueError
                except ValueError:
                    raise ConfigError(f"{source}: reference type must be hr, lr or a positive "
                                      f"scale, got '{r}'") from None
        if self.slab is not None and (isinstance(self.slab, bool) or not isinstance(
                self.slab, int) or self.slab < 1):
            raise ConfigError(f"{source}: slab must be a whole number of slices >= 1, got "
                              f"{self.slab!r}")
        if not self.methods:
            raise ConfigError(f"{source}: methods is empty")
        labels = [m.display for m in self.methods]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{source}: method labels must be unique ({', '.join(labels)})")


def scale_label(scale) -> str:
    """``2.0 -> "2"``, ``[1, 1, 4] -> "1x1x4"``."""
    values = scale if isinstance(scale, (list, tuple)) else [scale]
    return "x".join(f"{float(v):g}" for v in values)


@dataclass
class FigureCase:
    """Images of one case kept for the comparison figure."""

    subject: str
    index: int
    scale: str
    hr: np.ndarray
    lr: np.ndarray
    predictions: dict = field(default_factory=dict)


@dataclass
class EvaluationResult:
    rows: list[dict]
    config: EvaluateConfig
    figure: Optional[FigureCase] = None


def _centre_crop(image: np.ndarray, multiple: int) -> np.ndarray:
    if multiple <= 1:
        return image
    index = []
    for n in image.shape:
        m = (n // multiple) * multiple
        start = (n - m) // 2
        index.append(slice(start, start + m))
    return image[tuple(index)]


def _cases(subject: SubjectVolumes, cfg: EvaluateConfig) -> Iterable[tuple[int, np.ndarray,
                                                                           Optional[np.ndarray],
                                                                           np.ndarray]]:
    mask = subject.brain_mask()
    if cfg.mode == "volume":
        box = (slice(None),) * 3
        if cfg.crop_margin is not None and mask.any():
            idx = np.argwhere(mask)
            lo = np.maximum(idx.min(0) - cfg.crop_margin, 0)
            hi = np.minimum(idx.max(0) + 1 + cfg.crop_margin, mask.shape)
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
        if cfg.slab is not None and mask.any():
            axis = cfg.slice_axis % 3
            inside = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
            centre = int(round((inside.min() + inside.max()) / 2))
            start = max(0, min(centre - cfg.slab // 2, mask.shape[axis] - cfg.slab))
            box = list(box)
            lo_ax = max(box[axis].start or 0, start)
            box[axis] = slice(lo_ax, min(lo_ax + cfg.slab, box[axis].stop or mask.shape[axis]))
            box = tuple(box)
        ref = subject.reference[box] if subject.reference is not None else None
        yield -1, subject.target[box], ref, mask[box]
        return
    axis = cfg.slice_axis % subject.target.ndim
    for i in select_slices(subject.target, mask, axis, cfg.min_brain_fraction, cfg.slice_step,
                           cfg.max_slices):
        take = lambda a: None if a is None else _centre_crop(np.take(a, i, axis=axis),  # noqa
                                                              cfg.crop_multiple)
        yield i, take(subject.target), take(subject.reference), take(mask)


def _reference_input(ref_hr: np.ndarray, ref_type: str, target_scale, kind: str):
    if ref_type == "hr":
        scale = 1.0
    elif ref_type == "lr":
        scale = target_scale
    else:
        scale = float(ref_type)
    ref = degrade(ref_hr, scale, kind=kind)
    return ref, effective_scale(ref.shape, ref_hr.shape)


def _run_methods(built: dict[str, SRMethod], cfg: EvaluateConfig, lr: np.ndarray,
                 hr: np.ndarray, refs: dict, mask: np.ndarray, row_head: dict,
                 figure: Optional[FigureCase]) -> list[dict]:
    """Every method on one degraded case (once per reference type if it uses a reference)."""
    rows = []
    target_scale = effective_scale(lr.shape, hr.shape)
    for display, method in built.items():
        for ref_type in (cfg.references if method.uses_reference else ["-"]):
            ref, ref_scale = refs[ref_type] if ref_type != "-" else (None, ())
            case = SRCase(lr=lr, out_shape=hr.shape, reference=ref, target_scale=target_scale,
                          reference_scale=ref_scale)
            t0 = time.perf_counter()
            pred = method(case)
            seconds = time.perf_counter() - t0
            if pred.shape != hr.shape:
                raise RuntimeError(f"method {display} returned shape {pred.shape}, "
                                   f"expected {hr.shape}")
            metrics = evaluate_case(pred, hr, cfg.protocol, mask=mask if cfg.use_mask else None)
            rows.append({**row_head, "reference": ref_type, "method": display, **metrics,
                         "seconds": seconds})
            if figure is not None and ref_type in ("-", cfg.references[0]):
                figure.predictions[display] = pred
    return rows


def evaluate(cfg: EvaluateConfig, methods: Optional[dict[str, SRMethod]] = None,
             show_progress: bool = True) -> EvaluationResult:
    """Run every method on every case; return one row of metrics per case and method.

    ``methods`` may pass already-built method objects by label (e.g. a model being trained);
    otherwise they are built from ``cfg.methods``.
    """
    n_subjects = count_subjects(cfg.dataset)  # fails early on a bad dataset path
    built = methods if methods is not None else {
        m.display: make_method(m.name, m.args) for m in cfg.methods}
    need_reference = any(m.uses_reference for m in built.values())
    figure_label = scale_label(cfg.figure_scale) if cfg.figure_scale is not None else None
    rows: list[dict] = []
    figure: Optional[FigureCase] = None
    bar = progress(total=0, desc="evaluate", unit="case", disable=not show_progress, leave=False)
    try:
        subjects = load_subjects(cfg.dataset, use_reference=need_reference)
        for s_index, subject in enumerate(subjects):
            if need_reference and subject.reference is None:
                raise ConfigError(f"subject {subject.name}: a method needs a reference, "
                                  "but the dataset has none")
            cases = list(_cases(subject, cfg))
            bar.total += len(cases) * len(cfg.scales)
            bar.set_description(f"evaluate {s_index + 1}/{n_subjects} {subject.name}")
            best_area = -1.0
            for scale in cfg.scales:
                label = scale_label(scale)
                degraded = []
                for index, hr, ref_hr, mask in cases:
                    lr = degrade(hr, scale, kind=cfg.degradation)
                    refs = {r: _reference_input(ref_hr, r, scale, cfg.degradation)
                            for r in cfg.references} if need_reference else {}
                    degraded.append((index, hr, mask, lr, refs))
                # Methods that learn from the degraded scan itself see all its slices first.
                group = [SRCase(lr=lr, out_shape=hr.shape,
                                reference=refs[cfg.references[0]][0] if refs else None,
                                target_scale=effective_scale(lr.shape, hr.shape))
                         for _, hr, _, lr, refs in degraded]
                for method in built.values():
                    method.prepare(group)
                for index, hr, mask, lr, refs in degraded:
                    keep = None
                    if figure_label == label and s_index == 0 and float(mask.sum()) > best_area:
                        best_area = float(mask.sum())
                        figure = keep = FigureCase(subject.name, index, label, hr, np.abs(lr))
                    head = {"subject": subject.name, "index": index, "scale": label}
                    rows += _run_methods(built, cfg, lr, hr, refs, mask, head, keep)
                    bar.update(1)
    finally:
        bar.close()
    if not rows:  # an empty table with exit 0 would look like a result
        raise ConfigError(f"dataset: no slice to evaluate in {n_subjects} subject(s): "
                          f"min_brain_fraction {cfg.min_brain_fraction:g} (mode {cfg.mode}, "
                          f"slice_axis {cfg.slice_axis}) keeps none; lower it or check the "
                          "dataset's masks")
    return EvaluationResult(rows=rows, config=cfg, figure=figure)
