"""Which model upscales an input: the defaults, the interpolation baselines, the names
``mrisr upscale --model`` accepts, and the ``(model, description)`` pack the upscaling
functions take.

Importing this module needs no torch (names are checked before any work); loading a model
does (:func:`load_upscale_model`, through :func:`mrisr.models.loading.load_model`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mrisr.errors import InputError

__all__ = ["INTERPOLATION_MODELS", "VolumeInterpolation", "DEFAULT_MODEL", "DEFAULT_MODEL_FALLBACK",
           "DEFAULT_MODEL_NO_REF", "DEFAULT_MODEL_NO_REF_FALLBACK", "REFERENCE_CHECK_MODEL",
           "DEFAULT_DMRI_MODEL", "DEFAULT_DMRI_MODEL_NO_T1", "DMRI_MODELS_ABOVE_CUBIC",
           "SERIES_FALLBACK",
           "default_model_name", "is_series_file", "trained_with_synthetic_references",
           "check_model_name", "load_upscale_model"]

#: Interpolation baselines usable as ``--model`` (label of the evaluation methods -> kind of
#: :func:`mrisr.degradation.interpolation.interpolate`).
INTERPOLATION_MODELS = {"nearest": "nearest", "linear": "linear", "cubic": "cubic",
                        "kspace_zerofill": "sinc"}

#: Default 2D models with a reference (in-plane and thick slices alike) and without one, each
#: with the model used where its weights are not installed. dualarbnet_robust (trained for
#: hours on brats pairs, synthetic contrasts and three whole heads) beat dualarbnet_s by
#: +0.9 / +0.5 / +0.4 dB on a whole head, +1.7 dB at x4 on a template pair no model saw and
#: +1.5 / +1.7 / +1.2 dB on the cervical spine, where the reference now adds instead of costs;
#: it is 0.17 / 0.27 dB behind dualarbnet_s at x4 / x8 on the brats test patients like
#: dualarbnet_s's training data (docs/benchmarks/cross_dataset.md, "dualarbnet_robust, trained
#: for hours: the default with a reference"). liif_robust is liif_s given the same recipe: the
#: same trade without a reference (same document, "liif_robust: the default without a
#: reference").
DEFAULT_MODEL = "dualarbnet_robust"
DEFAULT_MODEL_FALLBACK = "dualarbnet_s"
DEFAULT_MODEL_NO_REF = "liif_robust"
DEFAULT_MODEL_NO_REF_FALLBACK = "liif_s"
#: The model without a reference that upscales the reference back in the reference check
#: (:func:`mrisr.inference.calibration.reference_check`): its threshold was set with liif_s's
#: detail, and liif_robust, which adds less of it on smooth images, does not trip it on the
#: template where the check pays for dualarbnet_s.
REFERENCE_CHECK_MODEL = "liif_s"
#: Default model of a 4D (diffusion) series with a T1w reference, when its weights are shipped
#: and it is in DMRI_MODELS_ABOVE_CUBIC.
DEFAULT_DMRI_MODEL = "csr_dmri_s"
#: Default model of a 4D series without a T1w, when its weights are shipped and
#: DEFAULT_DMRI_MODEL's were not trained with T1w dropout (otherwise SERIES_FALLBACK).
DEFAULT_DMRI_MODEL_NO_T1 = "csr_dmri_s_m1"
#: 3D presets whose shipped weights beat cubic interpolation on DWI series of scanners they
#: were not trained on (issue 14's bar: x2, x3, x4 and x2.4 on at least six held-out series).
#: Only these become the default of a 4D series; otherwise a series is upscaled by
#: SERIES_FALLBACK. None does yet: on the held-out series of docs/BENCHMARKS.md ("Today's
#: defaults on other scanners") the shipped csr_dmri_s is 0.13 dB below cubic at x2 with lower
#: SSIM at every scale, and the slice-wise liif_s 0.6-0.9 dB below cubic.
DMRI_MODELS_ABOVE_CUBIC: tuple[str, ...] = ()
SERIES_FALLBACK = "cubic"


class VolumeInterpolation:
    """An interpolation baseline as a model: the whole 3D volume interpolated onto the output
    grid, exactly as the evaluation methods of the same names (magnitude, clipped at 0)."""

    uses_reference = False

    def __init__(self, name: str):
        self.name = name
        self.kind = INTERPOLATION_MODELS[name]

    def __call__(self, volume: np.ndarray, out_shape: Sequence[int],
                 out: Optional[np.ndarray] = None) -> np.ndarray:
        from mrisr.data.intensity import to_magnitude
        from mrisr.degradation.interpolation import interpolate

        result = to_magnitude(interpolate(volume, tuple(out_shape), self.kind))
        if out is None:
            return result.astype(np.float32, copy=False)
        out[...] = result
        return out


def _shipped_with_t1_dropout(name: str) -> bool:
    """Whether the shipped weights of ``name`` were trained with T1w dropout (the training
    config beside them says ``dmri.t1_dropout`` > 0), so that they also serve without a T1w."""
    import yaml

    from mrisr.models.registry import weights_path

    try:
        cfg = yaml.safe_load(weights_path(name).with_suffix(".yaml").read_text()) or {}
        return float((cfg.get("dmri") or {}).get("t1_dropout") or 0.0) > 0
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return False


def default_model_name(has_reference: bool, series: bool = False) -> str:
    """The model of ``mrisr upscale`` without ``--model``: for a 4D ``series``, the shipped 3D
    diffusion model that fits (with or without a T1w reference) when it is one of
    :data:`DMRI_MODELS_ABOVE_CUBIC`, else :data:`SERIES_FALLBACK`; for a 3D volume
    :data:`DEFAULT_MODEL` with a reference and :data:`DEFAULT_MODEL_NO_REF` without (their
    ``*_FALLBACK`` where the weights are not installed)."""
    from mrisr.models.registry import weights_path

    def shipped(name: str) -> bool:
        return name in DMRI_MODELS_ABOVE_CUBIC and weights_path(name).exists()

    if series and has_reference and shipped(DEFAULT_DMRI_MODEL):
        return DEFAULT_DMRI_MODEL
    if series and not has_reference:
        if shipped(DEFAULT_DMRI_MODEL) and _shipped_with_t1_dropout(DEFAULT_DMRI_MODEL):
            return DEFAULT_DMRI_MODEL
        if shipped(DEFAULT_DMRI_MODEL_NO_T1):
            return DEFAULT_DMRI_MODEL_NO_T1
    if series:
        return SERIES_FALLBACK
    preferred, fallback = ((DEFAULT_MODEL, DEFAULT_MODEL_FALLBACK) if has_reference else
                           (DEFAULT_MODEL_NO_REF, DEFAULT_MODEL_NO_REF_FALLBACK))
    return preferred if weights_path(preferred).exists() else fallback


def is_series_file(path: str | os.PathLike) -> bool:
    """Whether a NIfTI file holds a 4D series of several volumes (reads the header only;
    ``False`` for unreadable files, which :func:`~mrisr.inference.upscale.upscale_file` then
    reports)."""
    from mrisr.io.nifti import open_nifti

    try:
        shape = open_nifti(path).shape
    except InputError:  # the real load reports it
        return False
    return len(shape) == 4 and shape[3] > 1


def _not_found(name: str) -> InputError:
    from mrisr.models.registry import list_models

    return InputError(f"{name}: model not found; give --model a preset with weights ("
                      f"{', '.join(list_models(pretrained=True))}), an interpolation ("
                      f"{', '.join(INTERPOLATION_MODELS)}) or the path of a checkpoint")


def check_model_name(name: Optional[str]) -> None:
    """``--model`` before any work (and without torch): an interpolation, a preset with
    shipped weights or an existing file; ``None`` (the default model) passes."""
    from mrisr.models.registry import PRESETS, weights_path

    if name is None or name in INTERPOLATION_MODELS:
        return
    if name in PRESETS:
        if not weights_path(name).exists():
            raise InputError(f"model '{name}' has no shipped weights; give --model a "
                             "checkpoint path (see 'mrisr models' for the shipped ones)")
        return
    if not Path(name).is_file():
        raise _not_found(name)


def trained_with_synthetic_references(train_config: dict) -> bool:
    """Whether a 2D model's training config (its checkpoint's) replaced references by random
    remappings of the images (``synthetic`` > 0, or a source of ``kind: images``, which always
    does: :class:`mrisr.training.config.SourceSpec`)."""
    data = (train_config or {}).get("data") or {}
    sources = [data, *(data.get("sources") or [])]
    return any(float((source or {}).get("synthetic") or 0) > 0 or
               (source or {}).get("kind") == "images" for source in sources)


def load_upscale_model(name: Optional[str], has_reference: bool, series: bool = False) -> tuple:
    """The ``(model, description)`` pack of :func:`~mrisr.inference.upscale.upscale`: an
    interpolation baseline, or a preset with shipped weights or a checkpoint path resolved by
    :func:`mrisr.models.loading.load_model`; the description is what the sidecar records.
    Without ``name``, the default for the input (``series``: a 4D series)."""
    from mrisr.models.loading import load_model
    from mrisr.models.registry import PRESETS

    chosen = name
    name = name or default_model_name(has_reference, series)
    if name in INTERPOLATION_MODELS:
        desc = {"model": name, "architecture": "interpolation", "code_version": None,
                "input": "magnitude", "t1_registered_in_training": False}
        if chosen is None and series:
            desc["note"] = (f"4D series: {name} interpolation, since no shipped model beats it "
                            "on DWI series of scanners it was not trained on "
                            "(docs/BENCHMARKS.md); --model csr_dmri_s for the T1w-guided 3D "
                            "model")
        return VolumeInterpolation(name), desc
    if name not in PRESETS and not Path(name).exists():
        raise _not_found(name)
    loaded = load_model(name)
    # A 3D model reads the T1w as placed in training: registered to the mean b=0 or not; one
    # trained with T1w dropout also runs without it (a zero T1w, as in training).
    dmri = loaded.train_config.get("dmri") or {}
    registered = bool(dmri.get("register", False))
    t1_dropout = float(dmri.get("t1_dropout", 0.0) or 0.0)
    if loaded.uses_reference and not has_reference and not t1_dropout:
        raise InputError(f"model '{name}' needs a reference image: give one with --ref, or "
                         "leave out --model for the default without a reference")
    synthetic = trained_with_synthetic_references(loaded.train_config)
    return loaded.model, {"model": name, "architecture": loaded.metadata["model"],
                          "code_version": loaded.metadata.get("code_version"),
                          "input": loaded.input_kind, "t1_registered_in_training": registered,
                          "t1_dropout": t1_dropout, "synthetic_references": synthetic}
