"""What ``mrisr upscale`` decides for the user, in one place, each decision with its evidence.

One :class:`Decisions` record per output, written to the sidecar as its ``decisions`` block:

* ``model``: the model given, or the default for the job (:func:`decide_model`: a 4D series,
  a reference or not, thick slices or in-plane; :mod:`mrisr.inference.selection`);
* ``registration``: whether the reference's header placement is corrected
  (:func:`register_reference`; the evidence: :func:`mrisr.data.registration.
  assess_registration`, the rule: :func:`registration_rule`);
* ``adaptation``: whether the model is fine-tuned on the input (:func:`decide_adaptation`) and,
  after it ran, whether the fine-tuned copy was used (:func:`adaptation_outcome`: held-out
  pairs, :mod:`mrisr.training.adapt`);
* ``calibration``: whether the detail gain is fitted (:func:`decide_calibration`) and the gain;
* ``consistency``: the data-consistency projection applied (:func:`consistency_decision`);
* ``reference_transfer``: how far a 2D job with a reference moves towards the reference's
  detail where a local linear fit says it matches (:func:`decide_reference_transfer`,
  :mod:`mrisr.inference.reference_transfer`);
* ``tensor_consistency``: how much of the anisotropic part of a model's detail is taken out of
  a diffusion series (:func:`decide_tensor_consistency`, :mod:`mrisr.inference.anisotropy`).

Each entry is ``{"choice": ..., "reason": ..., "evidence": {...}}``. The functions only decide;
the work (registering, adapting, projecting) happens where it did before, and the sidecar keeps
its older entries (``reference.registration``, ``adapt``, ``detail_gain``, ``consistency``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional, Sequence

import numpy as np

from mrisr.errors import InputError
from mrisr.io.nifti import Volume

__all__ = ["Decision", "Decisions", "SWITCH_MODES", "REGISTER_MODES", "switch_mode",
           "register_mode", "register_flag_3d", "is_thick_slice", "decide_model",
           "EVIDENCE_RATIO", "registration_rule", "register_reference", "decide_adaptation",
           "adaptation_outcome", "calibrate_applies", "reference_check_applies",
           "SYNTHETIC_REFERENCES_REASON",
           "decide_calibration",
           "consistency_decision", "weight_option", "tensor_consistency_weight",
           "decide_tensor_consistency", "decide_series_tensor_consistency",
           "reference_transfer_weight", "decide_reference_transfer",
           "reference_transfer_outcome"]

#: The values of an ``auto``/``on``/``off`` option (``register``, ``calibrate``).
SWITCH_MODES = ("auto", "on", "off")
#: ``register`` modes of 2D models: ``auto`` (the default) corrects the header placement only
#: when the evidence says it is off (:func:`registration_rule`).
REGISTER_MODES = SWITCH_MODES
#: :func:`registration_rule`: the share of the MI that one reference voxel of motion costs
#: which the estimate's gain over the header placement must exceed. On the one co-registered
#: pair of the benchmark whose estimate moved the anatomy by more than a voxel (ixi002 at x8
#: in-plane, 1.43 mm) the gain was 0.07 of it; headers off by known motions of 2-6.5 mm gave
#: 0.91-5.1 from 3-7 mm slices and x2-x4 in-plane, ixi002's own header (2 mm off) 1.07-1.22
#: there and 0.25 from x8, where the estimates are 1-2 mm off (benchmarks/
#: registration_decision.py; docs/benchmarks/cross_dataset.md, "Registration that does not
#: invent motion").
EVIDENCE_RATIO = 0.5


@dataclass
class Decision:
    """One decision: ``choice`` (what was done), ``reason`` (why, in words) and ``evidence``
    (the numbers behind it)."""

    choice: str
    reason: str
    evidence: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {"choice": self.choice, "reason": self.reason}
        if self.evidence:
            out["evidence"] = self.evidence
        return out


@dataclass
class Decisions:
    """The decisions of one ``mrisr upscale`` output (``None``: not taken for this job)."""

    model: Optional[Decision] = None
    registration: Optional[Decision] = None
    adaptation: Optional[Decision] = None
    calibration: Optional[Decision] = None
    consistency: Optional[Decision] = None
    reference_transfer: Optional[Decision] = None
    tensor_consistency: Optional[Decision] = None

    def as_dict(self) -> dict:
        """The sidecar's ``decisions`` block."""
        return {f.name: getattr(self, f.name).as_dict() for f in fields(self)
                if getattr(self, f.name) is not None}

    def over(self, block: dict) -> dict:
        """A ``decisions`` block (e.g. of one volume of a file) with these decisions in place
        of its own, in this record's order."""
        merged = {**block, **self.as_dict()}
        return {f.name: merged[f.name] for f in fields(self) if f.name in merged}


