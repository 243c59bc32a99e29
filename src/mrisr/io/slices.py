"""2D slice formats used by the field besides NIfTI.

* ``.mat`` slices with the image under key ``dcm`` — the format of the Dual-ArbNet reference
  code's data (real or complex 2D arrays, MATLAB v5 via scipy or v7.3 via h5py).
* fastMRI-style HDF5 files holding ``reconstruction_rss`` of shape ``(slices, H, W)``
  (needs the optional ``h5py`` dependency: ``pip install mrisr[hdf5]``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.io

from mrisr.errors import InputError


def _check_image(arr: np.ndarray, path: Path, ndim: int) -> np.ndarray:
    if arr.ndim != ndim:
        raise InputError(f"{path}: expected a {ndim}D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: contains NaN/Inf values")
    if not np.any(arr):
        raise InputError(f"{path}: image is all zero")
    return arr


def load_mat_slice(path: str | os.PathLike, key: str = "dcm") -> np.ndarray:
    """Load one 2D slice (real float32 or complex64, shape ``(H, W)``) from a ``.mat`` file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    try:
        content = scipy.io.loadmat(str(p))
        arr = content.get(key)
    except NotImplementedError:  # MATLAB v7.3 files are HDF5
        arr = _load_hdf5_dataset(p, key, transpose=True)
    except (ValueError, OSError, TypeError) as exc:
        raise InputError(f"{p}: not a readable .mat file ({exc})") from None
    if arr is None:
        raise InputError(f"{p}: no variable '{key}' in the .mat file")
    arr = np.squeeze(np.asarray(arr))
    arr = arr.astype(np.complex64 if np.iscomplexobj(arr) else np.float32)
    return _check_image(arr, p, 2)


def save_mat_slice(path: str | os.PathLike, image: np.ndarray, key: str = "dcm") -> None:
    """Write one 2D slice in the reference code's ``.mat`` format (atomically)."""
    from mrisr.io.atomic import atomic_path
    with atomic_path(path) as tmp:
        scipy.io.savemat(str(tmp), {key: np.asarray(image)})


def _load_hdf5_dataset(path: Path, key: str, transpose: bool = False) -> np.ndarray:
    try:
        import h5py
    except ImportError:
        raise InputError(f"{path}: reading HDF5 needs h5py (pip install 'mrisr[hdf5]')") from None
    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise InputError(f"{path}: no dataset '{key}' in the HDF5 file "
                                 f"(has: {', '.join(sorted(f.keys())) or 'nothing'})")
            arr = np.asarray(f[key])
    except InputError:
        raise
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None
    if arr.dtype.names and {"real", "imag"} <= set(arr.dtype.names):
        arr = arr["real"] + 1j * arr["imag"]
    return arr.T if transpose else arr


def load_fastmri_volume(path: str | os.PathLike, key: str = "reconstruction_rss") -> np.ndarray:
    """Load a fastMRI-style HDF5 reconstruction as float32 ``(slices, H, W)``."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    arr = _load_hdf5_dataset(p, key).astype(np.float32)
    return _check_image(arr, p, 3)
