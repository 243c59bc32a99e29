"""Applying trained models to images (whole slices now; whole volumes in `mrisr upscale`)."""
from mrisr.inference.predict import ModelMethod, full_grid_query, predict_slice

__all__ = ["ModelMethod", "full_grid_query", "predict_slice"]
