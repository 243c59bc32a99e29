"""The training loop shared by the 2D and 3D model families.

A *task* supplies batches (``task.batch(step, rank, world)``: a dict of tensors, identical for
a given step whatever the process count) and the loss (``task.loss(model, batch)``). The
trainer owns everything else: Adam with a step-indexed learning-rate schedule (so resuming
needs no scheduler object), bf16 autocast where the device has fast bf16 units
(``run.precision``, :mod:`mrisr.precision`), DistributedDataParallel under
``torchrun``, rank-0 logging (CSV, optional TensorBoard, progress bar) and checkpoints
(``last.pt`` with optimizer state for exact resume, ``final.pt`` with weights only), an
optional moving average of the weights (``optim.ema_decay``: ``final.pt`` and validation use it,
``last.pt`` keeps both), a time budget that spans resumes (``run.max_minutes``) and one per
invocation (``run.session_minutes``: stop cleanly, to be resumed), and periodic validation by a
``validator(model, device) -> {"psnr", "ssim"}`` that the caller passes (training knows nothing
of evaluation; ``mrisr train`` passes :func:`mrisr.evaluation.validation.slice_validator`).
"""
from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mrisr.config import to_dict
from mrisr.errors import InputError
from mrisr.io.atomic import write_text_atomic
from mrisr.models.checkpoint import (check_state_dict, describe, read_checkpoint,
                                     save_checkpoint)
from mrisr.precision import autocast, resolve_precision
from mrisr.progress import progress
from mrisr.training.config import TrainConfig
from mrisr.training.distributed import DistInfo, any_rank

LOG_COLUMNS = ["step", "phase", "loss", "l1", "kloss", "aloss", "tloss", "lr", "scale", "ref_kind",
               "ref_scale", "seconds_per_step", "elapsed_s"]


def learning_rate(cfg: TrainConfig, step: int, elapsed: float = 0.0) -> float:
    """Learning rate at ``step``: the phase's base rate times the schedule factor.

    The cosine schedule runs to the end of the curriculum or, with ``run.max_minutes``, to
    whichever of the curriculum and the time budget ends first (``elapsed`` seconds spent), so a
    time-limited run still anneals.
    """
    _, phase = cfg.phase_at(step)
    base = phase.lr if phase.lr is not None else cfg.optim.lr
    o = cfg.optim
    if o.schedule == "step":
        return base * o.gamma ** (step // o.decay_every)
    progress_ = step / max(1, cfg.total_steps)
    if cfg.run.max_minutes:
        progress_ = max(progress_, elapsed / (cfg.run.max_minutes * 60))
    progress_ = min(1.0, progress_)
    return base * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi *
                                                                                progress_)))


def _batch_to(batch: dict, device: torch.device) -> dict:
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            value = value.to(device, non_blocking=True)
            if value.dtype == torch.float64 and device.type == "mps":
                value = value.float()  # MPS has no float64
        out[key] = value
    return out


#: Settings a resumed run may change: where and how fast it runs, and how long (a phase's
#: ``steps``), not what it learns.
RESUMABLE_CHANGES = ("run", "output", "validation")


def _resumable(key: str) -> bool:
    parts = key.split(".")
    return parts[0] in RESUMABLE_CHANGES or (parts[0] == "curriculum" and parts[-1] == "steps")


