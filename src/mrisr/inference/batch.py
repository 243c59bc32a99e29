"""Upscaling a NIfTI file, a folder of them or a list file of ``target [reference]`` lines:
what ``mrisr upscale`` runs, as an API.

Everything that can be checked is checked before any work and before torch is imported: the
jobs (a folder's NIfTI files, or the lines of a list file), that no two outputs of a batch
share a name and that no output is an input, the model's name, each output and the headers of
the inputs (:class:`UpscaleBatch`). Then each job runs through
:func:`~mrisr.inference.upscale.upscale_file` (:meth:`UpscaleBatch.run`), one model loaded
per kind of input (with or without a reference, 3D volume or 4D series, thick slices or
not) and reused. In a
batch a failed input is reported and the others go on (unless ``fail_fast``); a single file
raises. :func:`upscale_batch` does both steps.

Example::

    from mrisr.inference import upscale_batch
    summary = upscale_batch("scans/", "upscaled/", scale=(2, 2, 1))
    print(summary.written, summary.failed)
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

from mrisr.errors import InputError, MrisrError, MrisrWarning
from mrisr.inference.selection import check_model_name, is_series_file
from mrisr.io.atomic import check_output_path, sweep_stale
from mrisr.io.nifti import check_nifti_header, is_nifti_path

__all__ = ["UpscaleJob", "BatchSummary", "UpscaleBatch", "upscale_batch", "is_batch_input",
           "plan_jobs"]

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class UpscaleJob:
    """One input of a batch: the target, its reference (or ``None``) and the output path."""

    target: Path
    reference: Optional[Path]
    output: Path


@dataclass
class BatchSummary:
    """What a batch did: ``written`` outputs and ``failed`` ``(target, reason)`` pairs.

    batch: the input was a folder or a list file (several inputs), not one NIfTI file.
    """

    batch: bool
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def is_batch_input(target: PathLike) -> bool:
    """Whether ``target`` names several inputs (a folder or a list file), not one NIfTI file."""
    path = Path(target)
    return not (path.is_file() and is_nifti_path(path))


def _path_key(path) -> str:
    return os.path.normcase(os.path.realpath(path))


def _output_stem(path: Path) -> Path:
    """Output name without extension: its sidecar and b-tables share it."""
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return path.with_name(name[:-len(ext)])
    return path


def _check_names(source: Path, jobs: list[UpscaleJob]) -> None:
    """Before any work: no two outputs (with their sidecars) of a batch share a name, and no
    output is an input of the batch."""
    inputs = {_path_key(p): p for j in jobs for p in (j.target, j.reference) if p is not None}
    seen: dict[str, Path] = {}
    for job in jobs:
        key = _path_key(_output_stem(job.output))
        if key in seen:
            raise InputError(f"{source}: {seen[key]} and {job.target} would both be written to "
                             f"{_output_stem(job.output)}.* (same name); rename one or upscale "
                             "them in separate runs")
        seen[key] = job.target
        if _path_key(job.output) in inputs:
            raise InputError(f"{job.output}: output would overwrite an input file of the batch")


def plan_jobs(target: PathLike, output: PathLike, reference: Optional[PathLike] = None
              ) -> list[UpscaleJob]:
    """The jobs of a single NIfTI file (written to ``output``), a folder of NIfTI files or a
    list file with ``target [reference]`` per line (paths relative to the list file; ``#``
    starts a comment), each written into the folder ``output`` (created) under its own name.
    ``reference`` applies to a single file only."""
    target, out = Path(target), Path(output)
    if target.is_file() and is_nifti_path(target):
        return [UpscaleJob(target, Path(reference) if reference else None, out)]
    if target.is_dir():
        # Hidden files are skipped: among them, temporaries of interrupted runs.
        pairs = [(p, None) for p in sorted(target.iterdir())
                 if is_nifti_path(p) and not p.name.startswith(".")]
        if reference:
            raise InputError(f"{target}: --ref applies to one target; for a batch give a list "
                             "file with 'target reference' per line")
    elif target.is_file():
        pairs = []
        try:
            text = target.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{target}: neither a NIfTI file (.nii, .nii.gz) nor a text list "
                             "of targets") from None
        for n, line in enumerate(text.splitlines(), 1):
            parts = line.split("#")[0].split()
            if not parts:
                continue
            if len(parts) > 2:
                raise InputError(f"{target}: line {n}: expected 'target [reference]'")
            base = target.parent
            pairs.append((base / parts[0], base / parts[1] if len(parts) == 2 else None))
    else:
        raise InputError(f"{target}: file not found")
    if not pairs:
        raise InputError(f"{target}: no NIfTI file to upscale")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: for several inputs the output must be a folder")
    jobs = [UpscaleJob(t, r, out / t.name) for t, r in pairs]
    _check_names(target, jobs)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    return jobs


ErrorCallback = Callable[[UpscaleJob, MrisrError], None]


class UpscaleBatch:
    """The jobs of ``target`` (see :func:`plan_jobs`), checked before any work.

    Checks, in order: the jobs themselves, the model's name (``model``: a preset with shipped
    weights, a checkpoint path or an interpolation; ``None``: the default for each input), and
    per job the output (exists without ``overwrite``, is an input) and the inputs' headers. A
    job that fails its checks is left out and recorded in :attr:`failed` (``on_error`` is
    called with it); with a single file, or ``fail_fast``, the error is raised instead.
    Nothing here imports torch.
    """

    def __init__(self, target: PathLike, output: PathLike, reference: Optional[PathLike] = None,
                 *, model: Optional[str] = None, overwrite: bool = False,
                 fail_fast: bool = False, on_error: Optional[ErrorCallback] = None):
        self.batch = is_batch_input(target)
        self.model = model
        self.overwrite = overwrite
        self.fail_fast = fail_fast
        planned = plan_jobs(target, output, reference)
        check_model_name(model)
        #: the jobs that passed their checks
        self.jobs: list[UpscaleJob] = []
        #: ``(target, reason)`` of the jobs that did not
        self.failed: list[tuple[Path, str]] = []
        for job in planned:
            try:
                check_output_path(job.output, overwrite=overwrite,
                                  inputs=(job.target, job.reference))
                for path in (job.target, job.reference):
                    if path is not None:
                        check_nifti_header(path)
            except MrisrError as exc:
                if not self.batch or fail_fast:
                    raise
                self._failed(job, exc, on_error)
                continue
            self.jobs.append(job)

    def _failed(self, job: UpscaleJob, exc: MrisrError, on_error: Optional[ErrorCallback]
                ) -> None:
        self.failed.append((job.target, str(exc)))
        if on_error is not None:
            on_error(job, exc)

    @property
    def output_folders(self) -> list[Path]:
        """The folders the jobs write into (where stale temporaries may be swept first)."""
        return sorted({job.output.parent for job in self.jobs})

    def run(self, *, adapt: Union[int, str] = "auto", threads: Optional[int] = None,
            progress: Optional[Callable[[int], None]] = None,
            on_start: Optional[Callable[[int], None]] = None,
            on_job: Optional[Callable[[UpscaleJob], None]] = None,
            on_error: Optional[ErrorCallback] = None,
            on_written: Optional[Callable[[UpscaleJob], None]] = None,
            **options) -> BatchSummary:
        """Upscale every job with :func:`~mrisr.inference.upscale.upscale_file`.

        adapt: test-time adaptation steps, ``"default"`` (the default of the model's kind:
            2D or 3D) or ``"auto"`` (:func:`~mrisr.inference.upscale.adapt_steps`). threads: CPU threads for torch. progress, on_start: as
            :func:`~mrisr.inference.upscale.upscale_file`'s. on_job / on_written: called before
            / after each job; on_error: with each job that fails (the batch goes on).
            options: ``scale`` / ``voxel_size`` / ``shape``, ``device``, ``plane``, ``tile``,
            ``amp``, ``register``, ``consistency``, ``calibrate``, ``memmap``.
        Returns the :class:`BatchSummary`, including the jobs that failed their checks.
        """
        import torch

        import nibabel as nib

        from mrisr.inference.selection import load_upscale_model
        from mrisr.inference.upscale import is_thick_slice, output_grid, upscale_file
        from mrisr.inference.volume3d import DEFAULT_ADAPT_STEPS_3D, is_volume_model
        from mrisr.training.adapt import DEFAULT_ADAPT_STEPS

        if threads:
            torch.set_num_threads(threads)
        summary = BatchSummary(self.batch, failed=list(self.failed))
        models: dict = {}  # one model per kind of input, reused by every job of that kind
        for job in self.jobs:
            try:
                # The default model depends on the reference, on whether the input is a
                # series and on whether the job upscales thick slices.
                header = nib.load(str(job.target))
                out_shape, _ = output_grid(header.shape[:3], header.affine,
                                           options.get("scale"), options.get("voxel_size"),
                                           options.get("shape"))
                key = (job.reference is not None, is_series_file(job.target),
                       is_thick_slice(header.shape[:3], out_shape))
                if key not in models:
                    models[key] = load_upscale_model(self.model, *key)
                if on_job is not None:
                    on_job(job)
                steps = {"default": DEFAULT_ADAPT_STEPS, "auto": "auto"}.get(adapt, adapt)
                if adapt == "default" and is_volume_model(models[key][0]):
                    steps = DEFAULT_ADAPT_STEPS_3D
                upscale_file(job.target, job.output, job.reference, overwrite=self.overwrite,
                             progress=progress, on_start=on_start, loaded_model=models[key],
                             adapt=steps, **options)
            except MrisrError as exc:
                if not self.batch or self.fail_fast:
                    raise
                summary.failed.append((job.target, str(exc)))
                if on_error is not None:
                    on_error(job, exc)
                continue
            summary.written.append(job.output)
            if on_written is not None:
                on_written(job)
        return summary


def upscale_batch(target: PathLike, output: PathLike, reference: Optional[PathLike] = None, *,
                  model: Optional[str] = None, overwrite: bool = False,
                  fail_fast: bool = False, on_error: Optional[ErrorCallback] = None,
                  **run_options) -> BatchSummary:
    """Upscale a NIfTI file, a folder of them or a list file (see the module docstring):
    :class:`UpscaleBatch` checks everything, stale temporaries of interrupted runs are removed
    from the output folders (those whose owner cannot be checked are left, with a
    :class:`~mrisr.errors.MrisrWarning`), then :meth:`UpscaleBatch.run` with ``run_options``.
    Returns the :class:`BatchSummary`; a single file raises on failure."""
    batch = UpscaleBatch(target, output, reference, model=model, overwrite=overwrite,
                         fail_fast=fail_fast, on_error=on_error)
    for folder in batch.output_folders:
        for path in sweep_stale(folder)[1]:
            warnings.warn(MrisrWarning(f"{os.path.abspath(path)}: temporary file of an "
                                       "interrupted mrisr run; remove it if no run is writing "
                                       "it"), stacklevel=2)
    return batch.run(on_error=on_error, **run_options)
