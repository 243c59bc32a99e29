"""Applying trained models to images: 2D models slice by slice, 3D models (CSR-dMRI family) to
whole volumes; ``mrisr upscale`` on NIfTI files. Importing registers the evaluation methods
``model`` (2D) and ``model3d`` (3D)."""
from mrisr.inference.predict import ModelMethod, full_grid_query, predict_slice
from mrisr.inference.volume3d import VolumeModelMethod, VolumeUpscaler

__all__ = ["ModelMethod", "full_grid_query", "predict_slice", "VolumeModelMethod",
           "VolumeUpscaler"]
