"""Trained models as evaluation methods: ``model`` (2D models, slice by slice or whole volumes
through ``mrisr upscale``'s path) and ``model3d`` (the CSR-dMRI family on attenuation volumes).

They apply models through :mod:`mrisr.inference` exactly as ``mrisr upscale`` does; the
inference package knows nothing of evaluation.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from mrisr.devices import select_device
from mrisr.errors import InputError
from mrisr.evaluation.methods import SRCase, SRMethod, register_method
from mrisr.inference.predict import predict_slice
from mrisr.inference.selection import trained_with_synthetic_references
from mrisr.inference.volume3d import DEFAULT_CHUNK, DEFAULT_TILE, VolumeUpscaler, is_volume_model
from mrisr.models.loading import load_model
from mrisr.precision import resolve_precision

__all__ = ["ModelMethod", "VolumeModelMethod"]


@register_method("model")
class ModelMethod(SRMethod):
    """A trained model as an evaluation method.

    model: a preset with shipped weights (``"dualarbnet_s"``), a checkpoint path, or an
    ``nn.Module`` (used during training). input_kind: ``magnitude`` or ``complex``; read from
    the checkpoint's training config when available.
    adapt: test-time adaptation steps (:mod:`mrisr.training.adapt`): before the slices of one
    degraded scan are run, a copy of the model is fine-tuned on pairs made from them (0: off;
    ``"auto"``: as ``mrisr upscale`` decides it, 3D cases only, 2D cases do not adapt).
    consistency: data-consistency projection of each output with its input
    (:func:`mrisr.degradation.consistency.project`; ``none`` leaves outputs as the model gives).
    register: 3D cases: the reference is registered to the input as by ``mrisr upscale
    --register`` (``on``/``True``, ``off``/``False`` or ``auto``, the default of ``mrisr
    upscale``; slices: see ``dataset.register_reference``). calibrate: 3D cases, the detail
    gain of ``mrisr upscale --calibrate`` (``on``, ``off``, the default, or ``auto``, that of
    ``mrisr upscale``; :mod:`mrisr.inference.calibration`). precision: the network's
    arithmetic, ``auto`` (as ``mrisr upscale``), ``fp32`` or ``bf16`` (:mod:`mrisr.precision`).
    synthetic_references: whether the model counts as trained with synthetic references, which
    turns the reference check off (:func:`mrisr.inference.decisions.reference_check_applies`);
    ``None``: as its training config says. reference_transfer: with a reference, move the output
    towards the reference's locally fitted detail as ``mrisr upscale --reference-transfer``
    does (``off``, the default, ``auto``, ``on`` or a weight;
    :mod:`mrisr.inference.reference_transfer`); 2D cases after the projection, as one slice.
    2D cases run through :func:`~mrisr.inference.predict.predict_slice`; 3D cases (``mode:
    volume``) through :func:`mrisr.inference.upscale.upscale`, exactly as ``mrisr upscale``
    runs a NIfTI volume.
    """

    def __init__(self, model: Union[str, nn.Module] = "dualarbnet_s", device: str = "auto",
                 input_kind: Optional[str] = None, threads: Optional[int] = None,
                 adapt: Union[int, str] = 0, consistency: str = "none", register="off",
                 calibrate="off", precision: str = "auto",
                 synthetic_references: Optional[bool] = None, reference_transfer="off"):
        if threads:
            torch.set_num_threads(threads)
        self.device = select_device(device)
        self.precision = resolve_precision(precision, self.device)
        loaded = load_model(model, self.device)
        self.model = loaded.model
        # An nn.Module has no training config: its input kind comes from its channels.
        self.input_kind = input_kind or loaded.input_kind
        self.uses_reference = self.model.uses_reference
        self.synthetic_references = bool(synthetic_references) if synthetic_references \
            is not None else trained_with_synthetic_references(loaded.train_config)
        # "auto" (mrisr upscale's default) is decided inside upscale(): 3D cases only.
        self.adapt = adapt if adapt == "auto" else int(adapt)
        self.consistency = consistency
        from mrisr.inference.decisions import register_mode
        self.register = register_mode(register)
        self.calibrate = calibrate
        from mrisr.inference.decisions import reference_transfer_weight
        reference_transfer_weight(reference_transfer)
        self.reference_transfer = reference_transfer
        self.active = self.model
        self.adapt_log: list[dict] = []

    def prepare(self, cases: list[SRCase]) -> None:
        self.active = self.model
        if self.adapt in (0, "auto") or not cases or cases[0].lr.ndim != 2:
            return  # 3D cases adapt inside upscale()
        from mrisr.degradation import spline_resize
        from mrisr.training.adapt import adapt_model

        lr = np.stack([np.abs(c.lr) for c in cases], axis=-1)
        ref = None
        if self.uses_reference:
            ref = np.stack([spline_resize(np.abs(c.reference), c.lr.shape, order=3,
                                          antialias=True) for c in cases], axis=-1)
        factors = [o / i for i, o in zip(cases[0].lr.shape, cases[0].out_shape)] + [1.0]
        result = adapt_model(self.model, lr, factors, 2, ref, self.adapt, device=self.device)
        self.active = result.model
        self.adapt_log.append(result.describe())

    def __call__(self, case: SRCase) -> np.ndarray:
        if case.lr.ndim == 3:
            return self._volume(case)
        out = predict_slice(self.active, case.lr, tuple(case.out_shape), case.reference,
                            self.input_kind, self.device, precision=self.precision)
        if self.consistency != "none":
            from mrisr.degradation.consistency import project
            out = project(out, np.abs(case.lr).astype(np.float32), self.consistency)
        if self.uses_reference and case.reference is not None:
            out = self._transfer_slice(case, out)
        return out

    def _transfer_slice(self, case: SRCase, out: np.ndarray) -> np.ndarray:
        from mrisr.degradation.consistency import resolve
        from mrisr.inference.decisions import decide_reference_transfer
        from mrisr.inference.reference_transfer import transfer_reference_detail

        model = resolve(self.consistency, out.shape, case.lr.shape)["model"]
        decision = decide_reference_transfer(
            self.reference_transfer, True, model,
            max(o / n for o, n in zip(out.shape, case.lr.shape)))
        if decision.choice == "none":
            return out
        volume = np.ascontiguousarray(out, dtype=np.float32)[..., None]
        transfer_reference_detail(volume, np.abs(case.lr).astype(np.float32)[..., None],
                                  np.abs(case.reference).astype(np.float32)[..., None], 2,
                                  float(decision.choice), model)
        return volume[..., 0]

    def _volume(self, case: SRCase) -> np.ndarray:
        from mrisr.grid import resample_affine
        from mrisr.inference.upscale import upscale
        from mrisr.io.nifti import Volume

        def volume(data: np.ndarray, name: str) -> Volume:
            # One field of view for every grid: the output's, voxel size 1.
            return Volume(np.abs(data).astype(np.float32),
                          resample_affine(np.eye(4), case.out_shape, data.shape), None, name)
        ref = volume(case.reference, "reference") if self.uses_reference else None
        desc = {"model": "evaluated", "input": self.input_kind,
                "synthetic_references": self.synthetic_references}
        result = upscale(volume(case.lr, "input"), ref, shape=tuple(case.out_shape),
                         loaded_model=(self.model, desc), device=str(self.device),
                         consistency=self.consistency, adapt=self.adapt,
                         register=self.register, calibrate=self.calibrate,
                         precision=self.precision, reference_transfer=self.reference_transfer)
        if "adapt" in result.info:
            self.adapt_log.append(result.info["adapt"])
        return result.data


@register_method("model3d")
class VolumeModelMethod(SRMethod):
    """A trained 3D model (CSR-dMRI family) as an evaluation method.

    The case's ``lr`` holds attenuations ``S / S_0`` (as the model was trained on) and its
    ``reference`` the scaled T1w on the output (HR) grid; the model degrades the T1w to the LR
    grid itself when it reads it there.

    Args:
        model: a preset with shipped weights (``"csr_dmri_s"``), a checkpoint path, or an
            ``nn.Module``.
        device, threads: where it runs (``threads``: CPU threads for torch).
        tile, chunk, precision: see :class:`~mrisr.inference.volume3d.VolumeUpscaler`.
    """

    def __init__(self, model: Union[str, nn.Module] = "csr_dmri_s", device: str = "auto",
                 threads: Optional[int] = None, tile: Optional[int] = DEFAULT_TILE,
                 chunk: int = DEFAULT_CHUNK, precision: str = "auto"):
        if threads:
            torch.set_num_threads(threads)
        net = load_model(model).model
        if not is_volume_model(net):
            raise InputError(f"method model3d: model '{model}' is 2D; evaluate it with method "
                             "'model'")
        self.upscaler = VolumeUpscaler(net, select_device(device), tile, chunk, precision)
        self.uses_reference = self.upscaler.uses_reference

    def __call__(self, case: SRCase) -> np.ndarray:
        return self.upscaler(case.lr, case.out_shape, case.reference)
