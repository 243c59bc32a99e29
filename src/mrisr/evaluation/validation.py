"""Validation during training (``validation.every``): the shared 2D evaluation of the model
being trained, against cubic interpolation.

Training knows nothing of evaluation; whoever starts a run (``mrisr train``) builds the
validator here and passes it to :func:`mrisr.training.train`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mrisr.config import from_dict
from mrisr.evaluation.harness import EvaluateConfig, evaluate
from mrisr.evaluation.model_methods import ModelMethod

Validator = Callable[[nn.Module, torch.device], dict]


def slice_validator(settings: dict, input_kind: str = "magnitude") -> Validator:
    """``validate(model, device) -> {"psnr", "ssim"}``: the mean PSNR and SSIM of ``model``
    over the evaluation ``settings`` (the keys of an evaluation config; by default the
    embedded phantom, cubic interpolation alongside, no figure). ``input_kind``: what the
    model reads (the training config's ``data.input``). The settings are checked now."""
    cfg = from_dict(EvaluateConfig, {"methods": [{"name": "cubic"}], "figure_scale": None,
                                     **settings}, source="validation")

    def validate(model: nn.Module, device: torch.device) -> dict:
        method = ModelMethod(model=model, device=str(device), input_kind=input_kind)
        result = evaluate(cfg, methods={"model": method}, show_progress=False)
        return {"psnr": sum(r["psnr"] for r in result.rows) / len(result.rows),
                "ssim": sum(r["ssim"] for r in result.rows) / len(result.rows)}
    return validate
