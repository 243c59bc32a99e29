"""Image-quality metrics for MRI super-resolution: PSNR, NRMSE and SSIM on 2D or 3D images.

Everything here is computed with torch in float64, so the same code runs on CPU and CUDA tensors
(MPS has no float64, so MPS tensors are evaluated on the CPU). numpy arrays are accepted anywhere a
tensor is. Every metric returns a plain Python ``float``.

Conventions
-----------
* ``pred`` and ``target`` are real-valued images of identical shape: ``(H, W)`` for a 2D slice or
  ``(X, Y, Z)`` for a volume. Intensities are in arbitrary scanner units; only ``data_range`` gives
  them a scale. Complex or non-finite input is rejected rather than silently cast.
* ``mask`` is an optional boolean array of the same shape; ``True`` marks the voxels to score.
* ``data_range`` is the dynamic range ``L`` of the images (``max - min`` of what the images could
  span). It is *required*, never guessed; see :func:`ssim` for why.

SSIM reproduces ``skimage.metrics.structural_similarity`` with its default settings (uniform
``win_size**ndim`` window, ``K1 = 0.01``, ``K2 = 0.03``, sample-covariance correction
``N / (N - 1)``, mean over the map with a ``(win_size - 1) // 2`` border cropped) to within
floating-point rounding.

Published tables use different ``data_range`` and normalisation choices, so the same
reconstruction scores differently from paper to paper. :func:`evaluate_case` bundles those choices
as named protocols (see :data:`PROTOCOLS`) so that a number produced here can be put next to the
table it claims to match.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping, Union

import numpy as np
import torch

from mrisr.errors import ConfigError, InputError
from mrisr.registry import Registry

__all__ = [
    "ArrayLike",
    "psnr",
    "nrmse",
    "ssim",
    "ssim_map",
    "Protocol",
    "PROTOCOLS",
    "get_protocol",
    "register_protocol",
    "evaluate_case",
    "SSIM_K1",
    "SSIM_K2",
    "DEFAULT_WIN_SIZE",
]

ArrayLike = Union[np.ndarray, torch.Tensor]

#: Stabilising constants of Wang et al. (2004), also skimage's defaults.
SSIM_K1 = 0.01
SSIM_K2 = 0.03
#: Window side used by skimage's default SSIM and by every protocol here.
DEFAULT_WIN_SIZE = 7


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------

def _device_of(*arrays: object) -> torch.device:
    devices = {a.device for a in arrays if isinstance(a, torch.Tensor) and a.device.type != "cpu"}
    # MPS has no float64 and the metrics must be float64 to match reference implementations to
    # 1e-6, so MPS inputs are scored on the CPU.
    devices = {d for d in devices if d.type != "mps"}
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise InputError(f"pred, target and mask are on different devices ({names})")
    return devices.pop() if devices else torch.device("cpu")


def _as_float64(x: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise InputError(f"{name} is complex ({x.dtype}); pass magnitude images (x.abs())")
        return x.detach().to(device=device, dtype=torch.float64)
    arr = np.asarray(x)
    if np.iscomplexobj(arr):
        raise InputError(f"{name} is complex ({arr.dtype}); pass magnitude images (np.abs(x))")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"{name} has non-numeric dtype {arr.dtype}")
    # The explicit float64 copy also normalises byte order (NIfTI data is often big-endian) and
    # negative strides, neither of which torch.from_numpy accepts.
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    return torch.from_numpy(arr).to(device)


def _as_mask(mask: ArrayLike, shape: torch.Size, device: torch.device) -> torch.Tensor:
    if isinstance(mask, torch.Tensor):
        is_bool = mask.dtype == torch.bool
        dtype_name = str(mask.dtype)
    else:
        mask = np.asarray(mask)
        is_bool = mask.dtype == np.bool_
        dtype_name = str(mask.dtype)
    if not is_bool:
        # A float mask may be a probability map; thresholding it is the caller's decision.
        raise InputError(f"mask must be boolean, got dtype {dtype_name}; pass e.g. mask > 0")
    m = mask.to(device) if isinstance(mask, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(mask)).to(device)
    if m.shape != shape:
        raise InputError(f"mask shape {tuple(m.shape)} does not match image shape {tuple(shape)}")
    if not bool(m.any()):
        raise InputError("mask selects no voxels")
    return m


def _prepare(pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None,
             ssim_ndim: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    device = _device_of(pred, target, mask)
    p = _as_float64(pred, "pred", device)
    t = _as_float64(target, "target", device)
    if p.shape != t.shape:
        raise InputError(
            f"pred shape {tuple(p.shape)} does not match target shape {tuple(t.shape)}")
    if p.numel() == 0:
        raise InputError(f"images are empty (shape {tuple(p.shape)})")
    if ssim_ndim and p.ndim not in (2, 3):
        raise InputError(
            f"SSIM needs a 2D (H, W) or 3D (X, Y, Z) image, got shape {tuple(p.shape)}")
    if not bool(torch.isfinite(p).all()):
        raise InputError("pred contains NaN or infinite values")
    if not bool(torch.isfinite(t).all()):
        raise InputError("target contains NaN or infinite values")
    m = None if mask is None else _as_mask(mask, p.shape, device)
    return p, t, m


def _check_data_range(data_range: float) -> float:
    try:
        value = float(data_range)
    except (TypeError, ValueError):
        raise InputError(f"data_range must be a positive number, got {data_range!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"data_range must be a positive finite number, got {data_range!r}")
    return value


# --------------------------------------------------------------------------------------------
# PSNR and NRMSE
# --------------------------------------------------------------------------------------------

def _mse(p: torch.Tensor, t: torch.Tensor, m: torch.Tensor | None) -> float:
    diff = p - t
    if m is not None:
        diff = diff[m]
    return float(torch.mean(diff * diff))


def psnr(pred: ArrayLike, target: ArrayLike, data_range: float,
         mask: ArrayLike | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 * log10(data_range**2 / MSE)``.

    Args:
        pred: reconstructed image, any shape (typically ``(H, W)`` or ``(X, Y, Z)``).
        target: reference image, same shape as ``pred``.
        data_range: the peak ``L`` in the same intensity units as the images (e.g.
            ``target.max() - target.min()``). Required; there is no safe default for float MRI.
        mask: optional boolean array of the image shape; the MSE is then averaged over the
            ``True`` voxels only (the peak is still ``data_range``).

    Returns:
        PSNR in dB; ``inf`` when the images are identical (on the mask).
    Matches ``skimage.metrics.peak_signal_noise_ratio(target, pred, data_range=data_range)``.
    """
    L = _check_data_range(data_range)
    p, t, m = _prepare(pred, target, mask)
    mse = _mse(p, t, m)
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(L * L / mse)


