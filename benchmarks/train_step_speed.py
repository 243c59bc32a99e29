"""Time one training step (forward + backward + Adam) of the presets, side by side.

2D presets: the setting of the reference-code times in docs/REFERENCE_NOTES.md: batch 6, 32x32
LR patches, x2 and x4, HR reference. 3D presets (``csr_dmri_s``, ...): the multi-vendor
training setting, batch 6, 10^3 LR patches with their T1w channel, every voxel of the
(10 s)^3 HR patch queried, plus the frequency loss. Inputs are random tensors (speed does not
depend on content).

    python benchmarks/train_step_speed.py --threads 2 --repeats 3
    python benchmarks/train_step_speed.py --threads 1 --models dualarbnet_ref,dualarbnet_s \
        --old-src /tmp/old/src        # side by side with another checkout
    python benchmarks/train_step_speed.py --threads 1 --models dualarbnet_s,csr_dmri_s \
        --precisions fp32,bf16 --old-src /tmp/old/src   # this tree in both precisions
    python benchmarks/train_step_speed.py --threads 1 --models dualarbnet_s --scales 2 \
        --precisions bf16,bf16+compile --old-src /tmp/old/src   # with torch.compile

``--old-src`` names the ``src`` folder of another checkout (e.g. ``git worktree add /tmp/old
HEAD~1``); each model and scale is then timed in a child process of that checkout right after
those of this tree (one per ``--precisions`` entry), and all times are reported with the
process CPU time of the step (robust to other jobs on the machine when ``--threads 1``).
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


def _inputs(model, scale: int, batch: int, patch: int):
    """(lr, reference, query, hr, spatial axes) of one training batch of ``model``."""
    if model.dims == 3:  # the dmri3d task: LR patch, T1w on the LR grid, the HR patch's voxels
        from mrisr.models.csr_dmri import grid_point_query

        lr_patch, hr_size = 10, 10 * scale
        lr = torch.rand(batch, 1, lr_patch, lr_patch, lr_patch)
        query = grid_point_query((lr_patch,) * 3, (hr_size,) * 3)
        return (lr, torch.rand_like(lr), query, torch.rand(batch, 1, hr_size ** 3),
                (hr_size,) * 3)
    lr = torch.rand(batch, model.in_channels, patch, patch)
    hr_size = patch * scale
    ref = torch.rand(batch, model.in_channels, hr_size, hr_size)
    hr = torch.rand(batch, model.in_channels, hr_size, hr_size)
    query = full_grid_query((patch, patch), (hr_size, hr_size), (hr_size, hr_size))
    return lr, ref, query, hr, (hr_size, hr_size)


def step_time(name: str, scale: int, batch: int, patch: int, repeats: int,
              precision: str = "fp32") -> tuple[float, float]:
    from mrisr.training.losses import sr_loss

    from contextlib import nullcontext
    precision, _, compiled = precision.partition("+")  # "bf16+compile": torch.compile too
    torch.manual_seed(0)
    model = create_model(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if compiled == "compile" else model
    lr, ref, query, hr, spatial = _inputs(model, scale, batch, patch)
    def context():  # fp32 without mrisr.precision, which older checkouts lack
        if precision == "fp32":
            return nullcontext()
        from mrisr.precision import autocast
        return autocast(torch.device("cpu"), precision)
    weight = 0.01 if model.dims == 3 else 0.0  # CSR-dMRI's frequency loss

    def once() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        with context():
            pred = forward(lr, ref, query)
        pred = pred.reshape(hr.shape[0], 1, *spatial) if model.dims == 3 else pred
        loss, _ = sr_loss(pred, hr.reshape(pred.shape), len(spatial), weight, None, "all")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0, time.process_time() - c0
    once()  # warm-up: allocator and kernel selection (and compilation)
    times = [once() for _ in range(repeats)]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def child_times(name: str, scale: int, args, src: str | None, precision: str = "fp32"
                ) -> tuple[float, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    code = (f"import json, torch, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
            f"import train_step_speed as t; torch.set_num_threads({args.threads}); "
            f"print(json.dumps(t.step_time({name!r}, {scale}, {args.batch}, {args.patch}, "
            f"{args.repeats}, {precision!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return tuple(json.loads(proc.stdout.strip().splitlines()[-1]))


def side_by_side(args) -> None:
    precisions = args.precisions.split(",")
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"{args.patch}x{args.patch} LR patches (3D: 10^3), HR reference, median of "
          f"{args.repeats}; wall / CPU seconds per step; speed-up = old / this tree")
    print("| model | scale | old (fp32) | " + " | ".join(
        f"this tree {p} | speed-up {p} (wall / CPU)" for p in precisions) + " |")
    print("|---|---|---|" + "---|---|" * len(precisions))
    for name in args.models.split(","):
        for s in (int(v) for v in args.scales.split(",")):
            new = [child_times(name, s, args, None, p) for p in precisions]
            old = child_times(name, s, args, args.old_src)
            cells = [f"{n[0]:.2f} / {n[1]:.2f} | {old[0] / n[0]:.2f}x / {old[1] / n[1]:.2f}x"
                     for n in new]
            print(f"| {name} | x{s} | {old[0]:.2f} / {old[1]:.2f} | " + " | ".join(cells) +
                  " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--models", default="dualarbnet_ref,dualarbnet_s,liif_s")
    parser.add_argument("--scales", default="2,4")
    parser.add_argument("--old-src", default=None, help="src folder of another checkout")
    parser.add_argument("--precisions", default="fp32",
                        help="precisions of this tree, comma-separated (fp32, bf16; "
                             "bf16+compile: the model under torch.compile)")
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
