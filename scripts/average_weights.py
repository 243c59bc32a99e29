#!/usr/bin/env python
"""Average the weights of checkpoints of one model (a "model soup" of runs that continue each
other), written as a run's ``final.pt`` that ``scripts/ship_weights.py`` and ``--model`` take.

    python scripts/average_weights.py OUT_DIR A.pt B.pt [C.pt ...] [--weights 0.5,0.5]

Every input must have the same architecture and arguments. The output keeps the last input's
self-description (model, training config, data, step) and records the inputs and their
weights under ``trainer.average_of``; it loads with ``weights_only=True``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from mrisr.errors import MrisrError
from mrisr.io.atomic import atomic_path
from mrisr.models.loading import load_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--weights", default=None, help="comma-separated, default: equal")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.checkpoints]
    if len(paths) < 2:
        raise SystemExit("average_weights: give at least two checkpoints")
    weights = [1.0 / len(paths)] * len(paths) if args.weights is None else \
        [float(w) for w in args.weights.split(",")]
    if len(weights) != len(paths) or abs(sum(weights) - 1.0) > 1e-6:
        raise SystemExit("average_weights: --weights needs one weight per checkpoint, "
                         "summing to 1")
    try:  # refuses what does not describe itself as a mrisr model
        payloads = [load_checkpoint(p).payload for p in paths]
    except MrisrError as exc:
        raise SystemExit(f"average_weights: {exc}") from None
    for p, payload in zip(paths, payloads):
        if {k: payload["model"][k] for k in ("architecture", "args")} != \
                {k: payloads[0]["model"][k] for k in ("architecture", "args")}:
            raise SystemExit(f"average_weights: {p} is not the model of {paths[0]}")
    out = dict(payloads[-1])
    out["state_dict"] = {key: sum(w * pl["state_dict"][key].double() for w, pl in
                                  zip(weights, payloads)).to(tensor.dtype)
                         if tensor.is_floating_point() else tensor
                         for key, tensor in payloads[-1]["state_dict"].items()}
    out["trainer"] = {**out.get("trainer", {}),
                      "average_of": [{"checkpoint": str(p), "weight": w}
                                     for p, w in zip(paths, weights)]}
    target = Path(args.out_dir) / "final.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        torch.save(out, tmp)
    load_checkpoint(target)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
