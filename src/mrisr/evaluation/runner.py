"""One entry point for every evaluation: :func:`run` reads a config (a YAML path or a mapping),
sends it to the harness its ``task`` names (``slices2d``: :func:`mrisr.evaluation.harness.
evaluate`; ``dmri3d``: :func:`mrisr.evaluation.dmri.evaluate_dmri`) and writes the report.
``mrisr evaluate`` is this function."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from mrisr.config import from_dict, load_yaml, merge
from mrisr.configs import packaged_config
from mrisr.precision import check_precision

__all__ = ["EvaluationRun", "run", "with_precision"]

#: Method names that run a network (the series protocol's methods name theirs in args.model).
MODEL_METHODS = ("model", "model3d", "upscale")


@dataclass
class EvaluationRun:
    """What :func:`run` did: the ``task``, the harness's ``result``
    (:class:`~mrisr.evaluation.harness.EvaluationResult` or
    :class:`~mrisr.evaluation.dmri.DmriEvaluationResult`), the ``output`` folder and the
    written files by kind (``paths["table"]``: the Markdown tables)."""

    task: str
    result: Any
    output: Path
    paths: dict


def run(config: Union[str, os.PathLike, dict, None] = None, *,
        overrides: Optional[dict] = None, output: Union[str, os.PathLike, None] = None,
        show_progress: bool = True, before: Optional[Callable[[Path], None]] = None,
        precision: Optional[str] = None, overwrite: bool = True) -> EvaluationRun:
    """Run the evaluation a config describes and write its report.

    config: a YAML path, a mapping of the same settings, or ``None`` (the embedded phantom
        evaluation, ``phantom_eval.yaml``). overrides: a nested mapping merged over it.
    output: the report folder (default: the config's ``output``). before: called with the
        output folder once the config is valid, before any work (the CLI removes stale
        temporaries there).
    precision: ``auto``, ``fp32`` or ``bf16`` for every method that runs a network (its
        ``args.precision``; :mod:`mrisr.precision`); ``None`` leaves the config's.
    overwrite: replace report files that exist in the output folder; ``False`` refuses them
        before any work (``mrisr evaluate`` without ``--overwrite``).
    """
    from mrisr.io.atomic import check_new_files

    if isinstance(config, dict):
        data, source = dict(config), "config"
    else:
        path = config if config is not None else packaged_config("phantom_eval.yaml")
        data, source = load_yaml(path), str(path)
    data = merge(data, overrides or {})
    if precision is not None:
        data = with_precision(data, check_precision(precision))
    if data.get("task") == "dmri3d":
        # 3D diffusion SR (CSR-dMRI Table 1 layout and tensor fidelity).
        from mrisr.evaluation.dmri import (DMRI_REPORT_FILES, DmriEvaluateConfig,
                                           evaluate_dmri, write_dmri_report)
        dcfg = from_dict(DmriEvaluateConfig, data, source=source)
        out = Path(output or dcfg.output)
        check_new_files([out / name for name in DMRI_REPORT_FILES], overwrite)
        if before is not None:
            before(out)
        result = evaluate_dmri(dcfg, show_progress=show_progress)
        return EvaluationRun("dmri3d", result, out, write_dmri_report(result, out))
    from mrisr.evaluation.harness import EvaluateConfig, evaluate
    from mrisr.evaluation.report import REPORT_FILES, write_report
    cfg = from_dict(EvaluateConfig, data, source=source)
    out = Path(output or cfg.output)
    check_new_files([out / name for name in REPORT_FILES], overwrite)
    if before is not None:
        before(out)
    result = evaluate(cfg, show_progress=show_progress)
    return EvaluationRun(cfg.task, result, out, write_report(result, out))


def with_precision(data: dict, precision: str) -> dict:
    """The config ``data`` with ``args.precision`` set on each method that runs a network."""
    methods = []
    for spec in data.get("methods") or []:
        if isinstance(spec, dict) and (spec.get("name") in MODEL_METHODS
                                       or "model" in (spec.get("args") or {})):
            spec = {**spec, "args": {**(spec.get("args") or {}), "precision": precision}}
        methods.append(spec)
    return {**data, "methods": methods} if "methods" in data else data
