"""The ``mrisr`` command: a thin layer over the Python API.

Every expected failure (bad file, bad key, bad value) is a :class:`mrisr.errors.MrisrError`; it
is printed as one line ``mrisr: error: ...`` and the command exits with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from mrisr import __version__
from mrisr.errors import MrisrError


def _parse_scale(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"scale must be a number or comma-separated numbers, "
                                         f"got '{text}'") from None
    if any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"scale must be > 0, got '{text}'")
    return values


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mrisr.config import from_dict, load_yaml, merge
    from mrisr.configs import packaged_config
    from mrisr.evaluation.harness import EvaluateConfig, evaluate
    from mrisr.evaluation.report import write_report

    path = args.config or packaged_config("phantom_eval.yaml")
    data = merge(load_yaml(path), _overrides(args.set))
    if data.get("task") == "dmri3d":
        # 3D diffusion SR (CSR-dMRI Table 1 layout and tensor fidelity).
        from mrisr.evaluation.dmri import DmriEvaluateConfig, evaluate_dmri, write_dmri_report
        dcfg = from_dict(DmriEvaluateConfig, data, source=str(path))
        result = evaluate_dmri(dcfg, show_progress=not args.quiet)
        paths = write_dmri_report(result, Path(args.output or dcfg.output))
    else:
        cfg = from_dict(EvaluateConfig, data, source=str(path))
        result = evaluate(cfg, show_progress=not args.quiet)
        paths = write_report(result, Path(args.output or cfg.output))
    print(Path(paths["table"]).read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _overrides(items) -> dict:
    from mrisr.config import merge, parse_override
    out: dict = {}
    for item in items or []:
        out = merge(out, parse_override(item))
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from mrisr.training import load_train_config, train

    cfg = load_train_config(args.config, _overrides(args.set))
    if args.output:
        cfg.output = args.output
    final = train(cfg, resume=args.resume, show_progress=not args.quiet)
    if final is not None:
        print(f"wrote {final}")
    return 0


def _upscale_jobs(args) -> list[tuple[Path, Optional[Path], Path]]:
    """(target, reference, output) for a single file, a folder or a list file."""
    from mrisr.errors import InputError
    from mrisr.io.nifti import is_nifti_path

    target = Path(args.target)
    out = Path(args.output)
    if target.is_file() and is_nifti_path(target):
        return [(target, Path(args.ref) if args.ref else None, out)]
    if target.is_dir():
        pairs = [(p, None) for p in sorted(target.iterdir()) if is_nifti_path(p)]
        if args.ref:
            raise InputError(f"{target}: --ref applies to one target; for a batch give a list "
                             "file with 'target reference' per line")
    elif target.is_file():
        pairs = []
        for n, line in enumerate(target.read_text().splitlines(), 1):
            parts = line.split("#")[0].split()
            if not parts:
                continue
            if len(parts) > 2:
                raise InputError(f"{target}: line {n}: expected 'target [reference]'")
            base = target.parent
            pairs.append((base / parts[0], base / parts[1] if len(parts) == 2 else None))
    else:
        raise InputError(f"{target}: file not found")
    if not pairs:
        raise InputError(f"{target}: no NIfTI file to upscale")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: for several inputs the output must be a folder")
    out.mkdir(parents=True, exist_ok=True)
    return [(t, r, out / t.name) for t, r in pairs]


def cmd_upscale(args: argparse.Namespace) -> int:
    import torch

    from mrisr.inference.upscale import is_series_file, load_model, upscale_file
    from mrisr.progress import progress

    if args.threads:
        torch.set_num_threads(args.threads)
    jobs = _upscale_jobs(args)
    size = {"scale": None, "voxel_size": None, "shape": None}
    if args.scale:
        size["scale"] = args.scale if len(args.scale) > 1 else args.scale[0]
    if args.voxel_size:
        size["voxel_size"] = args.voxel_size if len(args.voxel_size) > 1 else args.voxel_size[0]
    if args.shape:
        size["shape"] = [int(round(v)) for v in args.shape]
    models = {}
    bar = progress(total=0, desc="upscale", unit="slice", disable=args.quiet)

    def grow(n: int) -> None:
        bar.total += n
        bar.refresh()
    try:
        for target, ref, out in jobs:
            # The default model depends on the reference and on whether the input is a series.
            key = (ref is not None, is_series_file(target))
            if key not in models:
                models[key] = load_model(args.model, *key)
            bar.set_description(f"upscale {target.name}")
            upscale_file(target, out, ref, overwrite=args.overwrite, memmap=args.memmap,
                         progress=bar.update, on_start=grow, loaded_model=models[key],
                         device=args.device, plane=args.plane, tile=args.tile, amp=args.amp,
                         register=args.register, **size)
            bar.write(f"wrote {out}")
    finally:
        bar.close()
    return 0


def cmd_degrade(args: argparse.Namespace) -> int:
    from mrisr.degradation import degrade_volume
    from mrisr.grid import voxel_sizes
    from mrisr.io import check_output_path, load_nifti, save_nifti

    out = check_output_path(args.output, overwrite=args.overwrite, inputs=(args.input,))
    vol = load_nifti(args.input, ndim=(3, 4))
    scale = args.scale if len(args.scale) > 1 else args.scale[0]
    lr, affine = degrade_volume(vol.data, vol.affine, scale, kind=args.kind)
    save_nifti(lr, affine, out, template=vol.header)
    sizes = ", ".join(f"{z:.4g}" for z in voxel_sizes(affine))
    print(f"wrote {out} {lr.shape}, voxel size {sizes} mm")
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    from mrisr.data.phantom import write_phantom

    out = Path(args.output)
    written = write_phantom(out, seed=args.seed, overwrite=args.overwrite)
    for p in written:
        print(f"wrote {p}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mrisr.demo import run_demo
    from mrisr.progress import progress

    bar = progress(total=0, desc="demo", unit="slice", disable=args.quiet)

    def grow(n: int) -> None:
        bar.total += n
        bar.refresh()
    try:
        result = run_demo(args.output, scale=args.scale, device=args.device,
                          progress=bar.update, on_start=grow, log=bar.write)
    finally:
        bar.close()
    print(result["table"])
    print(f"results in {Path(args.output).resolve()}: " +
          ", ".join(Path(p).name for p in result["files"].values()))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from mrisr.models.registry import PRESETS, weights_path

    print(f"{'preset':<24} {'weights':<8} description")
    for name, preset in sorted(PRESETS.items()):
        shipped = "shipped" if weights_path(name).exists() else "-"
        print(f"{name:<24} {shipped:<8} {preset.description}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from mrisr.degradation import DEGRADATIONS
    from mrisr.evaluation.methods import available_methods
    from mrisr.evaluation.metrics import PROTOCOLS

    print(f"mrisr {__version__}")
    print("methods:      " + ", ".join(available_methods()))
    print("degradations: " + ", ".join(DEGRADATIONS))
    print("protocols:    " + ", ".join(PROTOCOLS))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrisr", description="Arbitrary-scale MRI super-resolution with implicit neural "
        "representations.")
    parser.add_argument("--version", action="version", version=f"mrisr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("evaluate", help="run methods x scales x reference types on a dataset "
                       "and write CSV, Markdown tables and figures (a config with 'task: "
                       "dmri3d' runs the diffusion evaluation: PSNR/SSIM per direction and "
                       "tensor fidelity)")
    p.add_argument("config", nargs="?", help="YAML config (default: the embedded phantom)")
    p.add_argument("-o", "--output", help="output folder (default: the config's 'output')")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set dataset.split=train")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train a model from a YAML config (also under torchrun)")
    p.add_argument("config", help="training YAML (see configs/)")
    p.add_argument("-o", "--output", help="run folder (default: the config's 'output')")
    p.add_argument("--resume", metavar="CKPT", help="continue from a last.pt, or 'auto' to "
                   "continue from <output>/last.pt when present")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("upscale", help="super-resolve NIfTI images at any scale or voxel size, "
                       "optionally guided by a reference contrast at its own resolution")
    p.add_argument("target", help="NIfTI file (3D or 4D), a folder of them, or a list file "
                   "with 'target [reference]' per line")
    p.add_argument("--ref", help="reference contrast (any resolution, orientation and FOV)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--scale", type=_parse_scale, help="upscaling factor S or SX,SY,SZ")
    size.add_argument("--voxel-size", type=_parse_scale, help="output voxel size V or VX,VY,VZ "
                      "(mm; the FOV is kept, so the achieved size is FOV / round(FOV / V))")
    size.add_argument("--shape", type=_parse_scale, help="output shape NX,NY,NZ")
    p.add_argument("-o", "--output", required=True, help="output NIfTI (a folder for batches)")
    p.add_argument("--model", help="preset with shipped weights or checkpoint path (default: "
                   "csr_dmri_s for a 4D series with --ref when its weights are shipped, else "
                   "dualarbnet_s with --ref, liif_s without)")
    p.add_argument("--plane", default="auto", help="slice plane for 2D models: auto, axial, "
                   "coronal, sagittal or an axis 0/1/2 (default auto: the plane of the largest "
                   "upscaling factors, i.e. the acquisition plane for in-plane upscaling)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, help="CPU threads")
    p.add_argument("--tile", type=int, default=256, help="output tile size in voxels of 2D "
                   "models (bounded memory; results equal the untiled ones); 3D models tile "
                   "their encoder and decode in chunks of points by themselves")
    p.add_argument("--memmap", action="store_true", help="keep the output array on disk "
                   "(memory-mapped) instead of in memory")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    p.add_argument("--register", action=argparse.BooleanOptionalAction, default=None,
                   help="3D models: rigidly register --ref to the mean b=0 before placing it "
                   "(needs dipy; default: as the model was trained)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("degrade", help="simulate a low-resolution acquisition of a NIfTI image")
    p.add_argument("input", help="NIfTI volume or 4D series")
    p.add_argument("-o", "--output", required=True, help="output NIfTI")
    p.add_argument("--scale", required=True, type=_parse_scale,
                   help="degradation factor S or SX,SY,SZ (> 0; 1 keeps an axis)")
    p.add_argument("--kind", default="kspace", choices=["kspace", "bicubic", "bicubic_aa",
                                                        "thick_slice"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_degrade)

    p = sub.add_parser("phantom", help="write the embedded multi-contrast and diffusion phantom "
                       "as NIfTI files")
    p.add_argument("-o", "--output", required=True, help="output folder (created)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("demo", help="degrade the embedded phantom and upscale it with the "
                       "shipped models and cubic interpolation (no data needed)")
    p.add_argument("-o", "--output", default="mrisr-demo", help="output folder (default: "
                   "./mrisr-demo)")
    p.add_argument("--scale", type=float, default=2.0, help="in-plane factor (default 2)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list model presets and which have shipped weights")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="list methods, degradations and metric protocols")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except MrisrError as exc:
        print(f"mrisr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mrisr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
