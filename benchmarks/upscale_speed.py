"""Time and peak memory of `mrisr upscale` on a brats18-tcia T2 volume (240x240x155) with its
T1 reference, in-plane x2, x3 and x4, each in a fresh process.

    python benchmarks/upscale_speed.py --threads 2 --scales 2,3,4

Peak memory is the process's maximum resident set size (ru_maxrss). Data: $MRISR_DATA
(default ../shared/data).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import resource, sys
from mrisr.cli.main import main
code = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def run(target: Path, ref: Path, scale: float, threads: int, tile: int, out_dir: Path) -> dict:
    out = out_dir / f"sr_x{scale:g}.nii"
    cmd = [sys.executable, "-c", CHILD, "upscale", str(target), "--ref", str(ref), "--scale",
           f"{scale},{scale},1", "-o", str(out), "--threads", str(threads), "--tile", str(tile),
           "--overwrite", "-q", "--device", "cpu"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    rss = int([line for line in proc.stdout.splitlines() if line.startswith("MAXRSS_KB")][0]
              .split()[1]) * 1024
    size = out.stat().st_size
    out.unlink()
    return {"scale": scale, "seconds": round(seconds, 1), "peak_rss_mb": round(rss / 2**20),
            "output_mb": round(size / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scales", default="2,3,4")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--subject", default="Brats18_TCIA13_623_1")
    args = parser.parse_args()
    root = Path(os.environ.get("MRISR_DATA", "../shared/data")) / "brats18-tcia" / args.subject
    target, ref = root / f"{args.subject}_t2.nii.gz", root / f"{args.subject}_t1.nii.gz"
    if not target.exists():
        raise SystemExit(f"{target}: not found (set MRISR_DATA)")
    print("| in-plane scale | output | time (s) | peak RSS (MB) | output file (MB) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for s in (float(v) for v in args.scales.split(",")):
            r = run(target, ref, s, args.threads, args.tile, Path(tmp))
            n = int(round(240 * s))
            print(f"| x{s:g} | {n}x{n}x155 | {r['seconds']} | {r['peak_rss_mb']} | "
                  f"{r['output_mb']} |", flush=True)
            print(json.dumps(r), file=sys.stderr)


if __name__ == "__main__":
    main()
