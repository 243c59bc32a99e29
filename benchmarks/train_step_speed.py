"""Time one training step (forward + backward + Adam) of the 2D presets, side by side.

Setting of the reference-code times in docs/REFERENCE_NOTES.md: batch 6, 32x32 LR patches,
x2 and x4, HR reference. Inputs are random tensors (speed does not depend on content).

    python benchmarks/train_step_speed.py --threads 2 --repeats 3
    python benchmarks/train_step_speed.py --threads 1 --models dualarbnet_ref,dualarbnet_s \
        --old-src /tmp/old/src        # side by side with another checkout

``--old-src`` names the ``src`` folder of another checkout (e.g. ``git worktree add /tmp/old
HEAD~1``); each model and scale is then timed in a child process of that checkout right after
one of this tree, and both times are reported with the process CPU time of the step (robust
to other jobs on the machine when ``--threads 1``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
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

    def once() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        loss = (model(lr, ref, query) - hr).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0, time.process_time() - c0
    once()  # warm-up: allocator and kernel selection
    times = [once() for _ in range(repeats)]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def child_times(name: str, scale: int, args, src: str | None) -> tuple[float, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    code = (f"import json, torch, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
            f"import train_step_speed as t; torch.set_num_threads({args.threads}); "
            f"print(json.dumps(t.step_time({name!r}, {scale}, {args.batch}, {args.patch}, "
            f"{args.repeats})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return tuple(json.loads(proc.stdout.strip().splitlines()[-1]))


def side_by_side(args) -> None:
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"{args.patch}x{args.patch} LR patches, HR reference, median of {args.repeats}; "
          "wall / CPU seconds per step")
    print("| model | scale | this tree | old | speed-up (wall) | speed-up (CPU) |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for s in (int(v) for v in args.scales.split(",")):
            new = child_times(name, s, args, None)
            old = child_times(name, s, args, args.old_src)
            print(f"| {name} | x{s} | {new[0]:.2f} / {new[1]:.2f} | {old[0]:.2f} / {old[1]:.2f} "
                  f"| {old[0] / new[0]:.2f}x | {old[1] / new[1]:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--models", default="dualarbnet_ref,dualarbnet_s,liif_s")
    parser.add_argument("--scales", default="2,4")
    parser.add_argument("--old-src", default=None, help="src folder of another checkout")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.old_src:
        side_by_side(args)
        return
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"{args.patch}x{args.patch} LR patches, HR reference, median of {args.repeats}")
    print("| model | parameters | x2 (s/step) | x4 (s/step) |")
    print("|---|---|---|---|")
    for name in args.models.split(","):
        n = sum(p.numel() for p in create_model(name).parameters())
        times = [step_time(name, s, args.batch, args.patch, args.repeats)[0] for s in (2, 4)]
        print(f"| {name} | {n / 1e6:.2f} M | {times[0]:.2f} | {times[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
