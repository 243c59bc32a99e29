"""Peak memory of writing one upscaled volume with mrisr's streaming NIfTI writer, beside a
whole-volume ``tobytes`` copy (how the writer worked before it wrote plane by plane), each in a
fresh process. The volume is the x4 in-plane output of a 240x240x155 scan (960x960x155 float32).

    python benchmarks/nifti_writer_memory.py [--shape 960,960,155]

Reported: the process's maximum resident set size (ru_maxrss) minus its size after the volume
was allocated and filled, i.e. what writing adds on top of the output array.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = """
import resource, sys, tempfile, os
import numpy as np
from mrisr.inference.streaming import StreamingNiftiWriter  # imported before measuring
shape = tuple(int(n) for n in sys.argv[1].split(","))
volume = np.random.default_rng(0).random(shape, dtype=np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "out.nii")
    if sys.argv[2] == "streaming":
        writer = StreamingNiftiWriter(path, shape, np.eye(4))
        writer.write_volume(volume)
        writer.close()
    else:
        with open(path, "wb") as f:
            f.write(volume.tobytes(order="F"))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="960,960,155")
    args = parser.parse_args()
    size = 4
    for n in args.shape.split(","):
        size *= int(n)
    print(f"volume {args.shape} float32: {size / 2 ** 20:.0f} MiB")
    print("| writer | added peak memory (MiB) |\n|---|---|")
    for kind in ("streaming", "whole-volume tobytes"):
        out = subprocess.run([sys.executable, "-c", CHILD, args.shape, kind.split()[0]],
                             capture_output=True, text=True, check=True).stdout
        print(f"| {kind} | {float(out):.0f} |")


if __name__ == "__main__":
    main()