def switch_mode(value, name: str) -> str:
    """An ``auto``/``on``/``off`` option given as such, or ``None`` -> ``auto``, ``True`` ->
    ``on``, ``False`` -> ``off``; ``name`` is the option's name in the error."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    if value not in SWITCH_MODES:
        raise InputError(f"{name} must be one of {', '.join(SWITCH_MODES)} or a bool, "
                         f"got {value!r}")
    return value


def register_mode(register) -> str:
    """``register`` of :func:`~mrisr.inference.upscale.upscale` as one of
    :data:`REGISTER_MODES` for a 2D model."""
    return switch_mode(register, "register")


def register_flag_3d(register) -> Optional[bool]:
    """``register`` for a 3D model's T1w placement: ``None``/``"auto"`` (as the model was
    trained), else on or off."""
    mode = register_mode(register)
    return None if mode == "auto" else mode == "on"


# -- model --------------------------------------------------------------------------------------
def is_thick_slice(in_shape: Sequence[int], out_shape: Sequence[int]) -> bool:
    """Whether upscaling ``in_shape`` to ``out_shape`` is a thick-slice job: one axis upscaled
    >= 2x and >= 1.5x more than every other (:func:`mrisr.degradation.consistency.thick_axis`,
    the rule of the ``auto`` projection)."""
    from mrisr.degradation.consistency import thick_axis

    return thick_axis([o / i for i, o in zip(in_shape, out_shape)]) is not None


def decide_model(name: Optional[str], has_reference: bool, series: bool,
                 in_shape: Sequence[int], out_shape: Sequence[int]) -> Decision:
    """The model of a job: ``name`` when given, else the default for it
    (:func:`mrisr.inference.selection.default_model_name`). ``choice`` is the name to load."""
    from mrisr.inference.selection import default_model_name

    thick = is_thick_slice(in_shape, out_shape)
    job = {"series": bool(series), "reference": bool(has_reference), "thick_slice": thick}
    if name is not None:
        return Decision(str(name), "given (--model)", job)
    chosen = default_model_name(has_reference, series)
    what = ("a 4D series" if series else "thick slices" if thick else "in-plane upscaling") + \
        (" with a reference" if has_reference else " without a reference")
    return Decision(chosen, f"the default for {what}", job)


# -- registration -------------------------------------------------------------------------------
def registration_rule(evidence) -> tuple[bool, str]:
    """Whether ``auto`` corrects the header placement, given a
    :class:`~mrisr.data.registration.RegistrationEvidence`, and why.

    Both must hold: the estimate moves the input's anatomy by more than the tolerance (one
    reference voxel: the shipped models were trained with the reference shifted by up to about
    one of its voxels), and the data back it: its gain in mutual information over the header
    placement is more than :data:`EVIDENCE_RATIO` times what moving it by the tolerance costs.
    A coarse input (thick slices, x8) leaves the MI flat across a millimetre or two, where the
    estimate drifts with the partial volume and the contrast; the header placement then scores
    nearly as well as the estimate, and is kept."""
    if evidence.moves_mm <= evidence.tolerance_mm:
        return False, (f"the estimate moves the anatomy by {evidence.moves_mm:.2f} mm, within "
                       f"one reference voxel ({evidence.tolerance_mm:.2f} mm)")
    gain, drop = evidence.mi_gain, evidence.mi_drop_at_tolerance
    # NaN (no voxel scored) and a drop <= 0 (the estimate is no MI optimum) are no evidence.
    if gain is None or drop is None or not (drop > 0 and gain > EVIDENCE_RATIO * drop):
        return False, (f"the estimate moves the anatomy by {evidence.moves_mm:.2f} mm, but the "
                       f"header placement scores within {EVIDENCE_RATIO:g}x the MI change of "
                       f"one reference voxel of it: no evidence of motion")
    return True, (f"the header placement is off: the estimate moves the anatomy by "
                  f"{evidence.moves_mm:.2f} mm and raises the MI by {gain / drop:.1f}x what "
                  f"one reference voxel of motion costs")


def register_reference(reference: Volume, static: np.ndarray, static_affine: np.ndarray,
                       mode: str = "on") -> tuple[Volume, Decision]:
    """``reference`` with its header corrected when the registration to ``static`` (the input
    on its grid ``static_affine``) says so, and the decision. ``mode``: ``on`` applies the
    estimate whatever it is, ``auto`` by :func:`registration_rule`. ``choice`` is
    ``corrected`` or ``header``; ``evidence`` holds the estimate (translation, rotation, how far
    it moves the anatomy), the MI evidence when measured, ``mode`` and ``applied``."""
    from mrisr.data.registration import assess_registration, corrected

    if mode == "auto":
        try:
            import dipy.align  # noqa: F401
        except ImportError:
            return reference, Decision("header", "dipy not installed (pip install dipy)",
                                       {"mode": mode, "applied": False})
    try:
        evidence = assess_registration(reference, static, static_affine)
    except InputError as exc:  # no dipy: say so, not that the registration failed
        raise InputError(f"{reference.path}: {exc}; without it, --no-register places the "
                         "reference through the headers") from None
    record = {"mode": mode, **evidence.as_dict()}
    if evidence.failed:
        if mode == "on":
            raise InputError(f"{reference.path}: registration to the input failed (no overlap "
                             "or no contrast on the input's grid); try --no-register")
        return reference, Decision("header", "registration failed (no overlap or no "
                                             "contrast)", {**record, "applied": False})
    applied, reason = (True, "--register: the estimate is applied") if mode == "on" \
        else registration_rule(evidence)
    record["applied"] = applied
    if not applied:
        return reference, Decision("header", reason, record)
    return corrected(reference, evidence.transform), Decision("corrected", reason, record)


# -- adaptation ---------------------------------------------------------------------------------
def decide_adaptation(adapt, registration: Optional[Decision], two_d_with_reference: bool,
                      thick_slice: bool = False) -> Decision:
    """The adaptation asked for: ``adapt`` itself when it is a number; ``"auto"`` (the
    default) for a 2D model with a reference:

    * thick slices (``thick_slice``): :data:`~mrisr.training.adapt.THICK_ADAPT_STEPS`, the copy
      used only when its held-out loss is :data:`~mrisr.training.adapt.THICK_MIN_IMPROVEMENT`
      below the model's: on sets no model trained on (IXI, a whole head, the phantom, the
      ICBM152 template; 2-5 mm slices) it added +0.27 to +1.74 dB, and on brats it was kept
      where it helped (+0.28 dB) and rejected where it cost (docs/benchmarks/cross_dataset.md,
      "Adaptation of thick-slice jobs");
    * in-plane: :data:`~mrisr.training.adapt.DEFAULT_ADAPT_STEPS` when the registration moved
      the reference (a reference from another series: on ixi002 +0.30 / +0.28 / 0 dB at x2 /
      x4 / x8 over the registered reference alone, the x8 copy rejected by the held-out
      slices), else none: on co-registered brats volumes it cost 0.6-1.1 dB at x2 even judged
      on held-out slices (same document, "Adaptation that never harms").

    The copy is used only when it beats the model on held-out pairs
    (:func:`adaptation_outcome`). ``choice`` ``adapt`` or ``none``, ``evidence["steps"]`` the
    step budget."""
    if adapt != "auto":
        steps = int(adapt)
        return Decision("adapt" if steps else "none", f"--adapt {steps}", {"steps": steps})
    from mrisr.training.adapt import DEFAULT_ADAPT_STEPS, THICK_ADAPT_STEPS

    moved = registration is not None and registration.choice == "corrected"
    if two_d_with_reference and thick_slice:
        return Decision("adapt", "thick slices: the model learns the input's own in-plane "
                                 "detail, used only when held-out planes say it helps",
                        {"steps": THICK_ADAPT_STEPS})
    if two_d_with_reference and moved:
        return Decision("adapt", "the registration moved the reference: the pair is unlike "
                                 "the co-registered pairs of training",
                        {"steps": DEFAULT_ADAPT_STEPS})
    if two_d_with_reference:
        reason = "the reference was not moved"
    else:
        reason = "adapted only when the registration moves a 2D model's reference or for " \
                 "thick slices with a reference"
    return Decision("none", reason, {"steps": 0})


def adaptation_outcome(asked: Decision, result: dict) -> Decision:
    """The adaptation decision after it ran: ``result`` is
    :meth:`~mrisr.training.adapt.AdaptResult.describe`'s entry; ``choice`` becomes
    ``adapted`` (the fine-tuned copy upscaled) or ``unadapted`` (the model given, which the
    copy did not beat on the held-out pairs)."""
    evidence = {"steps_requested": result.get("steps_requested"),
                "steps_run": result.get("steps"), "stopped": result.get("stopped"),
                "used_step": result.get("used_step"),
                "held_out_loss_unadapted": result.get("held_out_loss_unadapted"),
                "held_out_loss_used": result.get("held_out_loss_used"),
                "seconds": result.get("seconds")}
    return Decision(str(result.get("used", "adapted")), f"{asked.reason}; "
                    f"{result.get('reason', '')}".rstrip("; "), evidence)


# -- calibration --------------------------------------------------------------------------------
def calibrate_applies(calibrate, two_d_without_reference: bool) -> bool:
    """Whether the detail gain is fitted on the input degraded once more and applied:
    ``"on"``/``True`` always, ``"off"``/``False`` never; ``"auto"`` (the default) for a 2D
    model run without a reference, where it raised brain-mask PSNR at x2 on every whole-volume
    test set (+0.11 dB brats, +0.22 dB a whole head, +0.17 dB the phantom, 0 on IXI), but not
    with one, where it cost 0.39 dB in-domain (docs/BENCHMARKS.md, "The detail gain")."""
    mode = switch_mode(calibrate, "calibrate")
    return mode == "on" or (mode == "auto" and two_d_without_reference)


#: Why ``auto`` runs no reference check for a model trained with synthetic references.
SYNTHETIC_REFERENCES_REASON = (
    "auto: no reference check for a model trained with synthetic references (on the ICBM152 "
    "template at x2 it cost dualarbnet_robust 1.0 dB)")


def reference_check_applies(calibrate, two_d_with_reference: bool,
                            synthetic_references: bool = False) -> bool:
    """Whether a 2D job with a reference weighs its detail by the reference check
    (:func:`mrisr.inference.calibration.reference_check`): with ``"auto"`` (the default), for
    a model trained on real pairs alone. The one-octave-lower fit underrates in-domain models
    (0.39 dB lost on brats at x2), while the reference check changes the output only where the
    reference is much smoother at the job's octave than the models expect: for
    ``dualarbnet_s`` on the ICBM152 template at x2 (+2.2 dB). A model trained with synthetic
    references (random remappings of the target, ``synthetic_references``: the ``dualarbnet_robust``
    recipe) handled that template itself, and the check cost it 1.0 dB there
    (docs/benchmarks/cross_dataset.md, "The reference check")."""
    return switch_mode(calibrate, "calibrate") == "auto" and two_d_with_reference and \
        not synthetic_references


def decide_calibration(calibrate, two_d_without_reference: bool,
                       entry: Optional[dict] = None, skipped: Optional[str] = None) -> Decision:
    """The calibration decision (:func:`calibrate_applies`, :func:`reference_check_applies`)
    with the fitted ``entry`` (``info["detail_gain"]``) as its evidence when there is one;
    ``skipped``: why ``auto`` fitted nothing, where the default reason does not say it."""
    mode = switch_mode(calibrate, "calibrate")
    checked = entry is not None and entry.get("check") == "reference"
    if not (calibrate_applies(calibrate, two_d_without_reference) or checked):
        reason = "--calibrate off" if mode == "off" else skipped or \
            "auto: fitted only for 2D models"
        return Decision("none", reason)
    reason = "--calibrate on" if mode == "on" else (
        "auto: a 2D model with a reference, checked on the reference" if checked else
        "auto: a 2D model without a reference")
    if entry is not None and entry.get("reason"):
        reason += f"; {entry['reason']}"
    gain = None if entry is None else entry.get("gain")
    return Decision("gain" if gain is not None else "none", reason, dict(entry or {}))


# -- consistency --------------------------------------------------------------------------------
def consistency_decision(report: dict) -> Decision:
    """The projection decision from its sidecar entry (``info["consistency"]``)."""
    model = str(report.get("model", "none"))
    requested = report.get("requested")
    reason = report.get("reason") or (f"--consistency {requested}" + (
        f": {model} for these factors" if requested == "auto" else ""))
    return Decision(model, reason, {k: v for k, v in report.items()
                                    if k not in ("model", "reason")})


# -- tensor consistency -------------------------------------------------------------------------
def weight_option(value, name: str) -> Optional[float]:
    """An ``auto``/``on``/``off``/weight option as a weight in ``[0, 1]``, or ``None`` for
    ``auto``: ``"off"``/``False`` -> 0, ``"on"``/``True`` -> 1, a number (or its text) as it
    is; ``name`` is the option's name in the error."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or value in ("on", "off"):
        return 1.0 if value in (True, "on") else 0.0
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = float("nan")
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"{name} must be auto, on, off or a weight in [0, 1], got {value!r}")
    return weight


