"""NIfTI input/output with nibabel: validated loading and float32, atomically written output.

Loaded data keep nibabel's array layout (voxel axes first, e.g. ``(X, Y, Z)`` or
``(X, Y, Z, N)``). Written files always carry a float32 data type with scale slope 1 (so SR
output is never silently quantised to the input's int16), a qform and sform that both equal the
given affine, and the input's spatial/temporal units when a template header is given.
"""
from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from mrisr.errors import InputError
from mrisr.io.atomic import atomic_path, format_size

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Volume:
    """A loaded image: ``data`` (float32, voxel axes first), ``affine`` (4x4 voxel->world, mm)
    and the original ``header`` (kept for units and descriptive fields) and ``path``."""

    data: np.ndarray
    affine: np.ndarray
    header: Optional[nib.Nifti1Header] = None
    path: Optional[Path] = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[:3])

    @property
    def zooms(self) -> np.ndarray:
        from mrisr.grid import voxel_sizes
        return voxel_sizes(self.affine)


def is_nifti_path(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES)


#: deflate compresses by at most about 1032:1, so a ``.nii.gz`` file of ``n`` bytes cannot
#: hold more than about this many times ``n`` bytes of voxels.
MAX_GZIP_RATIO = 1100


def _open_checked(p: Path) -> nib.Nifti1Image:
    """nibabel's image of ``p`` (header read, no data), after checking that the data it
    describes can be in the file."""
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, expected a NIfTI file")
    if not is_nifti_path(p):
        raise InputError(f"{p}: not a NIfTI file (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(p))
    except Exception as exc:  # nibabel raises many types for bad headers
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{p}: cannot read NIfTI data (truncated or corrupt file: {reason})") \
            from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{p}: not a NIfTI-1/2 image")
    shape = tuple(int(n) for n in img.shape)
    if not shape or any(n < 1 for n in shape):
        raise InputError(f"{p}: header describes an empty image (shape {shape})")
    # Python integers: no overflow whatever the header claims.
    need = math.prod(shape) * img.get_data_dtype().itemsize + int(img.header.get_data_offset())
    size = p.stat().st_size
    if p.name.lower().endswith(".gz"):
        if need > size * MAX_GZIP_RATIO + 65536:
            raise InputError(f"{p}: corrupt header: it describes {shape} voxels "
                             f"({format_size(need)}), more than a compressed file of "
                             f"{format_size(size)} can hold")
    elif need > size:
        raise InputError(f"{p}: cannot read NIfTI data (truncated or corrupt file: the header "
                         f"describes {shape} voxels ({format_size(need)}) but the file has "
                         f"{format_size(size)})")
    return img


def check_nifti_header(path: str | os.PathLike) -> tuple[int, ...]:
    """Check a NIfTI file without reading its voxels: it exists, is NIfTI, and the data its
    header describes fit in the file (a header claiming huge dimensions over little data is
    refused before anything is allocated). Returns the data shape."""
    return tuple(int(n) for n in _open_checked(Path(path)).shape)


def load_nifti(path: str | os.PathLike, ndim: tuple[int, ...] = (3,),
               allow_all_zero: bool = False) -> Volume:
    """Load and validate a NIfTI file.

    Parameters
    ----------
    path: a ``.nii`` or ``.nii.gz`` file.
    ndim: accepted numbers of dimensions after dropping trailing singleton axes beyond the
        third (e.g. ``(3,)`` for a volume, ``(3, 4)`` for a volume or a diffusion series,
        ``(2, 3)`` to accept a single 2D slice too).
    allow_all_zero: accept an image without any non-zero voxel.

    Raises :class:`InputError` with a one-line message naming the file when the file is missing,
    not NIfTI, truncated, of the wrong dimensionality, contains NaN/Inf, or is all zero.
    """
    p = Path(path)
    img = _open_checked(p)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (EOFError, zlib.error, OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{p}: cannot read NIfTI data (truncated or corrupt file: {reason})") \
            from None
    except MemoryError:
        raise InputError(f"{p}: not enough memory to load {img.shape} voxels") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 3 and 2 in ndim and 3 not in ndim and data.shape[2] == 1:
        data = data[..., 0]
    if data.ndim not in ndim:
        want = " or ".join(f"{n}D" for n in ndim)
        raise InputError(f"{p}: expected a {want} image, got shape {data.shape}")
    if not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise InputError(f"{p}: contains {n_bad} NaN/Inf voxels")
    if not allow_all_zero and not np.any(data):
        raise InputError(f"{p}: image is all zero")
    affine = img.affine
    if affine is None or not np.isfinite(affine).all() or \
            abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{p}: header has no valid voxel-to-world affine")
    return Volume(data=data, affine=np.asarray(affine, dtype=np.float64),
                  header=img.header.copy(), path=p)


def make_nifti(data: np.ndarray, affine: np.ndarray,
               template: Optional[nib.Nifti1Header] = None) -> nib.Nifti1Image:
    """Build a float32 NIfTI-1 image whose qform and sform both equal ``affine``.

    ``template`` supplies units, intent, description and the qform/sform codes; its data type and
    scaling are replaced (float32, slope 1, intercept 0).
    """
    arr = np.asarray(data, dtype=np.float32)
    header = nib.Nifti1Header()
    qcode, scode = 1, 1
    if template is not None:
        header = template.copy() if isinstance(template, nib.Nifti1Header) else header
        qcode = int(template["qform_code"]) or 1
        scode = int(template["sform_code"]) or 1
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64), header=header)
    img.set_data_dtype(np.float32)
    img.header.set_slope_inter(1.0, 0.0)
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    if template is None:
        img.header.set_xyzt_units("mm", "sec")
    else:
        img.header.set_xyzt_units(*template.get_xyzt_units())
    return img


def save_nifti(data: np.ndarray, affine: np.ndarray, path: str | os.PathLike,
               template: Optional[nib.Nifti1Header] = None, replace: bool = True) -> Path:
    """Write ``data`` as a float32 NIfTI file atomically (temporary file + rename);
    ``replace=False`` refuses to replace a file that exists when the new one is complete."""
    out = Path(path)
    if not is_nifti_path(out):
        raise InputError(f"{out}: output must end in .nii or .nii.gz")
    img = make_nifti(data, affine, template)
    with atomic_path(out, replace=replace) as tmp:
        nib.save(img, str(tmp))
    return out
