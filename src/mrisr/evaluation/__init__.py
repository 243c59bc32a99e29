"""Metrics, method plug-ins, the evaluation harnesses and their reports.

:func:`run` is the entry point (a config path or mapping -> the harness its ``task`` names ->
the report). Importing this package registers every evaluation method, the interpolation
baselines (:mod:`~mrisr.evaluation.methods`) and the trained models
(:mod:`~mrisr.evaluation.model_methods`).
"""
from mrisr.evaluation.harness import EvaluateConfig, EvaluationResult, MethodSpec, evaluate
from mrisr.evaluation.methods import SRCase, SRMethod, make_method, register_method
from mrisr.evaluation.model_methods import ModelMethod, VolumeModelMethod
from mrisr.evaluation.runner import EvaluationRun, run

__all__ = ["EvaluateConfig", "EvaluationResult", "MethodSpec", "evaluate", "SRCase", "SRMethod",
           "make_method", "register_method", "ModelMethod", "VolumeModelMethod",
           "EvaluationRun", "run"]
