#!/usr/bin/env python
"""The cross-dataset evaluation of docs/BENCHMARKS.md ("Scans unlike the training data").

    python benchmarks/cross_dataset.py run [--group shipped|robust|all] [--sets ...]
    python benchmarks/cross_dataset.py run --group volume   # mrisr upscale's defaults
    python benchmarks/cross_dataset.py run --group candidate --model PATH [--label NAME]
    python benchmarks/cross_dataset.py table            # Markdown from results/cross/

``run`` evaluates the methods of a group on the test sets of ``configs/cross/`` (in-plane sets
with the k-space crop and with the Gaussian PSF; ``thick`` with box slice profiles) through
:func:`mrisr.evaluation.evaluate`, the function behind ``mrisr evaluate``, and writes each
result to ``results/cross/<set>-<degradation>-<group>/``. The groups can run at different
times (e.g. the baselines while the new models train); ``table`` joins them: one table per
degradation, rows = methods, columns = test set x scale (PSNR / SSIM), then the default model's
gain over zero-filled k-space and over cubic interpolation. The ``volume`` group runs the
``*_volume`` configs, the thick-slice ``thick_ixi`` and ``thick_head`` and the
``*_volume_bicubic`` sets (a degradation no model trained on) as they are: whole
volumes through ``mrisr upscale``'s function with its default decisions
(``configs/cross/volume_base.yaml``, ``thick_volume_base.yaml``). The ``candidate``
group runs, on the same whole-volume sets and with the same default decisions, a candidate
checkpoint (``--model``, e.g. a run in ``ongoing/``) in the place of the default's model:
what the default with a reference would become with it (a model without a reference: the
default without one); each candidate writes to folders named after its label.
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "cross"
INPLANE_SETS = ("brats", "ixi", "ixi_registered", "head", "phantom")
VOLUME_SETS = ("brats_volume", "ixi_volume", "head_volume", "phantom_volume", "icbm152_volume",
               "spine_volume")
#: Whole volumes in thick slices, on scans no 2D model trained on (configs/cross/thick_*.yaml).
THICK_VOLUME_SETS = ("thick_ixi", "thick_head")
#: Whole volumes degraded in-plane by a degradation no 2D model trained on: Gaussian
#: anti-aliasing and cubic B-spline downsampling (configs/cross/*_volume_bicubic.yaml).
BICUBIC_VOLUME_SETS = ("brats_volume_bicubic", "spine_volume_bicubic")
DEFAULT_ROW = ("mrisr upscale default (dualarbnet_robust, registration, adaptation, "
               "calibration and reference transfer auto)")
FORCED_CHECK_ROW = ("dualarbnet_robust, registration, adaptation and reference check auto (the "
                    "check forced)")
BEFORE_ROW = ("dualarbnet_s, registration, adaptation and reference check auto (the default "
              "before dualarbnet_robust)")
HEADERS_ROW = "Dual-ArbNet (dualarbnet_s) + projection, headers"
NO_REFERENCE_ROW = "LIIF robust (liif_robust) + projection + gain (default without reference)"
NO_REFERENCE_BEFORE_ROW = ("LIIF (liif_s) + projection + gain (the default without reference "
                           "before liif_robust)")
CANDIDATE_PREFIX = "candidate "
DEGRADATIONS = ("kspace", "gaussian")
#: Rows whose gains over zero-filled k-space and cubic interpolation are tabulated.
GAIN_ROWS = ("Dual-ArbNet (dualarbnet_s) + projection", "LIIF (liif_s) + projection",
             "Dual-ArbNet (dualarbnet_s) + projection + adapt 40",
             "LIIF robust + projection", "Dual-ArbNet robust + projection",
             "Dual-ArbNet robust + projection + adapt 40", HEADERS_ROW, BEFORE_ROW,
             FORCED_CHECK_ROW, DEFAULT_ROW, NO_REFERENCE_BEFORE_ROW, NO_REFERENCE_ROW)
ADAPT_STEPS = 40
#: Row order of the joined tables (methods not listed come last).
ROW_ORDER = ("cubic", "kspace_zerofill", "LIIF (liif_s)", "LIIF (liif_s) + projection",
             "Dual-ArbNet (dualarbnet_s)", "Dual-ArbNet (dualarbnet_s) + projection",
             "Dual-ArbNet (dualarbnet_s) + projection + adapt 40",
             "LIIF robust + projection", "Dual-ArbNet robust + projection",
             "Dual-ArbNet robust + projection + adapt 40")


def _model(name: str, label: str, consistency: str = "none", adapt: int = 0) -> dict:
    args = {"model": name, "consistency": consistency}
    if adapt:
        args["adapt"] = adapt
    return {"name": "model", "args": args, "label": label}


def methods(group: str, adapt: bool) -> list[dict]:
    """``shipped``: interpolation and the models shipped before this evaluation, as they ran
    before (no projection) and as `mrisr upscale` now runs them (data-consistency projection;
    with test-time adaptation); ``robust``: the fine-tuned liif_robust and dualarbnet_robust."""
    shipped = [
        {"name": "cubic"},
        {"name": "kspace_zerofill"},
        _model("liif_s", "LIIF (liif_s)"),
        _model("dualarbnet_s", "Dual-ArbNet (dualarbnet_s)"),
        _model("liif_s", "LIIF (liif_s) + projection", "auto"),
        _model("dualarbnet_s", "Dual-ArbNet (dualarbnet_s) + projection", "auto"),
    ]
    robust = [_model("liif_robust", "LIIF robust + projection", "auto"),
              _model("dualarbnet_robust", "Dual-ArbNet robust + projection", "auto")]
    if adapt:
        shipped.append(_model("dualarbnet_s", f"Dual-ArbNet (dualarbnet_s) + projection + "
                              f"adapt {ADAPT_STEPS}", "auto", ADAPT_STEPS))
        robust.append(_model("dualarbnet_robust", f"Dual-ArbNet robust + projection + adapt "
                             f"{ADAPT_STEPS}", "auto", ADAPT_STEPS))
    return {"shipped": shipped, "robust": robust, "all": shipped + robust}[group]


def jobs(sets: list[str]) -> list[tuple[str, str]]:
    out = [(s, d) for s in sets if s in INPLANE_SETS for d in DEGRADATIONS]
    if "thick" in sets:
        out.append(("thick", "thick_slice"))
    return out


def _default_decisions(model: str, label: str) -> dict:
    """A method row that runs ``model`` with the decisions `mrisr upscale` takes by default."""
    return {"name": "model", "label": label,
            "args": {"model": model, "consistency": "auto", "register": "auto",
                     "adapt": "auto", "calibrate": "auto", "reference_transfer": "auto"}}


def run(group: str, sets: list[str], threads: int, model: str = None,
        label: str = None) -> None:
    import torch

    from mrisr.config import from_dict, load_yaml
    from mrisr.evaluation.harness import EvaluateConfig, evaluate
    from mrisr.evaluation.report import write_report

    torch.set_num_threads(threads)
    if group in ("volume", "candidate"):
        rows = None
        if group == "candidate":
            if not model:
                raise SystemExit("--group candidate needs --model (a checkpoint or preset)")
            label = label or "/".join(Path(model).parts[-2:])
            rows = [_default_decisions(model, CANDIDATE_PREFIX + label)]
        for name in sets:
            data = load_yaml(REPO / "configs" / "cross" / f"{name}.yaml")
            if rows is not None:
                data["methods"] = rows
            cfg = from_dict(EvaluateConfig, data, source=f"{name}.yaml")
            out = RESULTS / f"{name}-{cfg.degradation}-{group}"
            if group == "candidate":  # one folder per candidate: several can run at once
                out = out.with_name(out.name + "-" + re.sub(r"[^A-Za-z0-9_.]+", "_", label))
            print(f"== {name} {group} -> {out}", flush=True)
            write_report(evaluate(cfg, show_progress=False), out)
            print((out / "table.md").read_text(), flush=True)
        return
    for name, degradation in jobs(sets):
        data = load_yaml(REPO / "configs" / "cross" / f"{name}.yaml")
        data["degradation"] = degradation
        # Adaptation is measured with dualarbnet_s on the in-plane k-space crop (its cost is
        # high and it did not pay there: docs/BENCHMARKS.md).
        data["methods"] = methods(group, adapt=degradation == "kspace" and group != "robust")
        cfg = from_dict(EvaluateConfig, data, source=f"{name}.yaml")
        out = RESULTS / f"{name}-{degradation}-{group}"
        print(f"== {name} {degradation} {group} -> {out}", flush=True)
        result = evaluate(cfg, show_progress=False)
        write_report(result, out)
        print((out / "table.md").read_text(), flush=True)


def _read(name: str, degradation: str) -> list[dict]:
    rows = []
    for folder in sorted(RESULTS.glob(f"{name}-{degradation}-*")):
        with (folder / "cases.csv").open() as f:
            rows += list(csv.DictReader(f))
    return rows


def _means(rows: list[dict]) -> dict:
    acc = defaultdict(lambda: defaultdict(list))
    for r in rows:
        acc[r["method"]][r["scale"]].append((float(r["psnr"]), float(r["ssim"])))
    return {m: {s: tuple(np.mean(v, axis=0)) for s, v in per.items()} for m, per in acc.items()}


def table() -> str:
    blocks = []
    for degradation, sets in (("kspace", INPLANE_SETS), ("gaussian", INPLANE_SETS),
                              ("thick_slice", ("thick",)), ("kspace", VOLUME_SETS),
                              ("thick_slice", THICK_VOLUME_SETS),
                              ("bicubic_aa", BICUBIC_VOLUME_SETS)):
        cols, means, order = [], {}, []
        for name in sets:
            rows = _read(name, degradation)
            if not rows:
                continue
            means[name] = _means(rows)
            scales = list(dict.fromkeys(r["scale"] for r in rows))
            cols += [(name, s) for s in scales]
            order += [m for m in dict.fromkeys(r["method"] for r in rows) if m not in order]
        if not cols:
            continue
        order.sort(key=lambda m: (ROW_ORDER.index(m) if m in ROW_ORDER else len(ROW_ORDER)))
        head = "| method | " + " | ".join(f"{n} x{s}" for n, s in cols) + " |"
        rule = "|---|" + "---|" * len(cols)
        kind = degradation + (", whole volumes" if sets in (
            VOLUME_SETS, THICK_VOLUME_SETS, BICUBIC_VOLUME_SETS) else "")
        lines = [f"**{kind}: PSNR (dB)**", "", head, rule]
        ssim = ["", f"**{kind}: SSIM**", "", head, rule]
        for m in order:
            cells = [means[n].get(m, {}).get(s) for n, s in cols]
            lines.append(f"| {m} | " + " | ".join(
                f"{c[0]:.2f}" if c else "-" for c in cells) + " |")
            ssim.append(f"| {m} | " + " | ".join(
                f"{c[1]:.3f}" if c else "-" for c in cells) + " |")
        for label in GAIN_ROWS + tuple(m for m in order if m.startswith(CANDIDATE_PREFIX)):
            for base in ("kspace_zerofill", "cubic"):
                cells = []
                for n, s in cols:
                    a, b = means[n].get(label, {}).get(s), means[n].get(base, {}).get(s)
                    cells.append(f"{a[0] - b[0]:+.2f}" if a and b else "-")
                if any(c != "-" for c in cells):
                    lines.append(f"| gain of {label} over {base} (dB) | " + " | ".join(cells)
                                 + " |")
        cells = []
        for n, s in cols:
            a, b = means[n].get(DEFAULT_ROW, {}).get(s), means[n].get(NO_REFERENCE_ROW, {}).get(s)
            cells.append(f"{a[0] - b[0]:+.2f}" if a and b else "-")
        if any(c != "-" for c in cells):
            lines.append("| gain of the reference (the default with it over the default "
                         "without) (dB) | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines + ssim))
    return "\n\n".join(blocks)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--group", default="all",
                   choices=["shipped", "robust", "all", "volume", "candidate"])
    p.add_argument("--sets", help="comma-separated (default: every set of the group)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", help="--group candidate: the checkpoint (or preset) to compare")
    p.add_argument("--label", help="--group candidate: its row's name (default: the last two "
                                   "parts of its path)")
    sub.add_parser("table")
    args = parser.parse_args(argv)
    if args.command == "run":
        default = VOLUME_SETS + THICK_VOLUME_SETS + BICUBIC_VOLUME_SETS \
            if args.group in ("volume", "candidate") else \
            INPLANE_SETS + ("thick",)
        run(args.group, args.sets.split(",") if args.sets else list(default), args.threads,
            args.model, args.label)
    else:
        print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
