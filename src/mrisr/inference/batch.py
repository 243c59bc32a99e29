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

A BIDS dataset (``bids=``) gives its jobs through :func:`mrisr.io.bids.plan_bids_jobs`, and its
outputs that exist are skipped, so that a re-run finishes an interrupted batch. ``shard=(K, N)``
keeps every N-th job from the K-th (:func:`resolve_shard`; also from a SLURM array job's
variables): N runs with K = 1..N write exactly the outputs of one run, with no overlap. With
``qc=True`` every output gets a QC picture and a batch an HTML page listing them
(:mod:`mrisr.inference.qc`).

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
from mrisr.inference.result import written_companions
from mrisr.inference.selection import check_model_name, is_series_file
from mrisr.io.atomic import sweep_stale
from mrisr.io.dwi import series_b_tables
from mrisr.io.nifti import check_nifti_header, check_output_files, is_nifti_path, nifti_stem

__all__ = ["UpscaleJob", "BatchSummary", "UpscaleBatch", "upscale_batch", "is_batch_input",
           "plan_jobs", "resolve_shard"]

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class UpscaleJob:
    """One input of a batch: the target, its reference (or ``None``) and the output path;
    ``sidecar_extra``: entries added to the output's sidecar (a BIDS derivative's fields)."""

    target: Path
    reference: Optional[Path]
    output: Path
    sidecar_extra: Optional[dict] = field(default=None, compare=False)


@dataclass
class BatchSummary:
    """What a batch did: ``written`` outputs, ``skipped`` ones (BIDS: written by an earlier
    run), ``failed`` ``(target, reason)`` pairs and the QC page (``report``) when there is one.

    batch: the input was a folder, a list file or a BIDS dataset, not one NIfTI file.
    """

    batch: bool
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    report: Optional[Path] = None

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
    return path.with_name(nifti_stem(path))


def _sidecar(path: Path) -> Path:
    return _output_stem(path).with_name(_output_stem(path).name + ".json")


_SHARD_FORMAT = "expected K/N with 1 <= K <= N (e.g. --shard 2/8), or 'slurm' in a SLURM array job"


