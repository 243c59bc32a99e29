"""Super-resolution methods as plug-ins of the evaluation harness.

A method is built from a spec ``{"name": ..., "args": {...}}`` by :func:`make_method` and called
on an :class:`SRCase`; it returns the super-resolved *magnitude* image on the case's output grid.
Interpolation baselines are registered here; learned models register themselves from
``mrisr.inference`` with :func:`register_method`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mrisr.data.intensity import to_magnitude
from mrisr.degradation import kspace_resize, spline_resize
from mrisr.errors import ConfigError


@dataclass
class SRCase:
    """One super-resolution problem.

    lr: low-resolution target, real float32 or complex64, spatial shape ``(H, W)`` or
        ``(X, Y, Z)``.
    out_shape: the high-resolution grid to produce (same FOV as ``lr``).
    reference: the reference contrast on its own grid over the same FOV (or ``None``), real or
        complex; its resolution is independent of the target's.
    target_scale / reference_scale: per-axis factor from that image's grid to ``out_shape``
        (1 = already at the output resolution).
    """

    lr: np.ndarray
    out_shape: tuple[int, ...]
    reference: Optional[np.ndarray] = None
    target_scale: tuple[float, ...] = ()
    reference_scale: tuple[float, ...] = ()


class SRMethod(ABC):
    """Base class: ``uses_reference`` tells the harness whether the reference type matters."""

    name: str = "method"
    uses_reference: bool = False

    @abstractmethod
    def __call__(self, case: SRCase) -> np.ndarray:
        """The super-resolved magnitude image on ``case.out_shape``."""

    def prepare(self, cases: list[SRCase]) -> None:
        """Called before the cases of one subject at one scale are run, with all of them (the
        slices of one degraded scan: what test-time adaptation learns from). Default: nothing."""


_REGISTRY: dict[str, Callable[..., SRMethod]] = {}


def register_method(name: str) -> Callable:
    """Decorator: register a factory (class or function) returning an :class:`SRMethod`."""
    def wrap(factory: Callable[..., SRMethod]) -> Callable[..., SRMethod]:
        _REGISTRY[name] = factory
        return factory
    return wrap


def available_methods() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def _load_plugins() -> None:
    # Learned models register on import; importing here keeps the harness unaware of them.
    import importlib
    importlib.import_module("mrisr.inference")


def make_method(name: str, args: Optional[dict] = None) -> SRMethod:
    """Instantiate a registered method by name with keyword ``args``."""
    _load_plugins()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method '{name}' (known: {', '.join(sorted(_REGISTRY))})")
    try:
        method = _REGISTRY[name](**(args or {}))
    except TypeError as exc:
        raise ConfigError(f"method '{name}': bad arguments ({exc})") from None
    method.name = name
    return method


INTERPOLATION_ORDERS = {"nearest": 0, "linear": 1, "cubic": 3}


def interpolate(lr: np.ndarray, out_shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Upsample ``lr`` (real or complex, spatial axes only) to ``out_shape``.

    ``nearest``/``linear``/``cubic``: B-spline interpolation of order 0/1/3 on pixel centres;
    ``sinc``: zero-filled k-space interpolation (the natural inverse of k-space cropping).
    Complex input stays complex.
    """
    if kind == "sinc":
        return kspace_resize(lr, out_shape)
    if kind not in INTERPOLATION_ORDERS:
        raise ConfigError(f"unknown interpolation '{kind}' "
                          f"(known: {', '.join([*INTERPOLATION_ORDERS, 'sinc'])})")
    return spline_resize(lr, out_shape, order=INTERPOLATION_ORDERS[kind])


class Interpolation(SRMethod):
    def __init__(self, kind: str):
        self.kind = kind

    def __call__(self, case: SRCase) -> np.ndarray:
        return to_magnitude(interpolate(case.lr, case.out_shape, self.kind)).astype(np.float32)


for _kind, _label in (("nearest", "nearest"), ("linear", "linear"), ("cubic", "cubic"),
                      ("sinc", "kspace_zerofill")):
    register_method(_label)(lambda _k=_kind: Interpolation(_k))