def tensor_consistency_weight(value) -> Optional[float]:
    """``tensor_consistency`` of :func:`~mrisr.inference.upscale.upscale_file` as a weight
    (:func:`weight_option`)."""
    return weight_option(value, "tensor_consistency")


def decide_tensor_consistency(requested, learned_model: bool, series: bool,
                              b_tables: bool, shells: Sequence[dict]) -> Decision:
    """How much of the anisotropic part of a model's detail a series loses
    (:mod:`mrisr.inference.anisotropy`): ``choice`` is the weight as text (``"0.5"``) or
    ``"none"``. It needs a learned model (an interpolation has no detail), a 4D series, its
    .bval and .bvec, and a shell of at least ``MIN_DIRECTIONS`` directions (``shells``:
    :func:`~mrisr.inference.anisotropy.usable_shells`' descriptions). ``auto`` (the default)
    takes out ``AUTO_WEIGHT`` where all of that holds; a weight asked for on a series without
    its b-tables is an error the caller raises, since the user asked for something this file
    cannot give."""
    from mrisr.inference.anisotropy import AUTO_WEIGHT

    weight = tensor_consistency_weight(requested)
    asked = "auto" if weight is None else f"--tensor-consistency {weight:g}"
    evidence = {"shells": list(shells)} if shells else {}
    if weight == 0.0:
        return Decision("none", asked, evidence)
    missing = ("not a 4D series" if not series else
               "an interpolation has no detail to change" if not learned_model else
               "no .bval/.bvec beside the series" if not b_tables else
               "no shell with enough directions" if not any(s["used"] for s in shells) else None)
    if missing:
        return Decision("none", f"{asked}: {missing}", evidence)
    if weight is None:
        weight = AUTO_WEIGHT
        asked += f": {AUTO_WEIGHT:g} of the anisotropic part of the detail, which kept the " \
                 "PSNR gain and lowered the FA error on held-out series"
    return Decision(f"{weight:g}", asked, evidence)


