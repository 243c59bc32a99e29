"""Where the time of `mrisr upscale` goes: a per-component profile of whole-volume runs, the
model's FLOPs per output voxel and the GFLOP/s it reaches against the machine's fp32 matmul.

The target is the brats18-tcia T2 of one subject with its T1 as the reference (240x240x155,
1 mm), or a slab of ``--slices`` slices around its middle (written to a temporary folder
first, not timed), upscaled in-plane through :func:`mrisr.inference.upscale.upscale_file`,
the function behind the CLI. Components (exclusive times, seconds):

* read / write: NIfTI reading and the streaming writer;
* reference resampling: the T1 placed on the reference grid (``resample_to_grid``);
* encoder / reference encoder: the RDN on the LR slices / on the reference slices;
* LR-side layers: the stems and skip input on the LR grids (LIIF: the first MLP layer's code part);
* fusion: Dual-ArbNet's fusion layers at output resolution (including any recomputation of them
  for the global pooling of tiled decoding);
* decoder (rest): the implicit decoder, skip branch, sampling, tiling and LIIF's MLP;
* interpolation: slices without a reference (cubic), and consistency: the data-consistency
  projection of the whole output; other: the rest (slice loop, normalisation, copies).

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one slice (convolutions
and matrix products, 2 FLOPs per multiply-add), attributed to the same components, and
multiplied by the number of slices that went through the model. The matmul peak is the best of
five 2048x2048 fp32 products with the same thread count.

    python benchmarks/upscale_profile.py --threads 2 --scales 2,4
    python benchmarks/upscale_profile.py --threads 1 --slices 6 --old-src /tmp/old/src

``--old-src`` runs the same profile of another checkout (its ``src`` folder, e.g. a
``git worktree`` of the previous commit) in a child process, alternating with this one
``--repeats`` times; the best time per version is reported. Data: $MRISR_DATA (default
../shared/data).
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

COMPONENTS = ["read", "reference resampling", "encoder", "reference encoder", "LR-side layers",
              "fusion", "decoder (rest)", "interpolation", "consistency", "write", "other"]


class Sections:
    """Exclusive wall time (and optionally FLOPs) per named section of nested calls."""

    def __init__(self):
        self.seconds = {name: 0.0 for name in COMPONENTS}
        self.flops = {name: 0 for name in COMPONENTS}
        self.stack: list = []
        self.counter = None

    def _flops(self) -> int:
        return self.counter.get_total_flops() if self.counter is not None else 0

    def wrap(self, owner, attr: str, name):
        original = getattr(owner, attr)
        sections = self

        def wrapper(*args, **kwargs):
            label = name(args) if callable(name) else name
            sections.stack.append([label, time.perf_counter(), 0.0, sections._flops(), 0])
            try:
                return original(*args, **kwargs)
            finally:
                label, t0, child_t, f0, child_f = sections.stack.pop()
                total_t = time.perf_counter() - t0
                total_f = sections._flops() - f0
                sections.seconds[label] += total_t - child_t
                sections.flops[label] += total_f - child_f
                if sections.stack:
                    sections.stack[-1][2] += total_t
                    sections.stack[-1][4] += total_f
        setattr(owner, attr, wrapper)


def instrument(sections: Sections) -> None:
    try:
        import mrisr.degradation.interpolation as interpolation
    except ImportError:  # an older checkout (--old-src): interpolate() lived in evaluation
        import mrisr.evaluation.methods as interpolation
    import mrisr.inference.predict as predict
    import mrisr.inference.upscale as up
    import mrisr.resample as resample
    from mrisr.inference.streaming import StreamingNiftiWriter
    from mrisr.models.dual_arbnet import ChannelSpatialAttention, DualArbNet, FusionLayer
    from mrisr.models.liif import LIIF

    sections.wrap(up, "load_nifti", "read")
    sections.wrap(StreamingNiftiWriter, "write_volume", "write")
    sections.wrap(resample, "resample_to_grid", "reference resampling")
    sections.wrap(up, "apply_consistency", "consistency")
    sections.wrap(interpolation, "interpolate", "interpolation")
    sections.wrap(predict, "decode_tiled", "decoder (rest)")
    calls = {"n": 0}

    def which_encoder(_args) -> str:  # encode() runs the target first, then the reference
        calls["n"] += 1
        return "encoder" if calls["n"] % 2 == 1 else "reference encoder"

    def encode_label(args) -> str:
        calls["n"] = 0
        return "LR-side layers"
    sections.wrap(DualArbNet, "encode", encode_label)
    sections.wrap(DualArbNet, "_features", which_encoder)
    sections.wrap(FusionLayer, "pre_attention", "fusion")
    sections.wrap(ChannelSpatialAttention, "forward", "fusion")
    original_liif_encoder = LIIF.encode

    def liif_encode(self, lr, reference=None):  # the RDN inside LIIF.encode is the encoder
        encoder = self.encoder
        if not getattr(encoder, "_profiled", False):
            sections.wrap(encoder, "forward", "encoder")
            encoder._profiled = True
        return original_liif_encoder(self, lr, reference)
    LIIF.encode = liif_encode
    sections.wrap(LIIF, "encode", "LR-side layers")


def matmul_peak(threads: int) -> float:
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 2048 ** 3 / best / 1e9


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def slab(root: Path, subject: str, n_slices: int, folder: Path) -> tuple[Path, Path]:
    """The subject's T2 and T1, or a central slab of ``n_slices`` slices of both."""
    import nibabel as nib
    import numpy as np

    paths = [root / f"{subject}_t2.nii.gz", root / f"{subject}_t1.nii.gz"]
    if not n_slices:
        return paths[0], paths[1]
    out = []
    for path in paths:
        img = nib.load(str(path))
        z0 = img.shape[2] // 2 - n_slices // 2
        data = np.asarray(img.dataobj, dtype=np.float32)[:, :, z0:z0 + n_slices]
        affine = img.affine.copy()
        affine[:3, 3] = img.affine[:3, :3] @ [0, 0, z0] + img.affine[:3, 3]
        dest = folder / path.name.replace(".nii.gz", ".nii")
        nib.save(nib.Nifti1Image(data, affine), str(dest))
        out.append(dest)
    return out[0], out[1]


