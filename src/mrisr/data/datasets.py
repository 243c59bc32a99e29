"""Datasets as lists of co-registered subject volumes (target, reference, mask).

A :class:`DatasetSpec` names where the subjects come from: the embedded ``phantom`` (no files
needed), a ``brats``-style folder, or a ``manifest`` file. :func:`load_subjects` returns
:class:`SubjectVolumes` with the reference (and mask) already on the target's grid, resampled
through the affines when the files use different grids (e.g. IXI's sagittal T1 and axial T2).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from mrisr.errors import ConfigError, InputError
from mrisr.io.manifest import Manifest, Subject, brats_manifest, load_manifest
from mrisr.io.nifti import load_nifti


@dataclass
class DatasetSpec:
    """Where subjects come from.

    kind: ``phantom`` (embedded, generated from ``seed``), ``brats`` (folder ``root`` with one
    sub-folder per patient; ``target``/``reference`` are contrast suffixes; the last ``n_test``
    patients form the test split) or ``manifest`` (CSV/YAML file ``manifest``).
    synthetic_reference: a seed: the reference is a random remapping of the target's
        intensities drawn with it (:func:`mrisr.data.synthetic.random_contrast`), for subjects
        with one contrast only (e.g. a whole head with skull); ``None``: the files' reference.
    register_reference: refine the header alignment of each subject's reference to its target
        with a rigid mutual-information registration (:func:`mrisr.data.registration.register_rigid`,
        needs dipy) before resampling it onto the target grid, as ``mrisr upscale --register``
        does with a 2D model; for files from separate series (IXI's T1 and T2 differ by 1.2 mm).
    """

    kind: str = "phantom"
    root: str = "${MRISR_DATA}/brats18-tcia"
    manifest: Optional[str] = None
    target: str = "t2"
    reference: Optional[str] = "t1"
    split: str = "test"
    n_test: int = 2
    n_val: int = 0
    seed: int = 0
    shape: list[int] = field(default_factory=lambda: [128, 128, 64])
    voxel_size: list[float] = field(default_factory=lambda: [1.5, 1.5, 2.0])
    synthetic_reference: Optional[int] = None
    register_reference: bool = False

    def validate(self, source: str) -> None:
        if self.kind not in ("phantom", "brats", "manifest"):
            raise ConfigError(f"{source}: dataset.kind must be phantom, brats or manifest, "
                              f"got '{self.kind}'")
        if self.kind == "manifest" and not self.manifest:
            raise ConfigError(f"{source}: dataset.manifest is required for kind 'manifest'")


@dataclass
class SubjectVolumes:
    """One subject's images on the target grid: arrays ``(X, Y, Z)`` float32, affine 4x4 (mm)."""

    name: str
    target: np.ndarray
    affine: np.ndarray
    reference: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    reference_coverage: Optional[np.ndarray] = None

    def brain_mask(self) -> np.ndarray:
        """The subject's mask, or the non-zero target voxels (skull-stripped data)."""
        return self.mask if self.mask is not None else self.target > 0


def resolve_manifest(spec: DatasetSpec) -> Manifest:
    if spec.kind == "brats":
        refs = (spec.reference,) if spec.reference else ()
        return brats_manifest(spec.root, target=spec.target, references=refs,
                              n_test=spec.n_test, n_val=spec.n_val)
    if spec.kind == "manifest":
        return load_manifest(spec.manifest)
    raise ConfigError(f"dataset kind '{spec.kind}' has no manifest")


def load_subject(subject: Subject, use_reference: bool = True,
                 register_reference: bool = False) -> SubjectVolumes:
    """Load one manifest subject; the reference and mask are put on the target's grid
    (``register_reference``: rigidly registered to the target first)."""
    from mrisr.resample import resample_to_grid

    target = load_nifti(subject.target)
    ref = coverage = mask = None
    if use_reference and subject.reference is not None:
        ref_vol = load_nifti(subject.reference)
        ref_affine = np.asarray(ref_vol.affine, dtype=np.float64)
        if register_reference:
            from mrisr.data.registration import corrected, register_rigid

            ref_affine = corrected(ref_vol, register_rigid(ref_vol, target.data, target.affine,
                                                           match_acquisition=True)).affine
        same_grid = ref_vol.data.shape == target.data.shape and \
            np.allclose(ref_affine, target.affine, atol=1e-4)
        if same_grid:
            ref, coverage = ref_vol.data, np.ones(target.data.shape, dtype=bool)
        else:
            ref, coverage = resample_to_grid(ref_vol.data, ref_affine, target.affine,
                                             target.data.shape, name=str(subject.reference))
    if subject.mask is not None:
        mask_vol = load_nifti(subject.mask)
        if mask_vol.data.shape != target.data.shape:
            mask_data, _ = resample_to_grid(mask_vol.data, mask_vol.affine, target.affine,
                                            target.data.shape, order=0, name=str(subject.mask))
        else:
            mask_data = mask_vol.data
        mask = mask_data > 0.5
    return SubjectVolumes(name=subject.subject, target=target.data, affine=target.affine,
                          reference=ref, mask=mask, reference_coverage=coverage)


def phantom_subject(spec: DatasetSpec) -> SubjectVolumes:
    """The embedded multi-contrast phantom as one subject (target/reference contrast names
    ``t1``, ``t2`` or ``pd``)."""
    from mrisr.data.phantom import make_brain_phantom

    ph = make_brain_phantom(shape=tuple(spec.shape), voxel_size=tuple(spec.voxel_size),
                            seed=spec.seed)
    images = {"t1": ph.t1w, "t2": ph.t2w, "pd": ph.pd}
    for name in (spec.target, spec.reference):
        if name is not None and name not in images:
            raise ConfigError(f"phantom has contrasts t1, t2, pd; got '{name}'")
    return SubjectVolumes(name=f"phantom-seed{spec.seed}", target=images[spec.target],
                          affine=ph.affine,
                          reference=images[spec.reference] if spec.reference else None,
                          mask=ph.brain_mask)


def load_subjects(spec: DatasetSpec, split: Optional[str] = None,
                  use_reference: bool = True) -> Iterator[SubjectVolumes]:
    """Yield the subjects of ``split`` (default ``spec.split``) one at a time."""
    if spec.kind == "phantom":
        yield phantom_subject(spec)
        return
    manifest = resolve_manifest(spec)
    synthetic = spec.synthetic_reference is not None
    for subject in manifest.split(split or spec.split):
        loaded = load_subject(subject, use_reference=use_reference and not synthetic,
                              register_reference=spec.register_reference)
        if synthetic and use_reference:
            from mrisr.data.synthetic import random_contrast
            loaded.reference = random_contrast(loaded.target, np.random.default_rng(
                spec.synthetic_reference))
            loaded.reference_coverage = np.ones(loaded.target.shape, dtype=bool)
        yield loaded


def count_subjects(spec: DatasetSpec, split: Optional[str] = None) -> int:
    if spec.kind == "phantom":
        return 1
    return len(resolve_manifest(spec).split(split or spec.split))


def dataset_available(spec: DatasetSpec) -> bool:
    """Whether the files a spec points to exist (tests and benchmarks skip cleanly if not)."""
    if spec.kind == "phantom":
        return True
    try:
        manifest = resolve_manifest(spec)
    except InputError:
        return False
    return all(Path(s.target).exists() for s in manifest.subjects)
