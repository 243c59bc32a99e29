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
from mrisr.io.atomic import atomic_path, check_output_path, check_unlocked, format_size

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: NIfTI-1 stores each dimension as a 16-bit signed integer.
NIFTI1_MAX_DIM = 32767


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
    """Whether ``path`` ends in ``.nii`` or ``.nii.gz``, in any case (``.NII.GZ``)."""
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES)


def nifti_suffix(path: str | os.PathLike) -> str:
    """The NIfTI extension of ``path`` as written (``.nii.gz``, ``.NII``, ...); ``""`` when
    it has none."""
    name = Path(path).name
    for ext in NIFTI_SUFFIXES:
        if name.lower().endswith(ext):
            return name[-len(ext):]
    return ""


def nifti_stem(path: str | os.PathLike) -> str:
    """The file name without its NIfTI extension (any case): what its sidecar ``.json`` and
    b-tables ``.bval``/``.bvec`` are named after."""
    name = Path(path).name
    return name[:len(name) - len(nifti_suffix(name))]


def companion_path(path: str | os.PathLike, extension: str) -> Path:
    """The file named after the NIfTI ``path`` with ``extension`` (``.json``, ``.bval``):
    ``sub-01_T2w.nii.gz`` -> ``sub-01_T2w.json``."""
    p = Path(path)
    return p.with_name(nifti_stem(p) + extension)


def _same_name(a: Path, b: Path) -> bool:
    """Whether two NIfTI paths name the same image without their extensions (same folder,
    same stem): their companions are the same files."""
    try:
        same_folder = os.path.samefile(a.parent, b.parent)
    except OSError:
        same_folder = a.parent.resolve() == b.parent.resolve()
    return same_folder and os.path.normcase(nifti_stem(a)) == os.path.normcase(nifti_stem(b))


def check_output_files(path: str | os.PathLike, companions: tuple[str, ...] = (), *,
                       overwrite: bool = False, inputs: tuple = ()) -> list[Path]:
    """Check, before any work, a NIfTI output and the files written with it, named after it
    with the extensions ``companions`` (a sidecar ``.json``, b-tables ``.bval``/``.bvec``).

    The output as :func:`~mrisr.io.atomic.check_output_path` checks it (an existing file is
    refused without ``overwrite``, an input always); then each companion is refused when it
    exists (without ``overwrite``), is a folder or is being written by another run, and the
    output when it has the name of one of the NIfTI ``inputs`` up to the extension: its
    companions would then be that input's (``sub-01_T2w.json`` of ``sub-01_T2w.nii.gz``),
    which no option replaces. Returns the companions' paths."""
    out = check_output_path(path, overwrite=overwrite, inputs=inputs)
    if not is_nifti_path(out):
        raise InputError(f"{out}: output must end in .nii or .nii.gz")
    paths = [companion_path(out, ext) for ext in companions]
    if not paths:
        return paths
    for item in inputs:
        if item is not None and is_nifti_path(item) and _same_name(out, Path(item)):
            raise InputError(f"{out}: has the name of the input {item} up to the extension, so "
                             f"its {', '.join(p.name for p in paths)} would be the input's; "
                             "choose another output name")
    for companion in paths:
        if companion.is_dir():
            raise InputError(f"{companion}: is a folder, but mrisr writes this file with "
                             f"{out.name}")
        if companion.exists() and not overwrite:
            raise InputError(f"{companion}: exists, and mrisr writes this file with {out.name} "
                             "(use --overwrite to replace it)")
        check_unlocked(companion)
    return paths


#: Millimetres per spatial unit of the NIfTI header (``xyzt_units``); ``unknown`` is read as
#: mm, as every common tool does.
MM_PER_UNIT = {"mm": 1.0, "micron": 1e-3, "meter": 1e3, "unknown": 1.0}