def profile_once(target: Path, ref: Path, scale: float, threads: int, tile: int, model: str,
                 folder: Path, precision: str | None = None) -> dict:
    """One upscale_file run with every component timed, then the FLOPs of one slice."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import mrisr.inference.upscale as up
    from mrisr.io.nifti import load_nifti

    torch.set_num_threads(threads)
    sections = Sections()
    instrument(sections)
    use_ref = model.startswith("dualarbnet")
    kwargs = dict(scale=(scale, scale, 1), model=model, device="cpu", tile=tile,
                  overwrite=True, **({"precision": precision} if precision else {}))
    out = folder / f"sr_x{scale:g}.nii"
    t0 = time.perf_counter()
    up.upscale_file(target, out, ref if use_ref else None, **kwargs)
    total = time.perf_counter() - t0
    out.unlink()
    timed = dict(sections.seconds)
    timed["other"] = total - sum(v for k, v in timed.items() if k != "other")
    # FLOPs of one slice that goes through the model (the one in the middle of the slab)
    vol = load_nifti(target)
    k = vol.data.shape[2] // 2
    lr = vol.data[:, :, k]
    out_shape = tuple(int(round(n * scale)) for n in lr.shape)
    loaded = up.load_model(model, use_ref)
    reference = None
    if use_ref:
        ref_vol = load_nifti(ref)
        shape, aff = up.reference_grid(vol, ref_vol, 2)
        from mrisr.resample import resample_to_grid
        grid, _ = resample_to_grid(ref_vol.data, ref_vol.affine, aff, shape)
        reference = grid[:, :, k]
    counted = Sections()
    counter = FlopCounterMode(display=False)
    counted.counter = counter
    instrument(counted)
    upscaler = up.SliceUpscaler(loaded[0], torch.device("cpu"), loaded[1]["input"], tile,
                                **({"precision": precision} if precision else {}))
    with counter:
        upscaler._slice(lr, out_shape, reference)
    n_model = int(sum(1 for z in range(vol.data.shape[2]) if np.any(vol.data[:, :, z])))
    return {"scale": scale, "total": total, "seconds": timed, "flops_per_slice": counted.flops,
            "slice_voxels": out_shape[0] * out_shape[1], "model_slices": n_model,
            "peak_gflops": matmul_peak(threads)}


def table(results: list[dict]) -> str:
    rows = ["| component | " + " | ".join(r["label"] for r in results) + " |",
            "|---|" + "---|" * len(results)]
    for name in COMPONENTS:
        cells = []
        for r in results:
            s = r["seconds"][name]
            f = r["flops_per_slice"][name] * r["model_slices"]
            rate = f" ({f / s / 1e9:.0f} GFLOP/s)" if f and s > 0 else ""
            cells.append(f"{s:.2f}{rate}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rows.append("| **total** | " + " | ".join(f"**{r['total']:.2f}**" for r in results) + " |")
    rows.append("| model FLOPs per output voxel | " + " | ".join(
        f"{sum(r['flops_per_slice'].values()) / r['slice_voxels'] / 1e3:.0f} k"
        for r in results) + " |")
    rows.append("| model GFLOP/s (encoders to decoder) / matmul peak | " + " | ".join(
        _model_rate(r) for r in results) + " |")
    return "\n".join(rows)


def _model_rate(r: dict) -> str:
    parts = ["encoder", "reference encoder", "LR-side layers", "fusion", "decoder (rest)"]
    seconds = sum(r["seconds"][p] for p in parts)
    flops = sum(r["flops_per_slice"][p] for p in parts) * r["model_slices"]
    return f"{flops / seconds / 1e9:.0f} / {r['peak_gflops']:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scales", default="2,4")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--slices", type=int, default=0, help="central slab (0: all slices)")
    parser.add_argument("--model", default="dualarbnet_s")
    parser.add_argument("--subject", default="Brats18_TCIA13_623_1")
    parser.add_argument("--old-src", default=None,
                        help="src folder of another checkout, profiled alternately")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--precision", default=None, help="auto, fp32 or bf16 (this tree; "
                        "default: the upscale default)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = Path(os.environ.get("MRISR_DATA", "../shared/data")) / "brats18-tcia" / args.subject
    if not (root / f"{args.subject}_t2.nii.gz").exists():
        raise SystemExit(f"{root}: not found (set MRISR_DATA)")
    if args.child:
        with tempfile.TemporaryDirectory() as tmp:
            target, ref = slab(root, args.subject, args.slices, Path(tmp))
            for s in (float(v) for v in args.scales.split(",")):
                r = profile_once(target, ref, s, args.threads, args.tile, args.model, Path(tmp),
                                 args.precision)
                print("RESULT " + json.dumps(r), flush=True)
        return
    versions = [("this tree", None)] + ([("old", args.old_src)] if args.old_src else [])
    best: dict = {}
    for _ in range(args.repeats):
        for label, src in versions:
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            if src:
                env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
            cmd = [sys.executable, __file__, "--child"] + [
                a for a in sys.argv[1:] if not a.startswith("--old-src") and a != args.old_src]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr)
            for line in proc.stdout.splitlines():
                if line.startswith("RESULT "):
                    r = json.loads(line[7:])
                    key = (label, r["scale"])
                    if key not in best or r["total"] < best[key]["total"]:
                        best[key] = {**r, "label": f"{label} x{r['scale']:g}"}
    print(f"{args.model}, {args.threads} threads, tile {args.tile}, "
          f"{args.slices or 'all'} slices, best of {args.repeats}; seconds per component")
    print(table([best[k] for k in sorted(best, key=lambda k: (k[1], k[0] != 'old'))]))


if __name__ == "__main__":
    main()
