"""Super-resolution methods as plug-ins of the evaluation harness.

A method is built from a spec ``{"name": ..., "args": {...}}`` by :func:`make_method` and called
on an :class:`SRCase`; it returns the super-resolved *magnitude* image on the case's output grid.
Methods are registered by name in :data:`METHODS` (:func:`register_method`): the interpolation
baselines here, the trained models (``model``, ``model3d``) in
:mod:`mrisr.evaluation.model_methods`, which the :mod:`mrisr.evaluation` package imports.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mrisr.data.intensity import to_magnitude
from mrisr.degradation.interpolation import INTERPOLATION_ORDERS, interpolate
from mrisr.errors import ConfigError
from mrisr.registry import Registry

__all__ = ["SRCase", "SRMethod", "METHODS", "register_method", "available_methods",
           "make_method", "INTERPOLATION_ORDERS", "interpolate", "Interpolation"]


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


#: Method name -> factory (a class or function) returning an :class:`SRMethod`.
METHODS: Registry[Callable[..., SRMethod]] = Registry("method", ConfigError)
_REGISTRY = METHODS  # the name older code and tests use


def register_method(name: str) -> Callable:
    """Decorator: register a factory (class or function) returning an :class:`SRMethod`."""
    return METHODS.register(name)


def available_methods() -> list[str]:
    return sorted(METHODS)


def make_method(name: str, args: Optional[dict] = None) -> SRMethod:
    """Instantiate a registered method by name with keyword ``args``."""
    factory = METHODS.lookup(name)
    try:
        method = factory(**(args or {}))
    except TypeError as exc:
        raise ConfigError(f"method '{name}': bad arguments ({exc})") from None
    method.name = name
    return method


class Interpolation(SRMethod):
    """Interpolation of the case's input; ``magnitude_input``: of its magnitude, as from a
    NIfTI file (a k-space-cropped input is complex, with signed ringing that a magnitude image
    has lost; the models read magnitudes too)."""

    def __init__(self, kind: str, magnitude_input: bool = False):
        self.kind = kind
        self.magnitude_input = magnitude_input

    def __call__(self, case: SRCase) -> np.ndarray:
        lr = np.abs(case.lr) if self.magnitude_input else case.lr
        return to_magnitude(interpolate(lr, case.out_shape, self.kind)).astype(np.float32)


for _kind, _label in (("nearest", "nearest"), ("linear", "linear"), ("cubic", "cubic"),
                      ("sinc", "kspace_zerofill")):
    register_method(_label)(lambda _k=_kind: Interpolation(_k))
register_method("kspace_zerofill_magnitude")(lambda: Interpolation("sinc", magnitude_input=True))
