"""FSL-style b-value and b-vector files.

``bvals``: one line of N numbers (s/mm^2). ``bvecs``: three lines of N numbers (unit gradient
directions, zero for b=0), i.e. an array of shape ``(3, N)``. Transposed ``(N, 3)`` files, as
some tools write them, are accepted on reading.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from mrisr.errors import InputError
from mrisr.io.atomic import write_text_atomic
from mrisr.io.nifti import companion_path


#: Tolerance on the length of a b-vector: unit vectors (1 +- this, what rounding to a few
#: decimals leaves) or zero vectors (at most this long, written for b=0 volumes).
UNIT_TOLERANCE = 0.05


def _read_numbers(path: Path) -> np.ndarray:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a text file of numbers")
    try:
        rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
        arr = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    except (ValueError, UnicodeDecodeError):  # words, ragged rows, binary content
        raise InputError(f"{path}: not a whitespace-separated table of numbers") from None
    if arr.size == 0:
        raise InputError(f"{path}: file is empty")
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: contains NaN/Inf")
    return arr


def read_bvals(path: str | os.PathLike, n_volumes: int | None = None) -> np.ndarray:
    """Read b-values as a float array of shape ``(N,)``: finite, >= 0, and ``n_volumes`` of
    them when given."""
    p = Path(path)
    arr = _read_numbers(p)
    if arr.ndim == 2 and 1 not in arr.shape:
        raise InputError(f"{p}: expected one row or column of b-values, got shape {arr.shape}")
    bvals = arr.reshape(-1)
    if (bvals < 0).any():
        raise InputError(f"{p}: negative b-value")
    _check_count(p, bvals.shape[0], "b-values", n_volumes)
    return bvals


def read_bvecs(path: str | os.PathLike, n_volumes: int | None = None) -> np.ndarray:
    """Read b-vectors as a float array of shape ``(3, N)``: finite, each a unit vector or
    zero (:data:`UNIT_TOLERANCE`), and ``n_volumes`` of them when given."""
    p = Path(path)
    arr = _read_numbers(p)
    if arr.ndim != 2 or 3 not in arr.shape:
        raise InputError(f"{p}: expected 3 rows (or 3 columns) of b-vectors, got shape {arr.shape}")
    bvecs = arr if arr.shape[0] == 3 else arr.T
    length = np.linalg.norm(bvecs, axis=0)
    bad = np.flatnonzero((length > UNIT_TOLERANCE) & (np.abs(length - 1) > UNIT_TOLERANCE))
    if bad.size:
        raise InputError(f"{p}: b-vector {bad[0] + 1} has length {length[bad[0]]:.4g}; "
                         "expected unit vectors (or zero for b=0)")
    _check_count(p, bvecs.shape[1], "b-vectors", n_volumes)
    return bvecs


def _check_count(path: Path, count: int, what: str, n_volumes: int | None) -> None:
    if n_volumes is not None and count != n_volumes:
        raise InputError(f"{path}: {count} {what} but the series has {n_volumes} volumes")


def read_bval_bvec(bval_path: str | os.PathLike, bvec_path: str | os.PathLike,
                   n_volumes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a b-value/b-vector pair and check that they agree with each other (and the series)."""
    bvals = read_bvals(bval_path, n_volumes)
    bvecs = read_bvecs(bvec_path, n_volumes)
    if bvecs.shape[1] != bvals.size:
        raise InputError(f"{bvec_path}: {bvecs.shape[1]} vectors but {bval_path} has "
                         f"{bvals.size} b-values")
    return bvals, bvecs


def series_b_tables(series_path: str | os.PathLike, n_volumes: int
                    ) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """The b-values ``(N,)`` and b-vectors ``(3, N)`` beside a series of ``n_volumes``
    volumes (:func:`b_table_files`), each ``None`` when its file is absent. Every path that
    reads or copies a series' b-tables (upscaling of any kind, degrading, evaluation,
    training) checks them here or in :func:`read_bval_bvec`: counts, finite numbers, shape
    ``3 x N``, unit vectors or zero."""
    bval, bvec = b_table_files(series_path)
    if bval is not None and bvec is not None:
        return read_bval_bvec(bval, bvec, n_volumes)
    return (read_bvals(bval, n_volumes) if bval is not None else None,
            read_bvecs(bvec, n_volumes) if bvec is not None else None)


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
    """The ``.bval``/``.bvec`` names that dcm2niix writes beside a DWI series (the series'
    name without its NIfTI extension, in any case)."""
    return companion_path(dwi_path, ".bval"), companion_path(dwi_path, ".bvec")


def b_table_files(dwi_path: str | os.PathLike) -> tuple[Optional[Path], Optional[Path]]:
    """The ``.bval`` and ``.bvec`` files beside a series that exist (their extensions in any
    case: ``DWI.BVAL`` too), ``None`` for each that does not."""
    found = []
    for path in companion_paths(dwi_path):
        if not path.exists():
            stem, ext = path.stem, path.suffix
            try:
                variants = sorted(q for q in path.parent.iterdir() if q.stem == stem
                                  and q.suffix.lower() == ext and q.is_file())
            except OSError:
                variants = []
            path = variants[0] if variants else None
        found.append(path)
    return found[0], found[1]
