"""Models: the declared interface (:mod:`~mrisr.models.base`), the shared RDN encoder and
implicit queries, Dual-ArbNet, LIIF, CSR-dMRI, ArSSR; registry, presets and loading.

Importing this package registers the presets and needs no torch (``mrisr models`` lists them
at once); the model classes and the loaders (:mod:`mrisr.models.loading`, which registers the
architectures) are imported on first use of their names here.
"""
import importlib

from mrisr.models import presets as _presets  # noqa: F401  (registers the presets)
from mrisr.models.registry import (ARCHITECTURES, PRESETS, Preset, list_models,
                                   register_architecture, register_preset, weights_path)

_LAZY = {
    "SRModel": "base", "ReferenceUse": "base",
    "build_architecture": "loading", "create_model": "loading", "load_checkpoint": "loading",
    "load_model": "loading", "LoadedCheckpoint": "loading", "LoadedModel": "loading",
    "save_checkpoint": "checkpoint",
    "DualArbNet": "dual_arbnet", "GridQuery": "dual_arbnet", "LIIF": "liif", "RDN": "rdn",
    "ArSSR": "csr_dmri", "CSRdMRI": "csr_dmri", "PointQuery": "csr_dmri",
}


def __getattr__(name: str):
    """The torch-backed names of ``__all__``, imported when first asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module '{__name__}' has no attribute '{name}'")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = ["ARCHITECTURES", "PRESETS", "Preset", "list_models", "register_architecture",
           "register_preset", "weights_path", "SRModel", "ReferenceUse", "build_architecture",
           "create_model", "load_checkpoint", "load_model", "LoadedCheckpoint", "LoadedModel",
           "save_checkpoint", "DualArbNet", "GridQuery", "LIIF", "RDN", "ArSSR", "CSRdMRI",
           "PointQuery"]
