"""Reading and writing MRI data: NIfTI volumes, FSL b-tables, .mat/HDF5 slices, manifests."""
from mrisr.io.atomic import atomic_path, check_output_path, write_text_atomic
from mrisr.io.dwi import read_bval_bvec, read_bvals, read_bvecs, write_bvals, write_bvecs
from mrisr.io.manifest import Manifest, Subject, brats_manifest, load_manifest
from mrisr.io.nifti import Volume, load_nifti, make_nifti, save_nifti
from mrisr.io.slices import load_fastmri_volume, load_mat_slice, save_mat_slice

__all__ = ["atomic_path", "check_output_path", "write_text_atomic", "read_bval_bvec",
           "read_bvals", "read_bvecs", "write_bvals", "write_bvecs", "Manifest", "Subject",
           "brats_manifest", "load_manifest", "Volume", "load_nifti", "make_nifti", "save_nifti",
           "load_fastmri_volume", "load_mat_slice", "save_mat_slice"]
