#!/usr/bin/env python
"""Active units of each activation of a ``spline_refiner`` checkpoint: how many channels are
positive somewhere on a random input (uniform in [0, 2], about the level-normalised range, the
scale channels at x2). A layer with 0 active units makes the correction a constant: the model
is then cubic interpolation (docs/benchmarks/dmri.md, "A refiner on the output grid").

    python benchmarks/refiner_active_units.py ongoing/dwi_refiner_heldout_B/final.pt
"""
from __future__ import annotations

import argparse

import torch

from mrisr.models.loading import load_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    x = torch.rand(1, 1, 24, 24, 24) * 2
    for path in args.checkpoints:
        model = load_checkpoint(path).model.eval()
        # The input the network reads at x2: the volume and, with use_scale, its scale channels.
        h = torch.cat([x, model._scale_channels((12,) * 3, (24,) * 3, x)], 1) \
            if model.use_scale else x
        counts = []
        with torch.no_grad():
            for layer in model.body:
                h = layer(h)
                if isinstance(layer, (torch.nn.ReLU, torch.nn.LeakyReLU)):
                    counts.append(f"{int((h.amax(dim=(0, 2, 3, 4)) > 0).sum())}/{h.shape[1]}")
        print(f"{path}: active units per layer {' '.join(counts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
