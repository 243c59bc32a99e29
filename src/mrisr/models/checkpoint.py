"""Self-describing checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and primitive values:

``format``, ``model`` (``architecture``, ``args``, ``preset``), ``state_dict``,
``train_config`` (the YAML settings as a dict), ``data`` (manifest digest, subjects, split),
``code_version`` (mrisr version and git commit when known), ``created``, ``step`` and, for
resuming, ``optimizer``, ``scheduler`` and ``trainer`` state. Shipped weights keep only what
inference needs.

This module writes and reads the format; :func:`mrisr.models.loading.load_checkpoint` and
:func:`mrisr.models.loading.load_model` rebuild the model it describes.
"""
from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

import torch
from torch import nn

from mrisr.errors import InputError
from mrisr.io.atomic import atomic_path
from mrisr.models.base import SRModel

FORMAT = "mrisr-checkpoint-v1"


def code_version() -> str:
    """mrisr's version, plus the git commit when running from a checkout (``.dirty`` when
    tracked files differ from it)."""
    from mrisr import __version__
    root = Path(__file__).resolve().parents[3]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=5).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(commit and git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    if not commit:
        return __version__
    return f"{__version__}+g{commit}" + (".dirty" if dirty else "")


def describe(model: SRModel) -> dict:
    """What a checkpoint stores of the model: registered architecture, arguments, preset."""
    return {"architecture": model.architecture, "args": dict(model.architecture_args or {}),
            "preset": model.preset}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> Path:
    """Write a checkpoint atomically; ``extra`` entries (train_config, data, step, optimizer,
    ...) are stored as given. ``model``: an :class:`SRModel`, or one wrapped in
    ``DistributedDataParallel``."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    payload = {"format": FORMAT, "model": describe(model),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "code_version": code_version(),
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(), **extra}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
    return out


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words. torch's own messages
    suggest loading with ``weights_only=False``, which runs arbitrary code: never repeated."""
    text = str(exc)
    if "weights_only" in text or "Unpickl" in type(exc).__name__:
        return "corrupt, or holds objects other than tensors and plain values"
    if "zip archive" in text or "central directory" in text:
        return "truncated or corrupt file"
    if isinstance(exc, EOFError) or not text:
        return "empty or truncated file"
    return text.splitlines()[0][:200]


def read_checkpoint(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: checkpoint not found")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/unsafe files
        raise InputError(f"{p}: not a readable mrisr checkpoint ({_load_failure(exc)})") \
            from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{p}: not an mrisr checkpoint (format {payload.get('format')!r})"
                         if isinstance(payload, dict) else f"{p}: not an mrisr checkpoint")
    desc, state = payload.get("model"), payload.get("state_dict")
    if not (isinstance(desc, dict) and isinstance(desc.get("architecture"), str)
            and isinstance(desc.get("args", {}), dict)):
        raise InputError(f"{p}: the checkpoint does not say which model it holds (its 'model' "
                         "entry needs an 'architecture' name and 'args')")
    if not (isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in state.items())):
        raise InputError(f"{p}: the checkpoint holds no weights (its 'state_dict' is not a "
                         "mapping of names to tensors)")
    return payload


def check_state_dict(model: nn.Module, state: dict, path, architecture: str) -> None:
    """Refuse, in one line naming the first tensor at fault, weights ``state`` (from the
    checkpoint ``path``) that do not fit ``model`` (its ``architecture`` built with the
    checkpoint's arguments): a tensor the model lacks, one it has that is missing, a shape that
    differs, or NaN/Inf values (which would turn every output into NaN)."""
    expected = model.state_dict()
    for name, tensor in state.items():
        if name not in expected:
            raise InputError(f"{path}: tensor '{name}' is not part of architecture "
                             f"'{architecture}' with the checkpoint's arguments (weights of "
                             "another model or version)")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise InputError(f"{path}: tensor '{name}' has shape {tuple(tensor.shape)}, but "
                             f"architecture '{architecture}' with the checkpoint's arguments "
                             f"needs {tuple(expected[name].shape)}")
        if (tensor.is_floating_point() or tensor.is_complex()) and \
                not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{path}: tensor '{name}' holds NaN/Inf values")
    missing = [name for name in expected if name not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{path}: tensor '{missing[0]}' of architecture '{architecture}' is "
                         f"missing from the checkpoint{more}")
