#!/usr/bin/env python
"""Adaptation of thick-slice jobs (docs/benchmarks/cross_dataset.md, "Adaptation of thick-slice
jobs"): ``dualarbnet_robust`` as ``mrisr upscale`` runs it by default, and with ``--adapt 40``
and ``--adapt 150``, on whole volumes of a thick-slice config; with each adapted copy's evidence
(held-out loss before and after, steps, whether it was used).

    OMP_NUM_THREADS=1 python benchmarks/thick_adaptation.py configs/cross/thick_head.yaml \
        -o results/thick_adaptation/head [--scales 1,1,3:1,1,5] [--dataset-kind phantom]

Any whole-volume config runs the same way (an in-plane one, e.g. ``configs/cross/
icbm152_volume.yaml``, measures in-plane adaptation: docs/benchmarks/cross_dataset.md, same
section). ``--dataset-kind phantom`` replaces the config's dataset by the embedded phantom at 1 mm
(128x128x64); ``--manifest FILE`` by a manifest's test subjects (e.g. the ICBM152 template,
``configs/data/icbm152.yaml``). The report goes to ``-o`` (``table.md``, ``cases.csv``) with
``adaptation.csv``: one row per adapted case and method, in the order of ``cases.csv``.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--scales", default="", help="e.g. 1,1,3:1,1,5 (default: the config's)")
    parser.add_argument("--dataset-kind", choices=("phantom",), default=None)
    parser.add_argument("--manifest", default=None)
    parser.add_argument("--budgets", default="40,150", help="forced --adapt step budgets")
    args = parser.parse_args(argv)

    from mrisr.config import from_dict, load_yaml
    from mrisr.evaluation.harness import EvaluateConfig, evaluate
    from mrisr.evaluation.methods import make_method
    from mrisr.evaluation.report import write_report

    data = load_yaml(args.config)
    if args.scales:
        data["scales"] = [[float(v) for v in s.split(",")] for s in args.scales.split(":")]
    if args.dataset_kind == "phantom":
        data["dataset"] = {"kind": "phantom", "target": "t2", "reference": "t1",
                           "shape": [128, 128, 64], "voxel_size": [1.0, 1.0, 1.0]}
    if args.manifest:
        data["dataset"] = {"kind": "manifest", "manifest": args.manifest, "split": "test"}
    base = {"model": "dualarbnet_robust", "consistency": "auto", "register": "auto",
            "calibrate": "auto"}
    specs = {"default": {**base, "adapt": "auto"}}
    specs.update({f"adapt {n}": {**base, "adapt": int(n)} for n in args.budgets.split(",")})
    data["methods"] = [{"name": "cubic"}] + [{"name": "model", "args": a, "label": label}
                                             for label, a in specs.items()]
    cfg = from_dict(EvaluateConfig, data, source=args.config)
    methods = {"cubic": make_method("cubic")}
    methods.update({label: make_method("model", a) for label, a in specs.items()})
    result = evaluate(cfg, methods, show_progress=False)
    out = Path(args.output)
    paths = write_report(result, out)
    keys = ("steps_requested", "steps", "stopped", "used", "used_step",
            "held_out_loss_unadapted", "held_out_loss_used", "seconds")
    with open(out / "adaptation.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", *keys, "held_out_fall"])
        for label, method in methods.items():
            for entry in getattr(method, "adapt_log", []):
                before = entry.get("held_out_loss_unadapted")
                after = entry.get("held_out_loss_used")
                fall = f"{1 - after / before:.4f}" if before and after is not None else ""
                writer.writerow([label, *(entry.get(k) for k in keys), fall])
    print(paths["table"].read_text())
    print((out / "adaptation.csv").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
