"""Time one training step (forward + backward + Adam) of the 2D presets, side by side.

Reproduces the setting of METHODS.md's reference-code figures: batch 6, 32x32 LR patches,
x2 and x4, HR reference. Inputs are random tensors (speed does not depend on content).

    python benchmarks/train_step_speed.py --threads 2 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mrisr.inference.predict import full_grid_query
from mrisr.models import create_model


def step_time(name: str, scale: int, batch: int, patch: int, repeats: int) -> float:
    torch.manual_seed(0)
    model = create_model(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    lr = torch.rand(batch, model.in_channels, patch, patch)
    hr_size = patch * scale
    ref = torch.rand(batch, model.in_channels, hr_size, hr_size)
    hr = torch.rand(batch, model.in_channels, hr_size, hr_size)
    query = full_grid_query((patch, patch), (hr_size, hr_size), (hr_size, hr_size))

    def once() -> float:
        t0 = time.perf_counter()
        loss = (model(lr, ref, query) - hr).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0
    once()  # warm-up: allocator and kernel selection
    return statistics.median(once() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--models", default="dualarbnet_ref,dualarbnet_s,liif_s")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"{args.patch}x{args.patch} LR patches, HR reference, median of {args.repeats}")
    print("| model | parameters | x2 (s/step) | x4 (s/step) |")
    print("|---|---|---|---|")
    for name in args.models.split(","):
        n = sum(p.numel() for p in create_model(name).parameters())
        times = [step_time(name, s, args.batch, args.patch, args.repeats) for s in (2, 4)]
        print(f"| {name} | {n / 1e6:.2f} M | {times[0]:.2f} | {times[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
