"""Training: configs, the shared trainer, 2D slice tasks, losses and DDP helpers.

:func:`train` is what ``mrisr train CONFIG`` runs (also under ``torchrun``).
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
from mrisr.training.trainer import Trainer


def load_train_config(path: str | os.PathLike, overrides: Optional[dict] = None) -> TrainConfig:
    data = load_yaml(path)
    return from_dict(TrainConfig, merge(data, overrides or {}), source=str(path))


def build_task(cfg: TrainConfig, model):
    dims = 3 if cfg.task == "dmri3d" else 2
    if getattr(model, "dims", 2) != dims:
        raise ConfigError(f"model '{cfg.model.name}' is {getattr(model, 'dims', 2)}D but task "
                          f"'{cfg.task}' trains {dims}D models")
    if cfg.task == "dmri3d":
        from mrisr.training.volumes import VolumePatchTask, load_dwi_subjects
        use_t1 = bool(getattr(model, "use_reference", False))
        return VolumePatchTask(cfg, load_dwi_subjects(cfg.dmri, use_t1), use_t1,
                               getattr(model, "t1_mode", None),
                               bool(getattr(model, "level_norm", False)))
    from mrisr.training.slices import SlicePairs, SlicePatchTask
    needs_ref = bool(getattr(model, "use_reference", False))
    pairs = SlicePairs.load(cfg.data, need_reference=needs_ref)
    return SlicePatchTask(cfg, pairs, needs_reference=needs_ref)


def train(cfg: TrainConfig, resume: Optional[str] = None,
          show_progress: bool = True) -> Optional[Path]:
    """Train the model of ``cfg``; ``resume``: a ``last.pt`` path, or ``"auto"`` to continue
    from ``<output>/last.pt`` when it exists. Returns the ``final.pt`` path (rank 0)."""
    from mrisr.models.registry import create_model

    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    info = init_distributed(select_device(cfg.run.device))
    device = select_device(cfg.run.device, info.local_rank)
    try:
        torch.manual_seed(cfg.run.seed)  # same initial weights on every rank
        model = create_model(cfg.model.name, **cfg.model.args)
        task = build_task(cfg, model)
        manifest_digest = None
        if cfg.task == "slices2d" and cfg.data.dataset.kind != "phantom":
            from mrisr.data.datasets import resolve_manifest
            manifest_digest = resolve_manifest(cfg.data.dataset).digest()
        trainer = Trainer(cfg, task, model, device, info,
                          {**task.describe_data(), "manifest_digest": manifest_digest})
        last = Path(cfg.output) / "last.pt"
        if resume == "auto":
            resume = str(last) if last.exists() else None
        if resume:
            if not Path(resume).exists():
                raise InputError(f"{resume}: checkpoint to resume from not found")
            trainer.resume(resume)
        return trainer.fit(show_progress=show_progress)
    finally:
        shutdown(info)
