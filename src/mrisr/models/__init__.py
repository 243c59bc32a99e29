"""Models: shared RDN encoder and implicit queries, Dual-ArbNet, LIIF; registry and presets.

Importing this package registers the architectures, their presets and the evaluation
plug-ins (so ``mrisr evaluate`` can name them).
"""
from mrisr.models.checkpoint import load_checkpoint, save_checkpoint
from mrisr.models.csr_dmri import ArSSR, CSRdMRI, PointQuery
from mrisr.models.dual_arbnet import DualArbNet, GridQuery
from mrisr.models.liif import LIIF
from mrisr.models.rdn import RDN
from mrisr.models.registry import (PRESETS, Preset, create_model, list_models,
                                   register_architecture, register_preset)
from mrisr.models import presets as _presets  # noqa: F401  (registers the presets)

register_architecture("dualarbnet")(DualArbNet)
register_architecture("liif")(LIIF)
register_architecture("csr_dmri")(CSRdMRI)
register_architecture("arssr")(ArSSR)

__all__ = ["DualArbNet", "GridQuery", "LIIF", "RDN", "PRESETS", "Preset", "create_model",
           "list_models", "load_checkpoint", "save_checkpoint", "register_architecture",
           "register_preset"]
__all__ += ["ArSSR", "CSRdMRI", "PointQuery"]
