"""The demo on the embedded default data (no downloads, no external files).

Evaluates the registered methods on the generated multi-contrast phantom (T2w target, T1w
reference, k-space-cropped input) and writes the tables, per-case CSV and figures.
"""
from __future__ import annotations

from pathlib import Path

from mrisr.config import from_dict, load_yaml
from mrisr.configs import packaged_config
from mrisr.evaluation.harness import EvaluateConfig, evaluate
from mrisr.evaluation.report import write_report

DEFAULT_OUTPUT = "mrisr-demo"


def run_demo(output: str | Path = DEFAULT_OUTPUT, show_progress: bool = True) -> dict[str, Path]:
    """Run the embedded-default evaluation; returns the written files by kind."""
    path = packaged_config("phantom_eval.yaml")
    cfg = from_dict(EvaluateConfig, load_yaml(path), source=str(path))
    result = evaluate(cfg, show_progress=show_progress)
    return write_report(result, Path(output))
