"""Applying trained models to images: 2D models slice by slice, 3D models (CSR-dMRI family) to
whole volumes; ``mrisr upscale`` on NIfTI files, folders and lists of them.

* :mod:`~mrisr.inference.predict`: a 2D model on whole 2D images;
* :mod:`~mrisr.inference.upscale`: NIfTI volumes and series in world space
  (:func:`~mrisr.inference.upscale.upscale`, :func:`~mrisr.inference.upscale.upscale_file`);
* :mod:`~mrisr.inference.volume3d`: 3D models on whole volumes;
* :mod:`~mrisr.inference.batch`: folders and list files (:func:`upscale_batch`);
* :mod:`~mrisr.inference.selection`: which model runs.

Inference knows nothing of evaluation (the evaluation methods that wrap these functions are
:mod:`mrisr.evaluation.model_methods`). Importing this package needs no torch: the batch API
checks its inputs first; the torch-backed names below are imported on first use.
"""
import importlib

from mrisr.inference.batch import BatchSummary, UpscaleBatch, UpscaleJob, upscale_batch

_LAZY = {"full_grid_query": "predict", "predict_slice": "predict", "predict_slices": "predict",
         "VolumeUpscaler": "volume3d", "SeriesUpscaler3D": "volume3d"}


def __getattr__(name: str):
    """The torch-backed names of ``__all__`` (not the submodules), imported when asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module '{__name__}' has no attribute '{name}'")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = ["BatchSummary", "UpscaleBatch", "UpscaleJob", "upscale_batch", "full_grid_query",
           "predict_slice", "predict_slices", "VolumeUpscaler", "SeriesUpscaler3D"]
