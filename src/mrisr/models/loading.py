"""Building and loading models: the one place where a model name, a checkpoint or a module
becomes a ready model.

* :func:`create_model` builds a preset (``dualarbnet_s``) or an architecture (``dualarbnet``,
  with explicit arguments), optionally with the preset's shipped weights;
* :func:`load_checkpoint` rebuilds the model a checkpoint describes;
* :func:`load_model` resolves what a user or a config names (a preset with shipped weights, a
  checkpoint path, or an ``nn.Module`` already built) into a :class:`LoadedModel`: the model,
  what it reads (dimensions, input kind, reference use) and the checkpoint's metadata.
  Upscaling, evaluation, training (``model.init``) and the demo all resolve models here.

Importing this module registers the architectures (:mod:`mrisr.models.dual_arbnet`,
:mod:`~mrisr.models.liif`, :mod:`~mrisr.models.csr_dmri`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from mrisr.devices import select_device
from mrisr.errors import ConfigError, InputError, MrisrError
from mrisr.models import csr_dmri, dual_arbnet, liif, spline_refiner  # noqa: F401  (registers)
from mrisr.models import registry
from mrisr.models.base import ReferenceUse, SRModel
from mrisr.models.checkpoint import check_state_dict, read_checkpoint

#: Checkpoint entries that are not metadata (tensors and training state).
_STATE_KEYS = ("state_dict", "optimizer", "ema", "scheduler")


def build_architecture(architecture: str, args: dict) -> SRModel:
    """An untrained model of a registered architecture with ``args``."""
    cls = registry.ARCHITECTURES.lookup(architecture)
    try:
        model = cls(**args)
    except (TypeError, ValueError, RuntimeError) as exc:  # unknown names, impossible values
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"architecture '{architecture}': bad arguments ({reason})") from None
    model.architecture = architecture
    model.architecture_args = dict(args)
    return model


def create_model(name: str, pretrained: bool = False, **overrides) -> SRModel:
    """Build a preset (``dualarbnet_s``) or an architecture (``dualarbnet``) by name;
    ``pretrained``: a preset with its shipped weights (eval mode)."""
    presets, architectures = registry.PRESETS, registry.ARCHITECTURES
    if name in presets:
        if pretrained:
            if overrides:
                raise ConfigError("pretrained weights cannot be combined with argument "
                                  "overrides")
            if not registry.weights_path(name).exists():
                raise InputError(f"no shipped weights for '{name}' (have: "
                                 f"{', '.join(registry.list_models(True)) or 'none'})")
            return load_model(name).model
        preset = presets[name]
        model = build_architecture(preset.architecture, {**preset.args, **overrides})
        model.preset = name
        return model
    if name in architectures:
        if pretrained:
            raise ConfigError(f"'{name}' is an architecture; pretrained weights exist for "
                              f"presets: {', '.join(registry.list_models(True)) or 'none'}")
        return build_architecture(name, overrides)
    raise ConfigError(f"unknown model '{name}' (presets: {', '.join(sorted(presets))}; "
                      f"architectures: {', '.join(sorted(architectures))})")


@dataclass
class LoadedCheckpoint:
    model: SRModel
    payload: dict


def load_checkpoint(path: str | os.PathLike, device: Optional[torch.device] = None
                    ) -> LoadedCheckpoint:
    """Rebuild the model described in a checkpoint and load its weights (eval mode)."""
    payload = read_checkpoint(path)
    desc = payload["model"]
    try:
        model = build_architecture(desc["architecture"], desc.get("args") or {})
    except MrisrError as exc:
        raise InputError(f"{path}: {exc}") from None
    if desc.get("preset"):
        model.preset = desc["preset"]
    check_state_dict(model, payload["state_dict"], path, desc["architecture"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    if device is not None:
        model.to(device)
    return LoadedCheckpoint(model=model, payload=payload)


@dataclass
class LoadedModel:
    """A resolved model and what it reads.

    model: the model (eval mode when loaded from weights).
    name: what was resolved (preset name or checkpoint path), or the module's preset or
        class name.
    source: ``preset`` (shipped weights), ``checkpoint`` or ``module``.
    input_kind: ``magnitude`` or ``complex``: the training config's ``data.input`` when the
        checkpoint has one, else from the model's input channels.
    metadata: the checkpoint's entries other than tensors and training state (``format``,
        ``model``, ``train_config``, ``data``, ``code_version``, ``created``, ``step``, ...);
        empty for a module.
    """

    model: SRModel
    name: str
    source: str
    input_kind: str
    metadata: dict = field(default_factory=dict)

    @property
    def dims(self) -> int:
        return self.model.dims

    @property
    def reference_use(self) -> ReferenceUse:
        return self.model.reference_use

    @property
    def uses_reference(self) -> bool:
        return self.model.uses_reference

    @property
    def train_config(self) -> dict:
        """The training settings stored with the weights (``{}`` when none)."""
        return self.metadata.get("train_config") or {}


def _input_kind(model: SRModel, train_config: dict) -> str:
    kind = (train_config.get("data") or {}).get("input")
    return kind or ("complex" if model.in_channels == 2 else "magnitude")


def load_model(spec: Union[str, os.PathLike, nn.Module],
               device: Union[str, torch.device, None] = None) -> LoadedModel:
    """Resolve ``spec``: a preset with shipped weights (``"dualarbnet_s"``), a checkpoint path,
    or an :class:`SRModel` already built (used as it is); moved to ``device`` when given
    (``"auto"``, ``"cpu"``, ``"cuda:0"``, ...). Preset weights are looked up through
    :func:`mrisr.models.registry.weights_path` at call time."""
    if isinstance(spec, nn.Module):
        if not isinstance(spec, SRModel):
            raise InputError(f"{type(spec).__name__} is not an mrisr model (SRModel)")
        loaded = LoadedModel(spec, spec.preset or type(spec).__name__, "module",
                             _input_kind(spec, {}))
    else:
        name = os.fspath(spec)
        if name in registry.PRESETS:
            path, source = registry.weights_path(name), "preset"
            if not path.exists():
                raise InputError(f"model '{name}' has no shipped weights; give a checkpoint "
                                 "path")
        else:
            path, source = Path(name), "checkpoint"
        checkpoint = load_checkpoint(path)
        metadata = {k: v for k, v in checkpoint.payload.items() if k not in _STATE_KEYS}
        loaded = LoadedModel(checkpoint.model, name, source,
                             _input_kind(checkpoint.model, metadata.get("train_config") or {}),
                             metadata)
    if device is not None:
        loaded.model.to(select_device(device) if isinstance(device, str) else device)
    return loaded
