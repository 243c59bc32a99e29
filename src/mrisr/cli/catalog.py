"""What the command line lists and accepts, known without importing torch.

Importing torch takes 4-9 s on a cold start, so ``mrisr models``, ``mrisr info`` and the
argument checks read the registries without it:

* the model presets from :mod:`mrisr.models.registry` (the ``mrisr.models`` package and its
  presets import no torch);
* the interpolation baselines from :mod:`mrisr.inference.selection` (no torch either);
* the degradations from the ``register_degradation("name", ...)`` calls in
  ``mrisr/degradation/__init__.py`` (that package imports torch), read with :mod:`ast`;
* the evaluation methods and metric protocols from the tuples below.

``tests/test_faults.py`` checks that every list here equals the registry it stands for.
"""
from __future__ import annotations

import ast
from pathlib import Path

import mrisr
from mrisr.inference.selection import INTERPOLATION_MODELS
from mrisr.models.registry import PRESETS, Preset, list_models
from mrisr.models.registry import weights_path as _weights_path

_PACKAGE = Path(mrisr.__file__).resolve().parent

#: Interpolation baselines (``mrisr.evaluation.methods``): usable as ``upscale --model``.
INTERPOLATIONS = tuple(INTERPOLATION_MODELS)
#: Evaluation methods: the interpolation baselines, zero-filling of a complex input's magnitude
#: (for ``upscale`` a file's input is a magnitude already) and the learned-model plug-ins.
METHODS = tuple(sorted(INTERPOLATIONS + ("kspace_zerofill_magnitude", "model", "model3d")))
#: Metric protocols (``mrisr.evaluation.metrics.PROTOCOLS``).
PROTOCOLS = ("dualarbnet", "fastmri", "brainmask")


def _registered_names(path: Path, function: str) -> list[str]:
    """The first (string) argument of every call of ``function`` in ``path``, in source
    order (decorators included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id == function
             and node.args and isinstance(node.args[0], ast.Constant)
             and isinstance(node.args[0].value, str)]
    calls.sort(key=lambda node: (node.lineno, node.col_offset))
    if not calls:
        raise LookupError(f"{path}: no call of {function}")
    return [node.args[0].value for node in calls]


def degradations() -> list[str]:
    """Names of ``mrisr.degradation.DEGRADATIONS``, in their order."""
    try:
        return _registered_names(_PACKAGE / "degradation" / "__init__.py",
                                 "register_degradation")
    except (OSError, SyntaxError, LookupError):  # registered otherwise: ask the registry
        from mrisr.degradation import DEGRADATIONS
        return list(DEGRADATIONS)


def read_presets() -> dict[str, Preset]:
    """``name -> Preset`` of every model preset (``mrisr.models.registry.PRESETS``)."""
    return dict(PRESETS)


def weights_path(name: str) -> Path:
    """The shipped checkpoint of a preset (it may not exist)."""
    return _weights_path(name)


def shipped_presets() -> list[str]:
    return list_models(pretrained=True)
