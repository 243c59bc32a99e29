"""Training: configs, the shared trainer, 2D slice tasks, losses and DDP helpers.

:func:`train` is what ``mrisr train CONFIG`` runs (also under ``torchrun``). Training knows
nothing of inference or evaluation: periodic validation (``validation.every``) is a
``validator`` passed to :func:`train` (``mrisr train`` passes
:func:`mrisr.evaluation.validation.slice_validator`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from mrisr.config import from_dict, load_yaml, merge
from mrisr.devices import select_device
from mrisr.errors import ConfigError, InputError
from mrisr.training.config import TrainConfig
from mrisr.training.distributed import init_distributed, shutdown
from mrisr.models.base import SRModel
from mrisr.training.trainer import Trainer, Validator


def load_train_config(path: str | os.PathLike, overrides: Optional[dict] = None) -> TrainConfig:
    data = load_yaml(path)
    return from_dict(TrainConfig, merge(data, overrides or {}), source=str(path))


def build_task(cfg: TrainConfig, model: SRModel):
    dims = 3 if cfg.task == "dmri3d" else 2
    if model.dims != dims:
        raise ConfigError(f"model '{cfg.model.name}' is {model.dims}D but task "
                          f"'{cfg.task}' trains {dims}D models")
    if cfg.task == "dmri3d":
        from mrisr.data.dwi_sources import load_dwi_subjects
        from mrisr.training.volumes import VolumePatchTask
        use_t1 = model.uses_reference
        subjects = load_dwi_subjects(cfg.dmri, use_t1, t1_optional=cfg.dmri.t1_dropout > 0)
        return VolumePatchTask(cfg, subjects, use_t1,
                               model.reference_use.value if use_t1 else None,
                               model.level_norm)
    from mrisr.training.slices import SliceVolumes, SlicePatchTask
    needs_ref = model.uses_reference
    volumes = SliceVolumes.load(cfg.data, need_reference=needs_ref)
    return SlicePatchTask(cfg, volumes, needs_reference=needs_ref)


#: What makes a folder hold a run: ``mrisr train`` does not start over in it silently.
RUN_FILES = ("last.pt", "final.pt", "log.csv")


def check_run_folder(output: str | os.PathLike, resume: Optional[str] = None,
                     overwrite: bool = False) -> None:
    """Refuse an output that is a file, and a folder that holds a run (``RUN_FILES``) unless
    the run is resumed (``resume``) or replaced (``overwrite``)."""
    out = Path(output)
    if resume and overwrite:
        raise ConfigError(f"{out}: --resume and --overwrite exclude each other; give --resume "
                          "to continue the run or --overwrite to start over")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder (the run folder, 'output')")
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held and not (resume or overwrite):
        raise ConfigError(f"{out}: holds a run ({', '.join(held)}); continue it with --resume "
                          "auto or start over with --overwrite")


def initialise_from(model: SRModel, source: str) -> None:
    """Load the weights of ``source`` (a preset with shipped weights or a checkpoint path)
    into ``model``; both must be the same architecture with the same arguments."""
    from mrisr.models.checkpoint import describe
    from mrisr.models.loading import load_model
    from mrisr.models.registry import PRESETS, weights_path

    path = weights_path(source) if source in PRESETS else Path(source)
    if not path.exists():
        raise InputError(f"{source}: no weights to start from (model.init)")
    loaded = load_model(source)
    theirs, mine = describe(loaded.model), describe(model)
    if theirs["architecture"] != mine["architecture"] or theirs["args"] != mine["args"]:
        raise ConfigError(f"model.init {source}: weights of {theirs['architecture']} "
                          f"{theirs['args']}, the model is {mine['architecture']} {mine['args']}")
    model.load_state_dict(loaded.model.state_dict())


def train(cfg: TrainConfig, resume: Optional[str] = None, show_progress: bool = True,
          overwrite: bool = False, validator: Optional[Validator] = None) -> Optional[Path]:
    """Train the model of ``cfg``; ``resume``: a ``last.pt`` path, or ``"auto"`` to continue
    from ``<output>/last.pt`` when it exists (else start over). A folder that holds a run is
    refused unless it is resumed or ``overwrite`` (which deletes its log and checkpoints).
    ``validator``: ``validator(model, device) -> {"psnr", "ssim"}``, run every
    ``validation.every`` steps (required when that is set; e.g.
    :func:`mrisr.evaluation.validation.slice_validator`). Returns the ``final.pt`` path
    (rank 0)."""
    from mrisr.models.loading import create_model

    if cfg.validation.every and validator is None:
        raise ConfigError("validation.every is set but no validator was given: pass "
                          "validator=mrisr.evaluation.validation.slice_validator("
                          "cfg.validation.evaluate, cfg.data.input) (mrisr train does)")
    check_run_folder(cfg.output, resume, overwrite)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    info = init_distributed(select_device(cfg.run.device))
    device = select_device(cfg.run.device, info.local_rank)
    last = Path(cfg.output) / "last.pt"
    if resume == "auto":
        resume = str(last) if last.exists() else None
    try:
        torch.manual_seed(cfg.run.seed)  # same initial weights on every rank
        model = create_model(cfg.model.name, **cfg.model.args)
        # A resumed run takes its weights from its checkpoint: model.init need not exist then
        # (a run continued on a fresh machine).
        if cfg.model.init and not resume:
            initialise_from(model, cfg.model.init)
        task = build_task(cfg, model)
        manifest_digest = None
        if cfg.task == "slices2d" and cfg.data.dataset.kind != "phantom":
            from mrisr.data.datasets import resolve_manifest
            manifest_digest = resolve_manifest(cfg.data.dataset).digest()
        trainer = Trainer(cfg, task, model, device, info,
                          {**task.describe_data(), "manifest_digest": manifest_digest},
                          validator)
        if resume:
            if not Path(resume).exists():
                raise InputError(f"{resume}: checkpoint to resume from not found")
            trainer.resume(resume)
        else:
            if overwrite and info.is_main:
                for name in (*RUN_FILES, "validation.csv"):
                    (Path(cfg.output) / name).unlink(missing_ok=True)
            # A run killed before its first checkpoint: its log rows are dropped.
            trainer._truncate_log()
        return trainer.fit(show_progress=show_progress)
    finally:
        shutdown(info)