def _flatten(value, prefix: str = "") -> dict:
    """Dotted keys of nested mappings; lists of mappings (the curriculum) by index."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        value = {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _recipe_changes(before: dict, now: dict) -> list[tuple[str, object, object]]:
    """``(key, value in before, value now)`` of the training settings that differ, apart from
    :func:`_resumable` ones. Keys only one side has (settings added or removed between
    versions of mrisr) are not compared."""
    a, b = _flatten(before), _flatten(now)
    keys = sorted(k for k in set(a) & set(b) if not _resumable(k) and a[k] != b[k])
    return [(k, a.get(k), b.get(k)) for k in keys]


#: ``validator(model, device) -> {"psnr": ..., "ssim": ...}``: periodic validation.
Validator = Callable[[nn.Module, torch.device], dict]


class Trainer:
    def __init__(self, cfg: TrainConfig, task, model: nn.Module, device: torch.device,
                 dist_info: DistInfo = DistInfo(), data_description: Optional[dict] = None,
                 validator: Optional[Validator] = None):
        self.cfg = cfg
        self.validator = validator
        self.task = task
        self.device = device
        self.dist = dist_info
        self.model = model.to(device)
        self.data_description = data_description or {}
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.optim.lr,
                                          weight_decay=cfg.optim.weight_decay)
        self.step = 0
        self.elapsed = 0.0
        self.out_dir = Path(cfg.output)
        self.net = self.model
        if dist_info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        #: ``fp32`` or ``bf16``: the arithmetic of the forward pass (weights, gradients and
        #: optimiser state stay float32)
        self.precision = resolve_precision(cfg.run.requested_precision, device)
        #: set by :meth:`fit` when the invocation's time budget ended it before the curriculum
        self.paused = False
        self._tb = None
        self.ema = None
        if cfg.optim.ema_decay:
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(
                cfg.optim.ema_decay), use_buffers=True)

    @property
    def trained_model(self) -> nn.Module:
        """The weights that the run produces: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    # -- checkpoints ----------------------------------------------------------------------
    def _extra(self, with_state: bool) -> dict:
        extra = {"train_config": to_dict(self.cfg), "data": self.data_description,
                 "step": self.step, "trainer": {"elapsed": self.elapsed,
                                                "total_steps": self.cfg.total_steps,
                                                "precision": self.precision}}
        if with_state:
            extra["optimizer"] = self.optimizer.state_dict()
            if self.ema is not None:
                extra["ema"] = {k: v.detach().cpu() for k, v in self.ema.state_dict().items()}
        return extra

    def save(self, name: str, with_state: bool = True) -> Optional[Path]:
        """``with_state``: the raw weights plus what resuming needs; otherwise the trained
        model's weights only."""
        if not self.dist.is_main:
            return None
        model = self.model if with_state else self.trained_model
        return save_checkpoint(self.out_dir / name, model, **self._extra(with_state))

    def resume(self, path: str | Path) -> None:
        payload = read_checkpoint(path)
        mine = describe(self.model)
        if payload["model"]["architecture"] != mine["architecture"] or \
                payload["model"]["args"] != mine["args"]:
            raise InputError(f"{path}: checkpoint is of model {payload['model']}, the config "
                             f"describes {mine}")
        if "optimizer" not in payload:
            raise InputError(f"{path}: has no optimizer state (a final checkpoint); resume "
                             "from last.pt")
        changed = _recipe_changes(payload.get("train_config") or {}, to_dict(self.cfg))
        if changed:
            key, was, now = changed[0]
            more = f" (and {len(changed) - 1} more settings)" if len(changed) > 1 else ""
            raise InputError(f"{path}: was trained with {key}={was!r}, this config says "
                             f"{now!r}{more}; continue with the settings it started with (e.g. "
                             "the same --set options)")
        check_state_dict(self.model, payload["state_dict"], path, mine["architecture"])
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.ema is not None:
            if "ema" not in payload:
                raise InputError(f"{path}: has no weight average but optim.ema_decay is set; "
                                 "resume with the config it was trained with")
            self.ema.load_state_dict(payload["ema"])
        self.step = int(payload["step"])
        self.elapsed = float(payload["trainer"]["elapsed"])
        self._truncate_log()

    # -- logging --------------------------------------------------------------------------
    def _log_path(self) -> Path:
        return self.out_dir / "log.csv"

    def _truncate_log(self) -> None:
        """Drop log rows written after the checkpoint being resumed from."""
        path = self._log_path()
        if not self.dist.is_main or not path.exists():
            return
        # A run killed while appending may have left a partial last row: dropped.
        rows = [r for r in csv.DictReader(path.open()) if r.get(LOG_COLUMNS[-1]) is not None
                and r["step"].isdigit() and int(r["step"]) <= self.step]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(path, buf.getvalue())

    def _log(self, row: dict) -> None:
        if not self.dist.is_main:
            return
        path = self._log_path()
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS, extrasaction="ignore",
                                    lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.cfg.run.tensorboard:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            for key in ("loss", "l1", "kloss", "lr"):
                if row.get(key) not in (None, ""):
                    self._tb.add_scalar(f"train/{key}", float(row[key]), row["step"])

    # -- the loop -------------------------------------------------------------------------
    def train_step(self, batch: dict) -> tuple[float, dict]:
        lr = learning_rate(self.cfg, self.step, self.elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.net.train()
        with autocast(self.device, self.precision):
            loss, parts = self.task.loss(self.net, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return float(loss.detach()), {**parts, "lr": lr}

    def fit(self, show_progress: bool = True) -> Optional[Path]:
        """Train until the curriculum ends or the run's time budget is spent, then write and
        return ``final.pt``; or until this invocation's budget (``run.session_minutes``) is
        spent, then write ``last.pt`` only, set :attr:`paused` and return ``None``."""
        cfg = self.cfg
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        total = cfg.total_steps
        budget = cfg.run.max_minutes * 60 if cfg.run.max_minutes else None
        session_end = time.perf_counter() + cfg.run.session_minutes * 60 \
            if cfg.run.session_minutes else None
        first_step = self.step
        bar = progress(total=total, initial=self.step, desc="train", unit="step",
                       disable=not (show_progress and self.dist.is_main))
        window_start, window_steps = time.perf_counter(), 0
        try:
            while self.step < total:
                if any_rank(budget is not None and self.elapsed >= budget, self.dist,
                            self.device):
                    break
                # Every invocation makes at least one step, so that pieces always progress.
                if any_rank(session_end is not None and self.step > first_step
                            and time.perf_counter() >= session_end, self.dist, self.device):
                    self.paused = True
                    break
                t0 = time.perf_counter()
                host = self.task.batch(self.step, self.dist.rank, self.dist.world)
                loss, parts = self.train_step(_batch_to(host, self.device))
                self.elapsed += time.perf_counter() - t0
                self.step += 1
                window_steps += 1
                phase_index, phase = cfg.phase_at(self.step - 1)
                if self.step % cfg.run.log_every == 0 or self.step == total:
                    per_step = (time.perf_counter() - window_start) / window_steps
                    self._log({"step": self.step, "phase": phase.name, "loss": loss,
                               "l1": parts.get("l1"), "kloss": parts.get("kloss", ""),
                               "aloss": parts.get("aloss", ""),
                               "tloss": parts.get("tloss", ""),
                               "lr": parts["lr"], "scale": host.get("scale"),
                               "ref_kind": host.get("ref_kind"),
                               "ref_scale": host.get("ref_scale"),
                               "seconds_per_step": round(per_step, 4),
                               "elapsed_s": round(self.elapsed, 1)})
                    window_start, window_steps = time.perf_counter(), 0
                    bar.set_postfix(loss=f"{loss:.4f}", phase=phase.name,
                                    s_step=f"{per_step:.2f}")
                bar.update(1)
                if self.step % cfg.run.checkpoint_every == 0:
                    self.save("last.pt")
                if self.validator is not None and cfg.validation.every and \
                        self.step % cfg.validation.every == 0:
                    self.validate()
        finally:
            bar.close()
        self.save("last.pt")
        if self.paused:
            return None
        return self.save("final.pt", with_state=False)

    def validate(self) -> Optional[dict]:
        """The validator's mean PSNR/SSIM of the trained weights, appended to
        ``validation.csv`` (rank 0; ``None`` elsewhere or without a validator)."""
        if not self.dist.is_main or self.validator is None:
            return None
        scores = self.validator(self.trained_model, self.device)
        summary = {"step": self.step, "psnr": scores["psnr"], "ssim": scores["ssim"]}
        path = self.out_dir / "validation.csv"
        new = not path.exists()
        with path.open("a") as f:
            if new:
                f.write("step,psnr,ssim\n")
            f.write(f"{summary['step']},{summary['psnr']:.4f},{summary['ssim']:.5f}\n")
        return summary
