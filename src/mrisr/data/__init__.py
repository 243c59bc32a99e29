"""Sample data (the embedded phantom) and datasets of subject volumes."""
from mrisr.data.datasets import DatasetSpec, SubjectVolumes, load_subjects
from mrisr.data.phantom import (BrainPhantom, DwiPhantom, make_brain_phantom,
                                make_brain_phantom_2d, make_dwi_phantom, write_phantom)

__all__ = ["DatasetSpec", "SubjectVolumes", "load_subjects", "BrainPhantom", "DwiPhantom",
           "make_brain_phantom", "make_brain_phantom_2d", "make_dwi_phantom", "write_phantom"]
