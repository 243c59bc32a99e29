"""Write a NIfTI file volume by volume, so a 4D result never has to be in memory at once.

NIfTI stores voxels in Fortran order, so each 3D volume of a 4D series is one contiguous block
after the header: the header is written first, then each volume as it is finished (gzip-
compressed on the fly for ``.nii.gz``).
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from mrisr.io.nifti import make_nifti


class StreamingNiftiWriter:
    """Write ``shape`` (3D or 4D) float32 data to ``path`` one 3D volume at a time."""

    def __init__(self, path: str | Path, shape: tuple[int, ...], affine: np.ndarray,
                 template: Optional[nib.Nifti1Header] = None):
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        header_img = make_nifti(np.zeros((1, 1, 1), np.float32), affine, template)
        header = header_img.header
        header.set_data_shape(self.shape)
        header.set_data_dtype(np.float32)
        header.set_slope_inter(1.0, 0.0)
        offset = 352  # 348-byte header + 4-byte extension flag of a single-file NIfTI-1
        header["vox_offset"] = offset
        gz = str(self.path).endswith(".gz")
        self._raw = open(self.path, "wb")
        self._f = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=1) if gz \
            else self._raw
        blob = header.binaryblock  # 348 bytes
        self._f.write(blob + b"\x00" * (offset - len(blob)))
        self._expected = self.shape[3] if len(self.shape) == 4 else 1
        self._written = 0

    def write_volume(self, volume: np.ndarray) -> None:
        if volume.shape != self.shape[:3]:
            raise ValueError(f"volume shape {volume.shape} != {self.shape[:3]}")
        if self._written >= self._expected:
            raise ValueError("all volumes already written")
        # One plane of the last axis at a time: in Fortran order the volume is its planes one
        # after another, and a whole-volume tobytes() would copy the output once more.
        for k in range(volume.shape[2]):
            self._f.write(np.asarray(volume[:, :, k], dtype="<f4").tobytes(order="F"))
        self._written += 1

    def close(self) -> None:
        if self._written != self._expected:
            self._abort()
            raise ValueError(f"{self._written} of {self._expected} volumes written")
        if self._f is not self._raw:
            self._f.close()
        self._raw.close()

    def _abort(self) -> None:
        if self._f is not self._raw:
            self._f.close()
        self._raw.close()
