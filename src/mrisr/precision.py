"""Number format of the networks' arithmetic: ``fp32`` or ``bf16`` (bfloat16 autocast).

bf16 runs the convolutions and matrix products of the models in bfloat16 on hardware that has
fast units for it (NVIDIA GPUs from Ampere on; CPUs with AVX-512 BF16 or AMX, on which oneDNN
runs bf16 convolutions several times faster than fp32), and keeps everything else in float32:
weights and optimiser state, the decoders' coordinate and scale inputs, interpolation, the
k-space consistency projection, calibration and metrics. ``auto`` picks bf16 only where that
hardware is present (:func:`fast_bf16`) and fp32 elsewhere (MPS, older CPUs and GPUs), so a
machine without the units runs exactly the fp32 path.

The CPU test reads the kernel's feature flags (``/proc/cpuinfo``); the environment variable
``MRISR_CPU_BF16=0`` (or ``1``) overrides it, e.g. to check the fp32 fallback on a bf16 machine.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import TYPE_CHECKING, Iterator

from mrisr.errors import InputError

if TYPE_CHECKING:
    import torch
# torch is imported in the functions: the CLI reads PRECISIONS before it imports torch.

PRECISIONS = ("auto", "fp32", "bf16")

#: CPU feature flags (Linux names) of units that run bfloat16 arithmetic natively.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bfloat16 units (``MRISR_CPU_BF16`` = 0 / 1 overrides)."""
    forced = os.environ.get("MRISR_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return any(flag in _cpu_flags() for flag in BF16_CPU_FLAGS)


def fast_bf16(device: "torch.device") -> bool:
    """Whether ``device`` runs bfloat16 convolutions faster than float32."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_fast_bf16()
    return False  # MPS and others: float32


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}' (use {', '.join(PRECISIONS)})")
    return precision


def resolve_precision(precision: str, device: "torch.device") -> str:
    """``auto`` -> ``bf16`` where :func:`fast_bf16`, else ``fp32``; explicit values are kept
    (``bf16`` on MPS is refused: autocast there does not cover bfloat16 on every release)."""
    import torch

    check_precision(precision)
    device = torch.device(device)
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise InputError(f"precision bf16 is supported on cpu and cuda, not on {device.type}; "
                         "use --precision fp32")
    return precision


def autocast(device: "torch.device", precision: str) -> contextlib.AbstractContextManager:
    """Autocast to bfloat16 on ``device`` when ``precision`` (resolved) is ``bf16``; a no-op
    context for ``fp32``."""
    import torch

    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"resolve the precision first, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def autocast_active(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` here (``False`` where torch has no autocast
    for that device)."""
    import torch

    try:
        return bool(torch.is_autocast_enabled(device_type))
    except (RuntimeError, TypeError):
        return False


@contextlib.contextmanager
def float32(x: "torch.Tensor") -> Iterator[None]:
    """Float32 arithmetic inside, whatever autocast is active outside (for coordinates and
    position encodings, whose few significant bits bfloat16 would round away)."""
    import torch

    if not autocast_active(x.device.type):
        yield
        return
    with torch.autocast(x.device.type, enabled=False):
        yield
