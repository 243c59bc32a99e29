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
    from mrisr.config import from_dict, load_yaml, merge, parse_override
    from mrisr.configs import packaged_config
    from mrisr.evaluation.harness import EvaluateConfig, evaluate
    from mrisr.evaluation.report import write_report

    path = args.config or packaged_config("phantom_eval.yaml")
    overrides = {}
    for item in args.set or []:
        overrides = merge(overrides, parse_override(item))
    data = merge(load_yaml(path), overrides)
    cfg = from_dict(EvaluateConfig, data, source=str(path))
    out_dir = Path(args.output or cfg.output)
    result = evaluate(cfg, show_progress=not args.quiet)
    paths = write_report(result, out_dir)
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

    paths = run_demo(args.output, show_progress=not args.quiet)
    print(Path(paths["table"]).read_text())
    print(f"results in {Path(args.output).resolve()}: {', '.join(p.name for p in paths.values())}")
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
                       "and write CSV, Markdown tables and figures")
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

    p = sub.add_parser("demo", help="run the main job on the embedded phantom (no data needed)")
    p.add_argument("-o", "--output", default="mrisr-demo", help="output folder (default: "
                   "./mrisr-demo)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

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