def nrmse(pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Normalised RMSE with Euclidean normalisation: ``||pred - target|| / ||target||``.

    Equivalently ``RMSE / sqrt(mean(target**2))``. This is skimage's
    ``normalized_root_mse(target, pred)`` with its default ``normalization='euclidean'``. It is
    dimensionless and independent of any ``data_range``; note it is *not* fastMRI's NMSE, which
    is the square of this value.

    Args:
        pred, target: images of identical shape (any ndim).
        mask: optional boolean array; both norms are then taken over the ``True`` voxels only.

    Returns:
        The ratio (0 for a perfect reconstruction); ``inf`` if ``target`` is all zero on the mask
        while ``pred`` is not.
    """
    p, t, m = _prepare(pred, target, mask)
    if m is not None:
        p, t = p[m], t[m]
    num = float(torch.linalg.vector_norm(p - t))
    den = float(torch.linalg.vector_norm(t))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------

def _box_mean(x: torch.Tensor, win_size: int, dims: tuple[int, ...]) -> torch.Tensor:
    """Mean over a ``win_size`` hypercube on ``dims``, 'valid' mode (each dim shrinks by win-1).

    Summing shifted views is several times faster than avg_pool/conv on CPU in float64 (which
    fall back to slow generic kernels) and, unlike a cumulative-sum box filter, never forms
    large partial sums, so its rounding error stays at the level of scipy's uniform_filter.
    """
    for d in dims:
        n = x.shape[d] - win_size + 1
        acc = x.narrow(d, 0, n).clone()
        for k in range(1, win_size):
            acc += x.narrow(d, k, n)
        x = acc
    return x / float(win_size ** len(dims))


def _symmetric_pad(x: torch.Tensor, pad: int, dims: tuple[int, ...]) -> torch.Tensor:
    # scipy.ndimage's default mode 'reflect' repeats the edge sample (d c b a | a b c d); torch's
    # 'reflect' padding does not, so the indices are built explicitly to reproduce skimage's
    # full map at the border as well.
    for d in dims:
        n = x.shape[d]
        idx = torch.arange(-pad, n + pad, device=x.device)
        idx = torch.where(idx < 0, -idx - 1, idx)
        idx = torch.where(idx >= n, 2 * n - 1 - idx, idx)
        x = x.index_select(d, idx)
    return x


def _check_win_size(win_size: int, shape: torch.Size) -> int:
    if isinstance(win_size, bool) or int(win_size) != win_size:
        raise InputError(f"win_size must be an odd integer >= 3, got {win_size!r}")
    win_size = int(win_size)
    if win_size < 3 or win_size % 2 == 0:
        raise InputError(f"win_size must be an odd integer >= 3, got {win_size}")
    if min(shape) < win_size:
        raise InputError(
            f"image shape {tuple(shape)} is smaller than the SSIM window {win_size} "
            "along some axis")
    return win_size


def _ssim_valid(p: torch.Tensor, t: torch.Tensor, L: float, win_size: int) -> torch.Tensor:
    """SSIM map on the interior where the whole window fits (the part skimage averages)."""
    ndim = p.ndim
    dims = tuple(range(1, ndim + 1))
    # Shifting both images by one constant leaves (co)variances unchanged and keeps the
    # E[x^2] - E[x]^2 cancellation small for images sitting on a large offset.
    shift = t.mean()
    x = p - shift
    y = t - shift
    stack = torch.stack((x, y, x * x, y * y, x * y))
    ux, uy, uxx, uyy, uxy = _box_mean(stack, win_size, dims).unbind(0)
    n_win = win_size ** ndim
    cov_norm = n_win / (n_win - 1.0)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    ux = ux + shift
    uy = uy + shift
    c1 = (SSIM_K1 * L) ** 2
    c2 = (SSIM_K2 * L) ** 2
    num = (2.0 * ux * uy + c1) * (2.0 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return num / den


def ssim_map(pred: ArrayLike, target: ArrayLike, data_range: float,
             win_size: int = DEFAULT_WIN_SIZE) -> torch.Tensor:
    """Full local-SSIM map, identical to ``structural_similarity(..., full=True)[1]`` in skimage.

    Args:
        pred, target: 2D ``(H, W)`` or 3D ``(X, Y, Z)`` real images of identical shape, at least
            ``win_size`` along every axis.
        data_range: dynamic range ``L`` (same units as the images); see :func:`ssim`.
        win_size: odd side length of the uniform window (``win_size**ndim`` voxels).

    Returns:
        float64 tensor of the input shape on the input's device (CPU for numpy/MPS input).
        Values within ``(win_size - 1) // 2`` voxels of the border come from symmetric
        ('reflect' in scipy's sense) padding and are excluded by :func:`ssim`.
    """
    L = _check_data_range(data_range)
    p, t, _ = _prepare(pred, target, None, ssim_ndim=True)
    win_size = _check_win_size(win_size, p.shape)
    pad = (win_size - 1) // 2
    dims = tuple(range(p.ndim))
    return _ssim_valid(_symmetric_pad(p, pad, dims), _symmetric_pad(t, pad, dims), L, win_size)


def ssim(pred: ArrayLike, target: ArrayLike, data_range: float, mask: ArrayLike | None = None,
         win_size: int = DEFAULT_WIN_SIZE) -> float:
    """Mean structural similarity (SSIM) of a 2D slice or a 3D volume.

    Reproduces ``skimage.metrics.structural_similarity(target, pred, data_range=data_range)``
    with default settings: a uniform ``win_size**ndim`` window (a 3D input gets a 3D window),
    ``K1 = 0.01``, ``K2 = 0.03``, sample covariances (factor ``N / (N - 1)``), and the mean of
    the local-SSIM map after cropping ``(win_size - 1) // 2`` voxels from every border.

    Why ``data_range`` is required: it sets the constants ``C1 = (K1 L)^2`` and
    ``C2 = (K2 L)^2`` and therefore changes the score substantially, and every library guesses it
    differently. skimage up to 0.19 silently used ``L = 2`` for any float input (the float dtype
    range -1..1), newer skimage raises for float input without it; torchmetrics uses ``max - min``
    over the whole batch (pred and target together); MONAI defaults to ``L = 1.0``. Passing it
    explicitly is the only way to know which number was computed.

    Args:
        pred, target: 2D ``(H, W)`` or 3D ``(X, Y, Z)`` real images of identical shape, at least
            ``win_size`` along every axis.
        data_range: dynamic range ``L`` in image units, e.g. ``target.max() - target.min()``.
        mask: optional boolean array of the image shape. The local-SSIM map is averaged over the
            mask voxels that lie inside the cropped interior (so border values that depend on the
            padding never count); an :class:`InputError` is raised if none do.
        win_size: odd side length of the uniform window.

    Returns:
        Mean SSIM in ``[-1, 1]``; exactly 1.0 for identical images.
    """
    L = _check_data_range(data_range)
    p, t, m = _prepare(pred, target, mask, ssim_ndim=True)
    win_size = _check_win_size(win_size, p.shape)
    s = _ssim_valid(p, t, L, win_size)
    if m is None:
        return float(s.mean())
    pad = (win_size - 1) // 2
    for d in range(m.ndim):
        m = m.narrow(d, pad, m.shape[d] - 2 * pad)
    if not bool(m.any()):
        raise InputError(
            f"mask has no voxels more than {pad} voxels from the image border (SSIM interior)")
    return float(s[m].mean())


# --------------------------------------------------------------------------------------------
# named evaluation protocols
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Protocol:
    """A published way of scoring a reconstruction.

    Attributes:
        name: registry key, used as ``evaluate_case(..., protocol=name)``.
        description: one paragraph saying how the peak / data_range is chosen and what is returned.
        requires_mask: whether :func:`evaluate_case` must be given a mask.
        compute: ``(pred, target, mask) -> dict`` on prepared float64 tensors.
    """

    name: str
    description: str
    requires_mask: bool
    compute: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], dict[str, float]]


#: Protocol name -> :class:`Protocol` (:func:`register_protocol`).
_REGISTRY: Registry[Protocol] = Registry("metric protocol", ConfigError)


def register_protocol(name: str, description: str, requires_mask: bool = False) -> Callable:
    """Decorator: register ``compute(pred, target, mask) -> dict`` as protocol ``name``."""
    def decorate(compute: Callable) -> Callable:
        _REGISTRY.register(name, Protocol(name, description, requires_mask, compute))
        return compute
    return decorate


def _peak_max_minus_min(t: torch.Tensor, m: torch.Tensor | None, protocol: str) -> float:
    vals = t if m is None else t[m]
    peak = float(vals.max() - vals.min())
    if peak <= 0.0:
        where = "inside the mask " if m is not None else ""
        raise InputError(f"protocol '{protocol}': target is constant {where}(max - min = 0)")
    return peak


@register_protocol(
    "dualarbnet",
    "Magnitude images; peak L = max(target) - min(target) over the given array "
    "(pass 2D slices and average to follow the Dual-ArbNet per-slice tables). "
    "Returns psnr (dB, peak L), ssim (data_range L), nrmse (Euclidean) and "
    "ssim_range2: SSIM of pred/max(target) vs target/max(target) with data_range=2, "
    "which is what the reference code computed through skimage<=0.19's float "
    "default. ssim_range2 is inflated (C1, C2 about 4x too large) and is only for "
    "reproducing that table, NOT comparable with correctly ranged SSIM.")
def _dualarbnet(p: torch.Tensor, t: torch.Tensor, m: torch.Tensor | None) -> dict[str, float]:
    peak = _peak_max_minus_min(t, None, "dualarbnet")
    tmax = float(t.max())
    if tmax <= 0.0:
        raise InputError("protocol 'dualarbnet': max(target) must be > 0 to normalise by it")
    return {
        "psnr": psnr(p, t, peak, mask=m),
        "ssim": ssim(p, t, peak, mask=m),
        "nrmse": nrmse(p, t, mask=m),
        # The Dual-ArbNet code divides by max(target) and calls skimage <= 0.19 SSIM on float
        # data without data_range, which then used the float dtype range -1..1, i.e. L = 2.
        "ssim_range2": ssim(p / tmax, t / tmax, 2.0, mask=m),
    }


@register_protocol(
    "fastmri",
    "fastMRI convention: data_range = max(target) over the whole case (volume "
    "maximum). psnr over the whole array; ssim is the 2D SSIM for a slice, and for "
    "a 3D (slices, H, W) input the mean of per-slice 2D SSIMs along axis 0; "
    "nrmse is Euclidean (fastMRI's NMSE is its square).")
def _fastmri(p: torch.Tensor, t: torch.Tensor, m: torch.Tensor | None) -> dict[str, float]:
    peak = float(t.max())
    if peak <= 0.0:
        raise InputError("protocol 'fastmri': max(target) must be > 0 (it is the data_range)")
    if p.ndim == 3:
        # fastMRI scores a volume as the mean of 2D SSIMs over its slices (axis 0), all with the
        # volume's maximum as data_range.
        scores = []
        for k in range(p.shape[0]):
            mk = None
            if m is not None:
                mk = m[k]
                pad = (DEFAULT_WIN_SIZE - 1) // 2
                if not bool(mk[pad:-pad, pad:-pad].any()):
                    continue
            scores.append(ssim(p[k], t[k], peak, mask=mk))
        if not scores:
            raise InputError(
                "protocol 'fastmri': mask has no voxels inside any slice's SSIM interior")
        ssim_value = float(np.mean(scores))
    else:
        ssim_value = ssim(p, t, peak, mask=m)
    return {"psnr": psnr(p, t, peak, mask=m), "ssim": ssim_value, "nrmse": nrmse(p, t, mask=m)}


@register_protocol(
    "brainmask",
    "As 'dualarbnet' restricted to a required mask (e.g. the brain mask, as in the "
    "CSR-dMRI tables): peak = max - min of target inside the mask; psnr, ssim "
    "(map averaged over mask voxels in the cropped interior) and nrmse over the "
    "mask. No ssim_range2.",
    requires_mask=True)
def _brainmask(p: torch.Tensor, t: torch.Tensor, m: torch.Tensor | None) -> dict[str, float]:
    assert m is not None  # enforced by requires_mask
    peak = _peak_max_minus_min(t, m, "brainmask")
    return {
        "psnr": psnr(p, t, peak, mask=m),
        "ssim": ssim(p, t, peak, mask=m),
        "nrmse": nrmse(p, t, mask=m),
    }


#: Read-only mapping of protocol name -> human-readable description.
PROTOCOLS: Mapping[str, str] = MappingProxyType(
    {name: proto.description for name, proto in _REGISTRY.items()})


def get_protocol(name: str) -> Protocol:
    """Return the :class:`Protocol` registered as ``name``; :class:`ConfigError` if unknown."""
    return _REGISTRY.lookup(name)


def evaluate_case(pred: ArrayLike, target: ArrayLike, protocol: str,
                  mask: ArrayLike | None = None) -> dict[str, float]:
    """Score one case (a 2D slice or a 3D volume) the way a named publication does.

    Args:
        pred, target: real (magnitude) images of identical shape, 2D ``(H, W)`` or 3D.
        protocol: a key of :data:`PROTOCOLS` (``'dualarbnet'``, ``'fastmri'``, ``'brainmask'``).
        mask: optional boolean array (required by ``'brainmask'``). For the other protocols it
            restricts every metric to the mask while the peak keeps the protocol's definition.

    Returns:
        ``{metric name: value}``; PSNR in dB, SSIM and NRMSE dimensionless.

    Raises:
        ConfigError: unknown protocol name.
        InputError: unusable images or mask (shape, dtype, NaN, constant target, ...).
    """
    proto = get_protocol(protocol)
    if proto.requires_mask and mask is None:
        raise InputError(f"protocol '{proto.name}' needs a mask")
    p, t, m = _prepare(pred, target, mask, ssim_ndim=True)
    return proto.compute(p, t, m)
