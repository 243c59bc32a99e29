#!/usr/bin/env python
"""How much faster bf16 can make the operations a training step is made of, on this CPU.

    python benchmarks/bf16_ceiling.py --threads 1 --repeats 5

Each operation is timed in float32 in the layout the fp32 path uses (training: channels-first;
2D inference: channels-last, ``mrisr.models.rdn.prefer_channels_last``) and in bfloat16 with
channels-last layouts and bfloat16 weights (the fastest bf16 form: no autocast copies), on
random tensors; the process CPU time per call, median of ``--repeats`` after a warm-up.
Convolutions are those of the presets, forward + backward: 3x3 at the compact presets' 32
channels and the paper preset's 64 (in a dense block, 64 channels in and up to 640 out: the
fanned-out form of ``mrisr.models.rdn``; its fusion at 128), 3x3x3 at 32 channels (the 3D encoder); and, forward
alone, the fusion's 32-channel convolutions at an output's resolution (inference). Work made
only of such operations can become at most the ratio column faster in bf16; element-wise work
(ReLU, additions, layout and dtype copies) gains less.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def _timed(fn, repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def matmul(n: int, dtype: torch.dtype, repeats: int) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n ** 3 / _timed(lambda: a @ b, repeats) / 1e9


def conv(dims: int, c_in: int, c_out: int, size: int, dtype: torch.dtype, repeats: int,
         batch: int = 6, backward: bool = True) -> float:
    """GFLOP/s of a 3x3(x3) convolution's forward + backward (3 convolutions' worth), or of
    its forward alone without gradients (inference)."""
    cls = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    layer = cls(c_in, c_out, 3, padding=1)
    x = torch.randn(batch, c_in, *(size,) * dims)
    if dtype == torch.bfloat16 or not backward:
        fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
        layer = layer.to(dtype=dtype, memory_format=fmt)
        x = x.to(dtype=dtype, memory_format=fmt)
    if backward:
        x.requires_grad_(True)

    def step():
        if backward:
            layer(x).sum().backward()
            return
        with torch.no_grad():
            layer(x)
    flops = (3 if backward else 1) * 2 * batch * c_in * c_out * 3 ** dims * size ** dims
    return flops / _timed(step, repeats) / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from mrisr.precision import cpu_has_fast_bf16
    print(f"torch {torch.__version__}, {args.threads} thread(s), bf16 units: "
          f"{cpu_has_fast_bf16()}; GFLOP/s of process CPU time, median of {args.repeats}")
    print("| operation | fp32 | bf16 | ratio |")
    print("|---|---|---|---|")
    cases = [("matmul 2048 x 2048", lambda d: matmul(2048, d, args.repeats))]
    for dims, c_in, c_out, size, what in ((2, 32, 32, 64, "compact presets"),
                                          (2, 64, 64, 64, "dualarbnet_ref"),
                                          (2, 64, 320, 64, "dualarbnet_ref, fanned out"),
                                          (2, 128, 128, 64, "dualarbnet_ref's fusion"),
                                          (3, 32, 32, 20, "csr_dmri_s")):
        shape = "x".join([str(size)] * dims)
        cases.append((f"conv {'3x3' if dims == 2 else '3x3x3'} {c_in}->{c_out}, batch 6 x "
                      f"{shape}, forward + backward ({what})",
                      lambda d, a=(dims, c_in, c_out, size): conv(*a, d, args.repeats)))
    # Inference: the fusion's 32-channel convolutions at the output's resolution.
    cases.append(("conv 3x3 32->32, one 256x256 slice, forward without gradients (the fusion "
                  "at output resolution, inference)",
                  lambda d: conv(2, 32, 32, 256, d, args.repeats, batch=1, backward=False)))
    for label, run in cases:
        fp32, bf16 = run(torch.float32), run(torch.bfloat16)
        print(f"| {label} | {fp32:.0f} | {bf16:.0f} | {bf16 / fp32:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
