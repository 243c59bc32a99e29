"""Model registry: architectures by name, named presets, shipped weights (timm-style).

Architectures register themselves with :func:`register_architecture` where they are defined
(``@register_architecture("dualarbnet") class DualArbNet``); presets with
:func:`register_preset` (:mod:`mrisr.models.presets`). Building and loading models is
:mod:`mrisr.models.loading` (``create_model``, ``load_model``), which imports the
architectures. This module imports neither torch nor the architectures, so presets and
shipped weights can be listed without them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mrisr.errors import ConfigError
from mrisr.registry import Registry

if TYPE_CHECKING:  # torch is not imported here, so that the presets can be listed without it
    from torch import nn


@dataclass(frozen=True)
class Preset:
    """A named configuration of an architecture (and, once trained, its shipped weights)."""

    name: str
    architecture: str
    args: dict = field(default_factory=dict)
    description: str = ""


#: Architecture name -> model class (filled when :mod:`mrisr.models.loading` imports them).
ARCHITECTURES: Registry[Callable[..., "nn.Module"]] = Registry("architecture", ConfigError)
#: Preset name -> :class:`Preset` (filled by :mod:`mrisr.models.presets`).
PRESETS: Registry[Preset] = Registry("preset", ConfigError)


def register_architecture(name: str) -> Callable:
    """Class decorator: register a model class under ``name``."""
    return ARCHITECTURES.register(name)


def register_preset(preset: Preset) -> None:
    PRESETS.register(preset.name, preset)


def weights_path(name: str) -> Path:
    return Path(str(files("mrisr") / "weights" / f"{name}.pt"))


def list_models(pretrained: bool = False) -> list[str]:
    """Preset names (with ``pretrained``, only those with shipped weights)."""
    names = sorted(PRESETS)
    return [n for n in names if weights_path(n).exists()] if pretrained else names