def mm_per_unit(header) -> float:
    """Millimetres per unit of the affine of a NIfTI ``header``."""
    try:
        unit = header.get_xyzt_units()[0]
    except Exception:  # an unrecognised unit code: nibabel raises; read as unknown
        unit = "unknown"
    return MM_PER_UNIT.get(unit, 1.0)


def affine_mm(img) -> np.ndarray:
    """The voxel-to-world affine of a nibabel image in mm (headers in microns or metres are
    converted; mrisr's grids, options and messages are in mm)."""
    affine = np.array(img.affine, dtype=np.float64)
    affine[:3] *= mm_per_unit(img.header)
    return affine


#: Kinds of numpy data types (``dtype.kind``) that are refused, with the reason.
_REFUSED_KINDS = {"c": "complex data", "V": "a data type without numeric voxels"}


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
        img = _nib_open(p)
    except Exception as exc:  # nibabel raises many types for bad headers
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "data code" in reason:
            raise InputError(f"{p}: unsupported NIfTI data type ({reason.split(';')[0]})") \
                from None
        raise InputError(f"{p}: cannot read NIfTI data (truncated or corrupt file: {reason})") \
            from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{p}: not a NIfTI-1/2 image")
    dtype = img.get_data_dtype()
    if dtype.fields is not None:
        raise InputError(f"{p}: colour data ({_dtype_name(img)}); mrisr reads grey-level "
                         "images (one value per voxel)")
    if dtype.kind in _REFUSED_KINDS:
        hint = ("; mrisr reads magnitude images: save the magnitude |z| as a real image"
                if dtype.kind == "c" else "")
        raise InputError(f"{p}: {_REFUSED_KINDS[dtype.kind]} ({_dtype_name(img)}){hint}")
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


def _dtype_name(img) -> str:
    try:
        return str(img.header.get_value_label("datatype"))
    except Exception:  # an unknown code: nibabel would have refused it already
        return str(img.get_data_dtype())