def decide_series_tensor_consistency(requested, learned_model: bool, bvals, bvecs,
                                     name) -> tuple[Decision, float]:
    """:func:`decide_tensor_consistency` for a 4D series from its b-values ``(N,)`` and
    b-vectors ``(3, N)`` (each ``None`` when absent), and the weight it applies (0: none). A
    weight asked for on a learned model's series without both tables raises
    :class:`InputError` naming ``name`` (the series' file), before any work."""
    from mrisr.inference.anisotropy import usable_shells

    tables = bvals is not None and bvecs is not None
    if learned_model and not tables and tensor_consistency_weight(requested):
        raise InputError(f"{name}: tensor consistency needs the series' .bval and .bvec "
                         "beside it")
    shells = usable_shells(bvals, bvecs)[1] if tables else []
    decision = decide_tensor_consistency(requested, learned_model, True, tables, shells)
    return decision, 0.0 if decision.choice == "none" else float(decision.choice)


# -- reference transfer -------------------------------------------------------------------------
def reference_transfer_weight(value) -> Optional[float]:
    """``reference_transfer`` of :func:`~mrisr.inference.upscale.upscale` as a weight
    (:func:`weight_option`)."""
    return weight_option(value, "reference_transfer")


def decide_reference_transfer(requested, two_d_with_reference: bool,
                              consistency_model: str, factor: float) -> Decision:
    """How far a job moves towards the reference's locally fitted detail
    (:mod:`mrisr.inference.reference_transfer`): ``choice`` is the weight as text (``"0.6"``)
    or ``"none"``. It needs a 2D model run with a reference and the ``kspace`` projection (an
    in-plane job) or the ``slice_box`` one (thick slices): the fit is made on what the input
    measured. ``auto`` (the default) uses
    :func:`~mrisr.inference.reference_transfer.auto_weight`: for an in-plane job it grows with
    the ``factor`` (0.4 at x2 to 0.8 at x8), for thick slices it is 0.3; measured on the
    whole-volume cross-dataset sets, other contrast pairs, anatomy and a degradation no model
    trained on included (docs/benchmarks/cross_dataset.md, "Detail from the reference by a
    local linear fit")."""
    from mrisr.inference.reference_transfer import auto_weight

    weight = reference_transfer_weight(requested)
    asked = "auto" if weight is None else f"--reference-transfer {weight:g}"
    if weight == 0.0:
        return Decision("none", asked)
    missing = ("no reference (or a model that reads none)" if not two_d_with_reference else
               "needs the k-space or box slice-profile projection, not "
               f"'{consistency_model}'" if consistency_model not in ("kspace", "slice_box")
               else None)
    if missing:
        return Decision("none", f"{asked}: {missing}")
    if weight is None:
        weight = auto_weight(factor, consistency_model)
        asked += f": {weight:g} of the way to the reference's detail at x{factor:g} where a " \
                 "local linear fit on the measured band holds"
    return Decision(f"{weight:g}", asked)


def reference_transfer_outcome(asked: Decision, entry: dict) -> Decision:
    """The decision after the transfer ran, with its evidence (``entry``:
    :func:`~mrisr.inference.reference_transfer.transfer_reference_detail`'s), or ``none``
    with its reason where nothing could be done."""
    if "reason" in entry:
        return Decision("none", f"{asked.reason}; {entry['reason']}")
    return Decision(asked.choice, asked.reason, dict(entry))
