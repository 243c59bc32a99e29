"""Metrics, method plug-ins, the evaluation harness and its reports."""
from mrisr.evaluation.harness import EvaluateConfig, EvaluationResult, MethodSpec, evaluate
from mrisr.evaluation.methods import SRCase, SRMethod, make_method, register_method

__all__ = ["EvaluateConfig", "EvaluationResult", "MethodSpec", "evaluate", "SRCase", "SRMethod",
           "make_method", "register_method"]
