"""What the command line lists and accepts, known without importing torch.

The registries themselves live in modules that import torch (4-9 s on a cold start), so
``mrisr models``, ``mrisr info`` and the argument checks read them here instead:

* the degradations from the ``DEGRADATIONS`` literal in ``mrisr/degradation/__init__.py``;
* the model presets by running ``mrisr/models/registry.py`` and ``presets.py`` (neither imports
  torch) under a bare stand-in for the ``mrisr.models`` package;
* the evaluation methods and metric protocols from the tuples below.

``tests/test_faults.py`` checks that every list here equals the registry it stands for.
"""
from __future__ import annotations

import ast
import importlib
import sys
import types
from pathlib import Path

import mrisr

_PACKAGE = Path(mrisr.__file__).resolve().parent

#: Interpolation baselines (``mrisr.evaluation.methods``): usable as ``upscale --model``.
INTERPOLATIONS = ("nearest", "linear", "cubic", "kspace_zerofill")
#: Evaluation methods: the interpolation baselines and the learned-model plug-ins.
METHODS = tuple(sorted(INTERPOLATIONS + ("model", "model3d")))
#: Metric protocols (``mrisr.evaluation.metrics.PROTOCOLS``).
PROTOCOLS = ("dualarbnet", "fastmri", "brainmask")


def _literal_dict_keys(path: Path, name: str) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and \
                isinstance(node.value, ast.Dict):
            return [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
    raise LookupError(f"{path}: no literal dict {name}")


def degradations() -> list[str]:
    """Names of ``mrisr.degradation.DEGRADATIONS``, in their order."""
    try:
        return _literal_dict_keys(_PACKAGE / "degradation" / "__init__.py", "DEGRADATIONS")
    except (OSError, SyntaxError, LookupError):  # not a literal any more: ask the registry
        from mrisr.degradation import DEGRADATIONS
        return list(DEGRADATIONS)


def read_presets() -> dict:
    """``name -> Preset`` of every model preset (``mrisr.models.registry.PRESETS``)."""
    real = sys.modules.get("mrisr.models")
    if real is not None and not getattr(real, "_mrisr_stand_in", False):
        from mrisr.models.registry import PRESETS
        return dict(PRESETS)
    stand_in = types.ModuleType("mrisr.models")
    stand_in.__path__ = [str(_PACKAGE / "models")]
    stand_in._mrisr_stand_in = True
    sys.modules["mrisr.models"] = stand_in
    try:
        importlib.import_module("mrisr.models.presets")
        return dict(sys.modules["mrisr.models.registry"].PRESETS)
    finally:
        # The real package (with the architectures) is imported normally when needed.
        for name in [n for n in sys.modules if n == "mrisr.models" or
                     n.startswith("mrisr.models.")]:
            del sys.modules[name]
        if getattr(mrisr, "models", None) is stand_in:
            del mrisr.models


def weights_path(name: str) -> Path:
    """The shipped checkpoint of a preset (it may not exist)."""
    return _PACKAGE / "weights" / f"{name}.pt"


def shipped_presets() -> list[str]:
    return sorted(n for n in read_presets() if weights_path(n).exists())
