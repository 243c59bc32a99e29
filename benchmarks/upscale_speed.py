"""Time and peak memory of `mrisr upscale` on a brats18-tcia T2 volume (240x240x155) with its
T1 reference, in-plane x2, x3 and x4, each in a fresh process.

    python benchmarks/upscale_speed.py --threads 2 --scales 2,3,4
    python benchmarks/upscale_speed.py --threads 1 --scales 2,4 --slices 6 --repeats 3 \
        --old-src /tmp/old/src        # side by side with another checkout

Peak memory is the process's maximum resident set size (ru_maxrss). ``--slices N`` upscales a
central slab of N slices (written to a temporary folder first; the per-slice work is the
whole volume's). ``--old-src`` names the ``src`` folder of another checkout (e.g. ``git
worktree add /tmp/old HEAD~1``): each run of that checkout (``PYTHONPATH``) is followed by one
of this tree per ``--precisions`` entry, ``--repeats`` times, and the best wall and process CPU
time (robust to other jobs with ``--threads 1``) and the largest peak of each are reported with
their ratios. Data: $MRISR_DATA (default ../shared/data).

    python benchmarks/upscale_speed.py --threads 1 --scales 2,4 --slices 40 \
        --old-src /tmp/old/src --precisions fp32,bf16     # the compute issue's table
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
usage = resource.getrusage(resource.RUSAGE_SELF)
print("MAXRSS_KB", usage.ru_maxrss)
print("CPU_S", usage.ru_utime + usage.ru_stime)
sys.exit(code)
"""


def run(target: Path, ref: Path, scale: float, threads: int, tile: int, out_dir: Path,
        model: str | None = None, src: str | None = None, precision: str | None = None
        ) -> dict:
    out = out_dir / f"sr_x{scale:g}.nii"
    cmd = [sys.executable, "-c", CHILD, "upscale", str(target), "--scale",
           f"{scale},{scale},1", "-o", str(out), "--threads", str(threads), "--tile", str(tile),
           "--overwrite", "-q", "--device", "cpu"]
    if model is None or model.startswith("dualarbnet"):
        cmd += ["--ref", str(ref)]
    if model is not None:
        cmd += ["--model", model]
    if precision is not None:
        cmd += ["--precision", precision]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    def value(key: str) -> float:
        return float([line for line in proc.stdout.splitlines() if line.startswith(key)][0]
                     .split()[1])
    rss = int(value("MAXRSS_KB")) * 1024
    size = out.stat().st_size
    out.unlink()
    return {"scale": scale, "seconds": round(seconds, 1), "cpu_seconds": round(value("CPU_S"), 1),
            "peak_rss_mb": round(rss / 2**20), "output_mb": round(size / 2**20)}


def side_by_side(args, target: Path, ref: Path, tmp: Path) -> None:
    """Each repeat runs the old checkout, then this tree once per ``--precisions`` entry (none:
    its default); the best wall and CPU time of each, and the ratios old / this tree."""
    precisions = args.precisions.split(",") if args.precisions else [None]
    print(f"{args.model or 'default model'}, {args.threads} threads, tile {args.tile}, "
          f"{args.slices or 'all'} slices, best of {args.repeats}; wall / process CPU "
          "seconds, speed-up = old / this tree, peak RSS (MB)")
    print("| in-plane scale | old | " + " | ".join(
        f"this tree {p or 'default'} | speed-up" for p in precisions) + " | peak RSS old / new |")
    print("|---|---|" + "---|---|" * len(precisions) + "---|")
    for s in (float(v) for v in args.scales.split(",")):
        new: dict = {p: [] for p in precisions}
        old = []
        for _ in range(args.repeats):
            old.append(run(target, ref, s, args.threads, args.tile, tmp, args.model,
                           args.old_src))
            for p in precisions:
                new[p].append(run(target, ref, s, args.threads, args.tile, tmp, args.model,
                                  precision=p))
            print(json.dumps({"old": old[-1], **{str(p): new[p][-1] for p in precisions}}),
                  file=sys.stderr, flush=True)

        def best(rows: list, key: str) -> float:
            return min(r[key] for r in rows)
        cells = []
        for p in precisions:
            w, c = best(new[p], "seconds"), best(new[p], "cpu_seconds")
            cells.append(f"{w} / {c} | {best(old, 'seconds') / w:.2f}x / "
                         f"{best(old, 'cpu_seconds') / c:.2f}x")
        peak_new = max(r["peak_rss_mb"] for p in precisions for r in new[p])
        print(f"| x{s:g} | {best(old, 'seconds')} / {best(old, 'cpu_seconds')} | " +
              " | ".join(cells) + f" | {max(r['peak_rss_mb'] for r in old)} / {peak_new} |",
              flush=True)


def main() -> None:
    import nibabel as nib
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scales", default="2,3,4")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--subject", default="Brats18_TCIA13_623_1")
    parser.add_argument("--model", default=None, help="--model of mrisr upscale (default: its)")
    parser.add_argument("--slices", type=int, default=0, help="central slab (0: all slices)")
    parser.add_argument("--old-src", default=None, help="src folder of another checkout")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--precisions", default=None,
                        help="this tree's --precision values, comma-separated (default: none "
                        "given, i.e. its default)")
    args = parser.parse_args()
    root = Path(os.environ.get("MRISR_DATA", "../shared/data")) / "brats18-tcia" / args.subject
    target, ref = root / f"{args.subject}_t2.nii.gz", root / f"{args.subject}_t1.nii.gz"
    if not target.exists():
        raise SystemExit(f"{target}: not found (set MRISR_DATA)")
    if args.slices or args.old_src:
        with tempfile.TemporaryDirectory() as tmp:
            if args.slices:
                paths = []
                for path in (target, ref):
                    img = nib.load(str(path))
                    z0 = img.shape[2] // 2 - args.slices // 2
                    affine = img.affine.copy()
                    affine[:3, 3] = img.affine[:3, :3] @ [0, 0, z0] + img.affine[:3, 3]
                    data = np.asarray(img.dataobj, np.float32)[:, :, z0:z0 + args.slices]
                    paths.append(Path(tmp) / path.name.replace(".nii.gz", ".nii"))
                    nib.save(nib.Nifti1Image(data, affine), str(paths[-1]))
                target, ref = paths
            if args.old_src:
                side_by_side(args, target, ref, Path(tmp))
                return
            for s in (float(v) for v in args.scales.split(",")):
                r = run(target, ref, s, args.threads, args.tile, Path(tmp), args.model)
                print(json.dumps(r))
        return
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
