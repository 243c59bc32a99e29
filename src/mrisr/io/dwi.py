"""FSL-style b-value and b-vector files.

``bvals``: one line of N numbers (s/mm^2). ``bvecs``: three lines of N numbers (unit gradient
directions, zero for b=0), i.e. an array of shape ``(3, N)``. Transposed ``(N, 3)`` files, as
some tools write them, are accepted on reading.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mrisr.errors import InputError
from mrisr.io.atomic import write_text_atomic


def _read_numbers(path: Path) -> np.ndarray:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        arr = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    except ValueError:
        raise InputError(f"{path}: not a whitespace-separated table of numbers") from None
    if arr.size == 0:
        raise InputError(f"{path}: file is empty")
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: contains NaN/Inf")
    return arr


def read_bvals(path: str | os.PathLike) -> np.ndarray:
    """Read b-values as a float array of shape ``(N,)``."""
    p = Path(path)
    arr = _read_numbers(p)
    if arr.ndim == 2 and 1 not in arr.shape:
        raise InputError(f"{p}: expected one row or column of b-values, got shape {arr.shape}")
    bvals = arr.reshape(-1)
    if (bvals < 0).any():
        raise InputError(f"{p}: negative b-value")
    return bvals


def read_bvecs(path: str | os.PathLike) -> np.ndarray:
    """Read b-vectors as a float array of shape ``(3, N)``."""
    p = Path(path)
    arr = _read_numbers(p)
    if arr.ndim != 2 or 3 not in arr.shape:
        raise InputError(f"{p}: expected 3 rows (or 3 columns) of b-vectors, got shape {arr.shape}")
    return arr if arr.shape[0] == 3 else arr.T


def read_bval_bvec(bval_path: str | os.PathLike, bvec_path: str | os.PathLike,
                   n_volumes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a b-value/b-vector pair and check that they agree with each other (and the series)."""
    bvals, bvecs = read_bvals(bval_path), read_bvecs(bvec_path)
    if bvecs.shape[1] != bvals.size:
        raise InputError(f"{bvec_path}: {bvecs.shape[1]} vectors but {bval_path} has "
                         f"{bvals.size} b-values")
    if n_volumes is not None and bvals.size != n_volumes:
        raise InputError(f"{bval_path}: {bvals.size} b-values but the series has "
                         f"{n_volumes} volumes")
    return bvals, bvecs


def _format_row(values: np.ndarray) -> str:
    return " ".join(f"{v:.6g}" for v in values) + "\n"


def write_bvals(path: str | os.PathLike, bvals: np.ndarray) -> None:
    write_text_atomic(path, _format_row(np.asarray(bvals, dtype=np.float64).reshape(-1)))


def write_bvecs(path: str | os.PathLike, bvecs: np.ndarray) -> None:
    arr = np.asarray(bvecs, dtype=np.float64)
    if arr.ndim != 2 or 3 not in arr.shape:
        raise InputError(f"{path}: b-vectors must have shape (3, N), got {arr.shape}")
    arr = arr if arr.shape[0] == 3 else arr.T
    write_text_atomic(path, "".join(_format_row(row) for row in arr))


def companion_paths(dwi_path: str | os.PathLike) -> tuple[Path, Path]:
    """The ``.bval``/``.bvec`` files that dcm2niix writes beside a DWI series."""
    p = Path(dwi_path)
    stem = p.name[:-7] if p.name.endswith(".nii.gz") else p.stem
    return p.with_name(stem + ".bval"), p.with_name(stem + ".bvec")
