"""Time of whole-volume inference of a 4D series with a model that encodes the T1w at its own
resolution (``csr_dmri_s_own``), with the T1w features reused across the series' volumes
(the same T1w array passed each time) and re-encoded per volume (a copy passed each time),
side by side in one run.

    python benchmarks/own_t1_encoding.py --threads 2 --volumes 6
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mrisr.inference.volume3d import VolumeUpscaler
from mrisr.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--volumes", type=int, default=6)
    parser.add_argument("--lr-shape", default="48,56,40")
    parser.add_argument("--scale", type=float, default=1.5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lr_shape = tuple(int(n) for n in args.lr_shape.split(","))
    out_shape = tuple(int(round(n * args.scale)) for n in lr_shape)
    rng = np.random.default_rng(0)
    t1 = rng.random(out_shape, dtype=np.float32)
    volumes = [rng.random(lr_shape, dtype=np.float32) for _ in range(args.volumes)]
    upscaler = VolumeUpscaler(create_model("csr_dmri_s_own"), torch.device("cpu"))
    upscaler(volumes[0], out_shape, t1.copy())  # warm-up, not timed
    timings = {}
    for label, t1_of in (("reused", lambda: t1), ("per volume", lambda: t1.copy())):
        t0 = time.perf_counter()
        for v in volumes:
            upscaler(v, out_shape, t1_of())
        timings[label] = time.perf_counter() - t0
    print(f"{args.volumes} volumes {lr_shape} -> {out_shape}, {args.threads} threads")
    for label, seconds in timings.items():
        print(f"T1w features {label}: {seconds:.1f} s")
    print(f"ratio: {timings['per volume'] / timings['reused']:.2f}x")


if __name__ == "__main__":
    main()
