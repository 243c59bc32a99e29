"""Model registry: architectures by name, named presets, shipped weights (timm-style).

``create_model("dualarbnet_s", pretrained=True)`` builds the preset's architecture and, with
``pretrained``, loads the checkpoint shipped in ``mrisr/weights/<name>.pt``.
``create_model("dualarbnet", G0=32, ...)`` builds an architecture with explicit arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mrisr.errors import ConfigError, InputError

if TYPE_CHECKING:  # torch is not imported here, so that the presets can be listed without it
    from torch import nn

_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


@dataclass(frozen=True)
class Preset:
    """A named configuration of an architecture (and, once trained, its shipped weights)."""

    name: str
    architecture: str
    args: dict = field(default_factory=dict)
    description: str = ""


PRESETS: dict[str, Preset] = {}


def register_architecture(name: str) -> Callable:
    def wrap(cls):
        _ARCHITECTURES[name] = cls
        return cls
    return wrap


def register_preset(preset: Preset) -> None:
    PRESETS[preset.name] = preset


def weights_path(name: str) -> Path:
    return Path(str(files("mrisr") / "weights" / f"{name}.pt"))


def list_models(pretrained: bool = False) -> list[str]:
    """Preset names (with ``pretrained``, only those with shipped weights)."""
    names = sorted(PRESETS)
    return [n for n in names if weights_path(n).exists()] if pretrained else names


def build_architecture(architecture: str, args: dict) -> nn.Module:
    if architecture not in _ARCHITECTURES:
        raise ConfigError(f"unknown architecture '{architecture}' "
                          f"(known: {', '.join(sorted(_ARCHITECTURES))})")
    try:
        model = _ARCHITECTURES[architecture](**args)
    except TypeError as exc:
        raise ConfigError(f"architecture '{architecture}': bad arguments ({exc})") from None
    model.architecture = architecture
    model.architecture_args = dict(args)
    return model


def create_model(name: str, pretrained: bool = False, **overrides) -> nn.Module:
    """Build a preset (``dualarbnet_s``) or an architecture (``dualarbnet``) by name."""
    if name in PRESETS:
        preset = PRESETS[name]
        model = build_architecture(preset.architecture, {**preset.args, **overrides})
        model.preset = name
    elif name in _ARCHITECTURES:
        if pretrained:
            raise ConfigError(f"'{name}' is an architecture; pretrained weights exist for "
                              f"presets: {', '.join(list_models(True)) or 'none'}")
        return build_architecture(name, overrides)
    else:
        raise ConfigError(f"unknown model '{name}' (presets: {', '.join(sorted(PRESETS))}; "
                          f"architectures: {', '.join(sorted(_ARCHITECTURES))})")
    if pretrained:
        from mrisr.models.checkpoint import load_checkpoint
        path = weights_path(name)
        if not path.exists():
            raise InputError(f"no shipped weights for '{name}' (have: "
                             f"{', '.join(list_models(True)) or 'none'})")
        if overrides:
            raise ConfigError("pretrained weights cannot be combined with argument overrides")
        return load_checkpoint(path).model
    return model