def resolve_shard(shard, environ: Optional[dict] = None) -> Optional[tuple[int, int]]:
    """``(K, N)`` from ``shard``: ``None`` (no sharding), a pair, ``"K/N"`` or ``"slurm"``:
    K = (``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN``) / ``SLURM_ARRAY_TASK_STEP`` + 1 and
    N = ``SLURM_ARRAY_TASK_COUNT`` from ``environ`` (default ``os.environ``)."""
    if shard is None:
        return None
    if isinstance(shard, str) and shard.strip().lower() == "slurm":
        env = os.environ if environ is None else environ
        try:
            task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
            first, step = int(env.get("SLURM_ARRAY_TASK_MIN", 0)), \
                int(env.get("SLURM_ARRAY_TASK_STEP", 1) or 1)
        except (KeyError, ValueError):
            raise InputError("--shard slurm: SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are "
                             "not set (not a SLURM array task); submit with 'sbatch --array', "
                             "or give the part as --shard K/N") from None
        if (task - first) % step:
            raise InputError(f"--shard slurm: array task {task} is not on the array's grid "
                             f"(min {first}, step {step}); use a range like --array=0-9, or "
                             "give the part as --shard K/N")
        shard = ((task - first) // step + 1, count)
    if isinstance(shard, str):
        k, sep, n = shard.partition("/")
        try:
            shard = (int(k), int(n)) if sep else None
        except ValueError:
            shard = None
        if shard is None:
            raise InputError(f"--shard: {_SHARD_FORMAT}; got '{k}{sep}{n}'")
    k, n = (int(v) for v in shard)
    if not 1 <= k <= n:
        raise InputError(f"--shard: {_SHARD_FORMAT}; got {k}/{n}")
    return k, n


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
            named = next((part for part in parts if not is_nifti_path(part)), None)
            if named is not None:  # e.g. an image in another format, read as a list
                shown = named if len(named) <= 60 else named[:57] + "..."
                raise InputError(f"{target}: neither a NIfTI file (.nii, .nii.gz) nor a list "
                                 f"of them: line {n} names '{shown}'")
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

    ``bids``: ``target`` is a BIDS dataset; a mapping of :func:`~mrisr.io.bids.plan_bids_jobs`'
    ``suffixes`` and ``ref_suffix``. Its outputs that exist with their sidecars are skipped
    (:attr:`skipped`) unless ``overwrite``; an output or a sidecar without the other (a run
    stopped between the two, a file removed) is written again. ``shard``: see :func:`resolve_shard`; the whole batch is planned and
    its names checked before the part is taken, so that every part sees the same batch.
    """

    def __init__(self, target: PathLike, output: PathLike, reference: Optional[PathLike] = None,
                 *, model: Optional[str] = None, overwrite: bool = False,
                 fail_fast: bool = False, on_error: Optional[ErrorCallback] = None,
                 bids: Optional[dict] = None, shard=None):
        self.batch = is_batch_input(target) or bids is not None
        self.model = model
        self.overwrite = overwrite
        self.fail_fast = fail_fast
        self.output_root = Path(output)
        self.shard = resolve_shard(shard)
        planned = self._plan_bids(target, output, reference, bids) if bids is not None \
            else plan_jobs(target, output, reference)
        #: the number of jobs of the whole batch, before sharding
        self.planned = len(planned)
        if self.shard is not None:
            planned = planned[self.shard[0] - 1::self.shard[1]]
        check_model_name(model)
        #: the jobs that passed their checks
        self.jobs: list[UpscaleJob] = []
        #: ``(target, reason)`` of the jobs that did not
        self.failed: list[tuple[Path, str]] = []
        #: outputs of a BIDS batch that an earlier run wrote
        self.skipped: list[UpscaleJob] = []
        self._replace: set[Path] = set()  # outputs an earlier run left without their sidecar
        for job in planned:
            if bids is not None and not overwrite:
                done = job.output.exists(), _sidecar(job.output).exists()
                if all(done):
                    self.skipped.append(job)
                    continue
                if any(done):  # half of an earlier run's result: written again
                    self._replace.add(job.output)
            try:
                if bids is not None:
                    job.output.parent.mkdir(parents=True, exist_ok=True)
                shapes = [check_nifti_header(path) if path is not None else None
                          for path in (job.target, job.reference)]
                n_volumes = shapes[0][3] if len(shapes[0]) > 3 else 1
                check_output_files(job.output, written_companions(job.target, n_volumes),
                                   overwrite=overwrite or job.output in self._replace,
                                   inputs=(job.target, job.reference))
                if n_volumes > 1:
                    series_b_tables(job.target, n_volumes)
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

    @staticmethod
    def _plan_bids(target: PathLike, output: PathLike, reference: Optional[PathLike],
                   bids: dict) -> list[UpscaleJob]:
        from mrisr import __version__
        from mrisr.io.bids import plan_bids_jobs, write_derivative_metadata

        if reference:
            raise InputError(f"{reference}: --ref names the reference of one target; with --bids "
                             "name the reference contrast with --ref-suffix (e.g. --ref-suffix "
                             "T1w)")
        jobs = [UpscaleJob(j.target, j.reference, j.output, j.metadata)
                for j in plan_bids_jobs(target, output, **bids)]
        _check_names(Path(target), jobs)
        write_derivative_metadata(target, output, __version__)
        return jobs

    @property
    def report_path(self) -> Path:
        """The batch's QC page: ``qc.html`` in the output folder, ``qc-K-of-N.html`` for part
        K of N (parts never write one file)."""
        name = "qc.html" if self.shard is None else f"qc-{self.shard[0]}-of-{self.shard[1]}.html"
        return self.output_root / name

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
            2D or 3D) or ``"auto"`` (:func:`~mrisr.inference.decisions.decide_adaptation`).
            threads: CPU threads for torch. progress, on_start: as
            :func:`~mrisr.inference.upscale.upscale_file`'s. on_job / on_written: called before
            / after each job; on_error: with each job that fails (the batch goes on).
            options: ``scale`` / ``voxel_size`` / ``shape``, ``device``, ``plane``, ``tile``,
            ``precision``, ``register``, ``consistency``, ``calibrate``,
            ``tensor_consistency``, ``reference_transfer``, ``memmap``, ``qc`` (a QC
            picture per output and, for a batch, the page :attr:`report_path`).
        Returns the :class:`BatchSummary`, including the jobs that failed their checks.
        """
        import torch

        from mrisr.inference.selection import load_upscale_model
        from mrisr.inference.upscale import upscale_file
        from mrisr.inference.volume3d import DEFAULT_ADAPT_STEPS_3D, is_volume_model
        from mrisr.training.adapt import DEFAULT_ADAPT_STEPS

        if threads:
            torch.set_num_threads(threads)
        summary = BatchSummary(self.batch, failed=list(self.failed),
                               skipped=[job.output for job in self.skipped])
        models: dict = {}  # one model per kind of input, reused by every job of that kind
        for job in self.jobs:
            try:
                # The default model depends on the reference and on whether the input is a
                # series.
                key = (job.reference is not None, is_series_file(job.target))
                if key not in models:
                    models[key] = load_upscale_model(self.model, *key)
                if on_job is not None:
                    on_job(job)
                steps = {"default": DEFAULT_ADAPT_STEPS, "auto": "auto"}.get(adapt, adapt)
                if adapt == "default" and is_volume_model(models[key][0]):
                    steps = DEFAULT_ADAPT_STEPS_3D
                upscale_file(job.target, job.output, job.reference,
                             overwrite=self.overwrite or job.output in self._replace,
                             progress=progress, on_start=on_start, loaded_model=models[key],
                             model=self.model, adapt=steps, sidecar_extra=job.sidecar_extra,
                             **options)
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
        if options.get("qc") and self.batch:
            summary.report = self._write_report(summary)
        return summary

    def _write_report(self, summary: BatchSummary) -> Path:
        """The batch's QC page: every output this run wrote or skipped, then the failures."""
        import json

        from mrisr.inference.qc import ReportEntry, qc_path, write_batch_report

        entries = []
        for output, skipped in [(o, False) for o in summary.written] + \
                [(o, True) for o in summary.skipped]:
            try:
                info = json.loads(_sidecar(output).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                info = {}
            entries.append(ReportEntry(output, qc_path(output), info, skipped))
        entries.sort(key=lambda e: str(e.output))
        part = "" if self.shard is None else f", part {self.shard[0]} of {self.shard[1]}"
        return write_batch_report(self.report_path, entries, summary.failed,
                                  title=f"mrisr upscale: {self.output_root}{part}")


def upscale_batch(target: PathLike, output: PathLike, reference: Optional[PathLike] = None, *,
                  model: Optional[str] = None, overwrite: bool = False,
                  fail_fast: bool = False, on_error: Optional[ErrorCallback] = None,
                  bids: Optional[dict] = None, shard=None, **run_options) -> BatchSummary:
    """Upscale a NIfTI file, a folder of them or a list file (see the module docstring):
    :class:`UpscaleBatch` checks everything, stale temporaries of interrupted runs are removed
    from the output folders (those whose owner cannot be checked are left, with a
    :class:`~mrisr.errors.MrisrWarning`), then :meth:`UpscaleBatch.run` with ``run_options``.
    Returns the :class:`BatchSummary`; a single file raises on failure."""
    batch = UpscaleBatch(target, output, reference, model=model, overwrite=overwrite,
                         fail_fast=fail_fast, on_error=on_error, bids=bids, shard=shard)
    for folder in batch.output_folders:
        for path in sweep_stale(folder)[1]:
            warnings.warn(MrisrWarning(f"{os.path.abspath(path)}: temporary file of an "
                                       "interrupted mrisr run; remove it if no run is writing "
                                       "it"), stacklevel=2)
    return batch.run(on_error=on_error, **run_options)