def _nib_open(p: Path) -> nib.Nifti1Image:
    """nibabel's image of ``p``. nibabel finds the format of ``.nii``/``.nii.gz`` (and
    upper-case) names itself, but not of mixed-case ones (``.Nii.Gz``): those are read as a
    stream, gzip-decompressed when the name ends in ``.gz`` in any case."""
    name = p.name
    if name.endswith(NIFTI_SUFFIXES) or name.endswith(tuple(e.upper() for e in NIFTI_SUFFIXES)):
        return nib.load(str(p))
    import gzip

    stream = gzip.open(p, "rb") if name.lower().endswith(".gz") else open(p, "rb")
    first = stream.read(4)
    stream.seek(0)
    nifti2 = len(first) == 4 and nib.Nifti2Header.sizeof_hdr in (
        int.from_bytes(first, "little"), int.from_bytes(first, "big"))
    return (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_stream(stream)


def open_nifti(path: str | os.PathLike) -> nib.Nifti1Image:
    """nibabel's image of a checked NIfTI file (header read, voxels not): what
    :func:`check_nifti_header` checks, for callers that need the header (shape, affine: use
    :func:`affine_mm` for it in mm)."""
    return _open_checked(Path(path))


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
        # Values beyond float32 become inf here, and are reported below, not as numpy warnings.
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
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
        raw = _finite_magnitude(img, ~np.isfinite(data))
        if raw is not None:
            raise InputError(f"{p}: values up to {raw:.3g} in magnitude, beyond the range of "
                             f"float32 ({FLOAT32_MAX:.3g}), in which mrisr computes and "
                             "writes; rescale the image")
        raise InputError(f"{p}: contains {n_bad} NaN/Inf voxels")
    peak = float(np.abs(data).max()) if data.size else 0.0
    if peak == 0 and not allow_all_zero:
        raw = _finite_magnitude(img)
        if raw:
            raise InputError(f"{p}: values of at most {raw:.3g} in magnitude, below the "
                             f"smallest float32 ({FLOAT32_TINY:.3g}), in which mrisr computes "
                             "and writes; rescale the image")
        raise InputError(f"{p}: image is all zero")
    if peak > FLOAT32_SAFE_MAX or 0 < peak < FLOAT32_SAFE_MIN:
        raise InputError(f"{p}: largest magnitude {peak:.3g} is outside [{FLOAT32_SAFE_MIN:g}, "
                         f"{FLOAT32_SAFE_MAX:g}], where float32 arithmetic (sums over "
                         "millions of voxels, Fourier transforms) stays exact enough; rescale "
                         "the image")
    affine = img.affine
    if affine is None or not np.isfinite(affine).all() or \
            abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{p}: header has no valid voxel-to-world affine")
    return Volume(data=data, affine=affine_mm(img), header=img.header.copy(), path=p)


#: float32, in which images are computed and written: its largest and smallest normal values.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
#: Images whose largest magnitude lies outside these bounds are refused: a Fourier transform or
#: a sum over 10^8 voxels of values near 1e30 overflows float32, and values near 1e-30 lose
#: their precision in the subnormal range (an image's scale carries no information for SR;
#: rescaling it is the user's choice).
FLOAT32_SAFE_MAX = 1e30
FLOAT32_SAFE_MIN = 1e-30


def _finite_magnitude(img, where: Optional[np.ndarray] = None) -> Optional[float]:
    """The largest magnitude of the voxels (``where`` a mask) as stored, in float64, when all
    of them are finite there (values that float32 cannot hold); ``None`` otherwise."""
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        raw = np.asarray(img.dataobj, dtype=np.float64)
    raw = raw[where.reshape(raw.shape)] if where is not None else raw
    if raw.size == 0 or not np.isfinite(raw).all():
        return None
    return float(np.abs(raw).max())


#: Negative values in a magnitude image down to this fraction of its maximum are the noise and
#: ringing that reconstruction and resampling leave around zero; an image with larger ones is
#: a signed image (a phase map, a difference, an inverted image), which mrisr refuses.
NEGATIVE_TOLERANCE = 0.05


def check_magnitude(data: np.ndarray, name) -> Optional[str]:
    """The value policy: mrisr super-resolves magnitude images (values >= 0) and writes
    magnitudes. An image whose negative values go below ``NEGATIVE_TOLERANCE`` times its
    maximum (an all-negative or a signed image) is refused (:class:`InputError`); smaller
    negative values are noise around zero, and the warning returned says how many there are
    and what becomes of them (``None`` when there are none)."""
    low = float(np.min(data))
    if low >= 0:
        return None
    high = float(np.max(data))
    if high <= 0 or -low > NEGATIVE_TOLERANCE * high:
        raise InputError(f"{name}: values from {low:.4g} to {high:.4g}: a signed image, but "
                         "mrisr super-resolves magnitude images (values >= 0) and writes "
                         "magnitudes; give the magnitude image (or shift it to >= 0 yourself)")
    count = int(np.count_nonzero(data < 0))
    return (f"{name}: {count} negative voxels ({count / data.size:.2%}), down to {low:.3g} "
            f"({-low / high:.2%} of the maximum): read as noise around zero of a magnitude "
            "image; the output, a magnitude, has no negative values")


def make_nifti(data: np.ndarray, affine: np.ndarray,
               template: Optional[nib.Nifti1Header] = None) -> nib.Nifti1Image:
    """Build a float32 NIfTI-1 image whose qform and sform both equal ``affine`` (mm).

    ``template`` supplies units, intent, description and the qform/sform codes; its data type and
    scaling are replaced (float32, slope 1, intercept 0). A template in microns or metres gets
    the affine in its own unit (:data:`MM_PER_UNIT`).
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
        scale = mm_per_unit(template)
        if scale != 1.0:  # ``affine`` is in mm (load_nifti); the file keeps its own unit
            native = np.array(affine, dtype=np.float64)
            native[:3] /= scale
            img.set_qform(native, code=qcode)
            img.set_sform(native, code=scode)
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
