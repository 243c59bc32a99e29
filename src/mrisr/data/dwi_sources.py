"""Diffusion subjects as a config names them: the ``dmri`` section shared by ``task: dmri3d``
training (:class:`~mrisr.training.config.DmriDataConfig`) and the dMRI evaluation
(:mod:`mrisr.evaluation.dmri`), their loading and the held-out slab of each subject."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mrisr.data.dwi import DwiSubject
from mrisr.errors import ConfigError, InputError

__all__ = ["DwiFiles", "DwiSourceConfig", "split_slab", "load_dwi_subjects"]


@dataclass
class DwiFiles:
    """One diffusion subject on disk: the series (with ``.bval``/``.bvec`` beside it unless
    given) and its T1w image (optional for models without T1w, and for T1w models trained with
    ``dmri.t1_dropout`` > 0, which then never see a T1w for this series).

    name: the subject's label in logs and tables and what ``dmri.holdout`` matches (default:
    the series' file name without extension).
    """

    dwi: str
    t1: Optional[str] = None
    bval: Optional[str] = None
    bvec: Optional[str] = None
    name: Optional[str] = None

    @property
    def label(self) -> str:
        return self.name or Path(self.dwi).name.split(".")[0]


@dataclass
class DwiSourceConfig:
    """Diffusion subjects and the shell kept: the part of the ``dmri`` section shared by
    ``task: dmri3d`` training and the dMRI evaluation (:mod:`mrisr.evaluation.dmri`).

    kind: ``phantom`` (the embedded DWI phantom, ``phantom_*`` settings) or ``files``
        (``subjects``). bvalue, tolerance: the shell kept (divided by the mean b=0).
    register: rigidly register each T1w to the mean b=0 (dipy) before placing it on the DWI
        grid. holdout_axis, holdout_fraction: the slab at the high end of that axis that no
        training patch touches (for evaluation on a single subject).
    all_shells: keep every diffusion-weighted volume (b > 50 s/mm^2) of each series, whatever
        its b-value, instead of the ``bvalue`` shell: series of different shells (and
        multi-shell series) train one model. The b=0 volumes, interleaved or not, are averaged
        into the mean b=0 as always.
    holdout: held-out scanners. The ``name`` (:class:`DwiFiles`) of one subject, or several
        names separated by commas (a fold of held-out scanners): training skips them, and an
        evaluation scores only them (use ``region: whole``); ``null``: none.
    """

    kind: str = "phantom"
    subjects: list[DwiFiles] = field(default_factory=list)
    phantom_shape: list[int] = field(default_factory=lambda: [48, 56, 40])
    phantom_voxel_size: list[float] = field(default_factory=lambda: [2.5, 2.5, 2.5])
    phantom_seed: int = 0
    phantom_noise: float = 0.0
    bvalue: float = 1000.0
    tolerance: float = 100.0
    register: bool = False
    holdout_axis: int = 2
    holdout_fraction: float = 0.25
    all_shells: bool = False
    holdout: Optional[str] = None

    @property
    def shell_bvalue(self) -> Optional[float]:
        """The ``bvalue`` argument of the loaders: ``None`` (every shell) with ``all_shells``."""
        return None if self.all_shells else self.bvalue

    @property
    def held_out(self) -> list[str]:
        """The names in ``holdout``."""
        return [] if self.holdout is None else [n.strip() for n in self.holdout.split(",")]

    def selected_subjects(self, training: bool) -> list[DwiFiles]:
        """``subjects`` without the held-out ones (``training``) or only them (evaluation);
        all of them without ``holdout``."""
        if self.holdout is None:
            return list(self.subjects)
        held = set(self.held_out)
        return [f for f in self.subjects if (f.label in held) != training]

    def validate(self, source: str) -> None:
        if self.kind not in ("phantom", "files"):
            raise ConfigError(f"{source}: dmri.kind must be phantom or files, got '{self.kind}'")
        if self.kind == "files" and not self.subjects:
            raise ConfigError(f"{source}: dmri.subjects is required for kind 'files'")
        if self.holdout_axis not in (0, 1, 2) or not 0 <= self.holdout_fraction < 1:
            raise ConfigError(f"{source}: dmri.holdout_axis must be 0, 1 or 2 and "
                              "dmri.holdout_fraction in [0, 1)")
        labels = [f.label for f in self.subjects]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{source}: dmri.subjects need unique names "
                              f"({', '.join(labels)})")
        if self.holdout is not None:
            unknown = [n for n in self.held_out if self.kind != "files" or n not in labels]
            if unknown:
                raise ConfigError(f"{source}: dmri.holdout '{', '.join(unknown)}' is not a "
                                  f"subject (names: {', '.join(labels) or 'none'})")
            if len(set(self.held_out)) >= len(self.subjects):
                raise ConfigError(f"{source}: dmri.holdout leaves no subject to train on")


def split_slab(shape, axis: int, fraction: float) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """``(train, held_out)`` index tuples of a 3D ``shape``: the last ``round(fraction * n)``
    voxels along ``axis`` are held out. A contiguous slab, so that no training patch, whatever
    its size, overlaps the test voxels."""
    n = int(shape[axis])
    n_hold = int(round(fraction * n))
    train = [slice(0, int(m)) for m in shape[:3]]
    held = list(train)
    train[axis] = slice(0, n - n_hold)
    held[axis] = slice(n - n_hold, n)
    return tuple(train), tuple(held)


def load_dwi_subjects(d: DwiSourceConfig, use_t1: bool = True, training: bool = True,
                      t1_optional: bool = False) -> list[DwiSubject]:
    """The subjects of a ``dmri`` config section, training or evaluation (the T1w only when
    ``use_t1``): with ``dmri.holdout``, training loads every subject but the held-out one and an
    evaluation (``training=False``) only that one. ``t1_optional``: a subject without a T1w
    file is loaded without one instead of refused (models trained with ``t1_dropout``)."""
    from mrisr.data.dwi import load_dwi_subject, phantom_dwi_subject

    if d.kind == "phantom":
        from mrisr.data.phantom import make_dwi_phantom
        phantom = make_dwi_phantom(tuple(d.phantom_shape), tuple(d.phantom_voxel_size),
                                   bvalue=d.bvalue, seed=d.phantom_seed, noise=d.phantom_noise)
        return [phantom_dwi_subject(phantom, d.bvalue, d.tolerance,
                                    name=f"phantom-seed{d.phantom_seed}")]
    subjects = []
    for files in d.selected_subjects(training):
        if use_t1 and not files.t1 and not t1_optional:
            raise InputError(f"{files.dwi}: the model uses a T1w image but dmri.subjects gives "
                             "none for this series")
        subjects.append(load_dwi_subject(files.dwi, files.t1 if use_t1 else None,
                                         d.shell_bvalue, d.tolerance, d.register, files.bval,
                                         files.bvec, name=files.label))
    return subjects
