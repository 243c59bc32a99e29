"""The ``mrisr`` command: a thin layer over the Python API.

Every expected failure (bad file, bad key, bad value, an output that cannot be written) is a
:class:`mrisr.errors.MrisrError`; it is printed as one line ``mrisr: error: ...`` and the command
exits with status 2. SIGINT and SIGTERM remove the temporary files and exit with 130 and 143;
a batch in which some inputs failed exits with 3 after a summary.

Arguments, inputs' headers and outputs are checked before torch is imported (seconds on a cold
start), so listings and early errors are immediate.
"""
from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_starting(signum, frame) -> None:
    """Ctrl-C or SIGTERM before :func:`main` runs (the imports of a cold start take a tenth
    of a second or more) or after it has returned: nothing is being written, so one line and
    the exit status at once."""
    sys.stderr.write("mrisr: interrupted\n")
    sys.stderr.flush()
    os._exit(128 + signum)


# Only when this process is the mrisr command (the console script, or python -m), never when
# a program imports this module. SIGTERM last: once it is caught (/proc/PID/status), both are.
if __name__ == "__main__" or os.path.basename(sys.argv[0] if sys.argv else "") == "mrisr":
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, _interrupted_while_starting)

import argparse  # noqa: E402  (after the signal handlers: these imports take time)
import contextlib  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import threading  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator, Optional, Sequence  # noqa: E402

from mrisr.config import MAX_SCALE  # noqa: E402
from mrisr.errors import InputError, MrisrError, MrisrWarning  # noqa: E402
from mrisr.precision import PRECISIONS  # noqa: E402

#: Exit status of a batch that ran to its end with some inputs failed (the others written).
EXIT_BATCH_FAILED = 3


#: Bounds of the numeric options, checked by the parser before any arithmetic: beyond them a
#: value is a slip of the keyboard, and arithmetic on it overflows (a scale of 1e308 gives an
#: infinite number of voxels) or never ends.
SCALE_RANGE = (1e-3, MAX_SCALE)  # --scale per axis
VOXEL_SIZE_RANGE = (1e-3, 1e3)  # --voxel-size, mm: a micron to a metre
SHAPE_RANGE = (1, 32767)  # --shape: NIfTI-1 holds at most 32767 voxels along an axis
THREADS_RANGE = (1, 4096)
TILE_RANGE = (1, 32767)
ADAPT_STEPS_RANGE = (0, 1_000_000)
SEED_RANGE = (0, 2 ** 32 - 1)  # numpy's seeds
DEMO_SCALE_RANGE = (1.0, 16.0)  # the demo phantom has 80 slices; x16 leaves 5


def _numbers(count: tuple[int, ...] = (1, 3), integer: bool = False,
             bounds: tuple[float, float] = SCALE_RANGE):
    """argparse type: ``V`` or ``VX,VY,VZ`` (``count`` values), finite, > 0 and within
    ``bounds``; the message is prefixed with the option's name by :class:`_Parser`."""
    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number or comma-separated numbers, "
                                             f"got '{text}'") from None
        if len(values) not in count:
            raise argparse.ArgumentTypeError(
                f"must be {' or '.join(str(c) for c in count)} comma-separated values, "
                f"got '{text}'")
        if any(not (math.isfinite(v) and v > 0) for v in values):
            raise argparse.ArgumentTypeError(f"must be finite and > 0, got '{text}'")
        if any(not bounds[0] <= v <= bounds[1] for v in values):
            raise argparse.ArgumentTypeError(f"must be between {bounds[0]:g} and "
                                             f"{bounds[1]:g}, got '{text}'")
        if integer and any(v != int(v) for v in values):
            raise argparse.ArgumentTypeError(f"must be whole numbers of voxels, got '{text}'")
        return values
    return parse


_parse_scale = _numbers()


def _number_in(low: float, high: float):
    """argparse type: one number within ``[low, high]``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be a number between {low:g} and {high:g}, "
                                             f"got '{text}'")
        return value
    return parse


def _integer_in(low: int, high: int):
    """argparse type: one whole number within ``[low, high]``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}, "
                                             f"got '{text}'")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got '{text}'")
    return value


def _positive_int(text: str, high: int = THREADS_RANGE[1]) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got '{text}'")
    if value > high:
        raise argparse.ArgumentTypeError(f"must be a positive integer of at most {high}, "
                                         f"got '{text}'")
    return value


def _tile(text: str) -> int:
    return _positive_int(text, TILE_RANGE[1])


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line in the format of every other failure:
    ``mrisr: error: --scale: must be > 0, got '0'`` (exit status 2)."""

    def error(self, message: str):
        if message.startswith("argument "):
            option, _, problem = message[len("argument "):].partition(": ")
            message = f"{option.split('/')[-1]}: {problem}"
        self.exit(2, f"mrisr: error: {message} (see '{self.prog} --help')\n")


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the program is, so that every ``finally`` and
    ``except BaseException`` on the way out removes its temporary files."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


@contextlib.contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """SIGTERM (what job schedulers send at a time limit) handled like SIGINT; signals that
    arrive during the clean-up are ignored (it is short)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # SIGTERM first: a SIGINT that comes before its own handler still raises
    # KeyboardInterrupt, which main() reports, while an early SIGTERM would end the process
    # without a word.
    signals = (signal.SIGTERM, signal.SIGINT)

    def handler(signum, frame):
        for s in signals:
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)
    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """:class:`MrisrWarning` printed as ``mrisr: warning: <file>: <what>``, every time."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", MrisrWarning)
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, MrisrWarning):
                print(f"mrisr: warning: {message}", file=sys.stderr)
            else:
                original(message, category, filename, lineno, file, line)
        warnings.showwarning = show
        yield


class _StderrLines(logging.Handler):
    """Library log records as ``mrisr: warning: <library>: <message>`` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = " ".join(record.getMessage().split())
            print(f"mrisr: {record.levelname.lower()}: {record.name.split('.')[0]}: {text}",
                  file=sys.stderr)
        except Exception:  # logging must never break the command
            self.handleError(record)


@contextlib.contextmanager
def _library_logs_to_stderr() -> Iterator[None]:
    """Library logs (warnings and above) on stderr, never on stdout: dipy installs a stdout
    handler of its own (when the root logger has none), nibabel a bare stderr one; both give
    way to one handler on the root logger. nibabel's error records are dropped: they become
    exceptions, which are reported as ``mrisr: error``."""
    root = logging.getLogger()
    handler = _StderrLines(logging.WARNING)
    root.addHandler(handler)
    saved = []
    for name in ("dipy", "nibabel.global"):
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.propagate = True
    nib_errors = logging.Filter()
    nib_errors.filter = lambda record: record.levelno < logging.ERROR
    logging.getLogger("nibabel.global").addFilter(nib_errors)
    try:
        yield
    finally:
        logging.getLogger("nibabel.global").removeFilter(nib_errors)
        for logger, handlers, propagate in saved:
            for h in handlers:
                logger.addHandler(h)
            logger.propagate = propagate
        root.removeHandler(handler)


def _sweep(folder) -> None:
    """Remove what interrupted runs left in an output folder; report what cannot be judged."""
    from mrisr.io.atomic import sweep_stale

    removed, unknown = sweep_stale(folder)
    if removed:
        print(f"mrisr: removed {len(removed)} temporary file(s) left in "
              f"{os.path.abspath(folder)} by interrupted runs: "
              f"{', '.join(p.name for p in removed)}", file=sys.stderr)
    for path in unknown:
        print(f"mrisr: warning: {os.path.abspath(path)}: temporary file of an interrupted mrisr "
              "run (another host's or an older version's); remove it if no run is writing it",
              file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mrisr import evaluation

    def sweep(folder: Path) -> None:
        if folder.is_dir():
            _sweep(folder)
    run = evaluation.run(args.config, overrides=_overrides(args.set), output=args.output,
                         show_progress=not args.quiet, before=sweep, precision=args.precision,
                         overwrite=args.overwrite)
    print(Path(run.paths["table"]).read_text())
    print(f"wrote {', '.join(str(p) for p in run.paths.values())}")
    return 0


def _overrides(items) -> dict:
    from mrisr.config import merge, parse_override
    out: dict = {}
    for item in items or []:
        out = merge(out, parse_override(item))
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from mrisr.training import check_run_folder, load_train_config, train

    cfg = load_train_config(args.config, _overrides(args.set))
    if args.output:
        cfg.output = args.output
    if args.precision:
        cfg.run.precision, cfg.run.amp = args.precision, True
    if args.session_minutes:
        cfg.run.session_minutes = args.session_minutes
    check_run_folder(cfg.output, args.resume, args.overwrite)
    if os.environ.get("RANK", "0") == "0" and Path(cfg.output).is_dir():
        _sweep(cfg.output)
    validator = None
    if cfg.validation.every:
        # Training knows nothing of evaluation: its periodic validation is given to it.
        from mrisr.evaluation.validation import slice_validator
        validator = slice_validator(cfg.validation.evaluate, cfg.data.input)
    final = train(cfg, resume=args.resume, overwrite=args.overwrite,
                  show_progress=not args.quiet, validator=validator)
    if final is not None:
        print(f"wrote {final}")
    elif os.environ.get("RANK", "0") == "0":
        again = " ".join(shlex.quote(a) for a in [
            args.config, *(["-o", args.output] if args.output else []),
            *(f"--set={item}" for item in args.set or []),
            *(["--precision", args.precision] if args.precision else []),
            *(["--session-minutes", f"{args.session_minutes:g}"] if args.session_minutes
              else [])])
        print(f"stopped after this invocation's {cfg.run.session_minutes:g} minutes with "
              f"{Path(cfg.output) / 'last.pt'}; continue with: mrisr train {again} "
              "--resume auto")
    return 0


def _batch_summary(summary) -> int:
    """Print a :class:`~mrisr.inference.batch.BatchSummary`; the exit status of the batch."""
    skipped = f", {len(summary.skipped)} skipped (written before)" if summary.skipped else ""
    print(f"mrisr: batch summary: {len(summary.written)} written{skipped}, "
          f"{len(summary.failed)} failed", file=sys.stderr)
    for out in summary.written:
        print(f"  written: {out}", file=sys.stderr)
    for _, reason in summary.failed:
        print(f"  failed:  {reason}", file=sys.stderr)
    return EXIT_BATCH_FAILED if summary.failed else 0


def _add_switch(parser: argparse.ArgumentParser, name: str, help: str, off_help: str) -> None:
    """``--NAME`` (``on``) and ``--no-NAME`` (``off``) of an option whose default is ``auto``."""
    both = parser.add_mutually_exclusive_group()  # --X --no-X together is refused
    both.add_argument(f"--{name}", action="store_const", const="on", default="auto",
                      help=help)
    both.add_argument(f"--no-{name}", dest=name, action="store_const", const="off",
                      help=off_help)


def _weight_option(text: str):
    from mrisr.errors import InputError
    from mrisr.inference.decisions import weight_option

    try:
        weight_option(text, "the option")
    except InputError:
        raise argparse.ArgumentTypeError(f"expected auto, on, off or a weight in [0, 1], "
                                         f"got '{text}'") from None
    return text


def _adapt_steps(text: str):
    # argparse passes a bare --adapt's const ("default") through this type as well.
    if text in ("auto", "default"):
        return text
    try:
        steps = int(text)
    except ValueError:
        steps = -1
    if steps < 0:
        raise argparse.ArgumentTypeError(f"steps must be a whole number >= 0 (e.g. --adapt 40; "
                                         f"0: never), got '{text}'")
    if steps > ADAPT_STEPS_RANGE[1]:
        raise argparse.ArgumentTypeError(f"steps must be at most {ADAPT_STEPS_RANGE[1]}, "
                                         f"got '{text}'")
    return steps


def _shard(text: str) -> str:
    """argparse type of --shard: ``K/N`` checked here, ``slurm`` read when the batch is made."""
    from mrisr.inference.batch import resolve_shard

    if text.strip().lower() != "slurm":
        try:
            resolve_shard(text)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("--shard: ")) from None
    return text


def cmd_upscale(args: argparse.Namespace) -> int:
    from mrisr.inference.batch import UpscaleBatch
    from mrisr.progress import progress

    # Everything that can be checked is checked before torch is imported and before any work
    # (UpscaleBatch): arguments (by the parser), names of the batch, the model's name, each
    # output and the headers of the inputs. In a batch a failed input is reported and the
    # others go on.
    bids = None
    if args.bids:
        bids = {"suffixes": (args.suffix or "T2w").split(","),
                "ref_suffix": args.ref_suffix}
    else:
        for given, option in ((args.suffix, "--suffix"), (args.ref_suffix, "--ref-suffix")):
            if given is not None:
                raise InputError(f"{option}: applies to BIDS datasets only; add --bids (with "
                                 f"the dataset's root as the target) or drop {option}")
    batch = UpscaleBatch(args.target, args.output, args.ref, model=args.model,
                         overwrite=args.overwrite, fail_fast=args.fail_fast,
                         on_error=lambda job, exc: print(f"mrisr: error: {exc}",
                                                         file=sys.stderr),
                         bids=bids, shard=args.shard)
    if batch.shard is not None:
        print(f"mrisr: part {batch.shard[0]} of {batch.shard[1]}: {len(batch.jobs)} of the "
              f"batch's {batch.planned} input(s)", file=sys.stderr)
    if batch.skipped:
        print(f"mrisr: {len(batch.skipped)} output(s) exist from an earlier run, skipped "
              "(--overwrite to write them again)", file=sys.stderr)
    for folder in batch.output_folders:
        _sweep(folder)
    size = {"scale": None, "voxel_size": None, "shape": None}
    if args.scale:
        size["scale"] = args.scale if len(args.scale) > 1 else args.scale[0]
    if args.voxel_size:
        size["voxel_size"] = args.voxel_size if len(args.voxel_size) > 1 else args.voxel_size[0]
    if args.shape:
        size["shape"] = [int(round(v)) for v in args.shape]
    # Shown after a second: a run that fails at once prints its error line alone.
    bar = progress(total=0, desc="upscale", unit="slice", disable=args.quiet, delay=1.0)

    def grow(n: int) -> None:
        bar.total += n  # shown at the next update (no refresh: it would show the bar now)
    try:
        summary = batch.run(
            adapt=args.adapt, threads=args.threads, progress=bar.update, on_start=grow,
            on_job=lambda job: bar.set_description(f"upscale {job.target.name}",
                                                   refresh=False),
            on_error=lambda job, exc: bar.write(f"mrisr: error: {exc}", file=sys.stderr),
            on_written=lambda job: bar.write(f"wrote {job.output}"),
            memmap=args.memmap, device=args.device, plane=args.plane, tile=args.tile,
            precision=args.precision, register=args.register, consistency=args.consistency,
            calibrate=args.calibrate, tensor_consistency=args.tensor_consistency,
            reference_transfer=args.reference_transfer, qc=args.qc, **size)
    finally:
        bar.close()
    if summary.report is not None:
        print(f"wrote {summary.report}")
    return _batch_summary(summary) if summary.batch else 0


def _check_degrade_scales(scales: list[float], shape: Sequence[int], allow_upsampling: bool
                          ) -> None:
    if any(s < 1 for s in scales) and not allow_upsampling:
        raise InputError(f"--scale: {','.join(f'{s:g}' for s in scales)} is below 1, which "
                         "upsamples rather than degrades; add --allow-upsampling to do it")
    for axis, (n, s) in enumerate(zip(shape, scales)):
        kept = max(1, int(round(n / s)))  # mrisr.grid.downscaled_shape
        if s > 1 and kept < 2:
            raise InputError(f"--scale: {s:g} leaves {kept} voxel of {n} along axis {axis}; "
                             f"give a scale of at most {n / 1.5:.4g} there (two voxels kept)")


def cmd_degrade(args: argparse.Namespace) -> int:
    from mrisr.io.atomic import output_locks
    from mrisr.io.dwi import b_table_files, companion_paths, series_b_tables
    from mrisr.io.nifti import check_nifti_header, check_output_files

    shape = check_nifti_header(args.input)
    n_volumes = shape[3] if len(shape) > 3 else 1
    # A series' b-tables go with it, as outputs like the image: checked before any work.
    tables = {ext: src for ext, src in zip((".bval", ".bvec"), b_table_files(args.input))
              if src is not None and n_volumes > 1}
    companions = check_output_files(args.output, tuple(tables), overwrite=args.overwrite,
                                    inputs=(args.input,))
    out = Path(args.output)
    if n_volumes > 1:
        series_b_tables(args.input, n_volumes)
        if ".bval" not in tables:
            copied = "only its .bvec is copied" if tables else "no .bval/.bvec is written"
            warnings.warn(MrisrWarning(f"{args.input}: 4D series without "
                                       f"{companion_paths(args.input)[0].name} beside it: "
                                       f"b-values unknown, so {copied}"))
    scales = list(args.scale) * 3 if len(args.scale) == 1 else list(args.scale)
    _check_degrade_scales(scales, shape[:3], args.allow_upsampling)
    _sweep(out.parent)

    import shutil

    import nibabel as nib

    from mrisr.degradation import degrade_volume
    from mrisr.grid import voxel_sizes
    from mrisr.io import load_nifti
    from mrisr.io.atomic import atomic_paths
    from mrisr.io.nifti import check_magnitude, make_nifti

    with output_locks([out, *companions]):
        vol = load_nifti(args.input, ndim=(3, 4))
        note = check_magnitude(vol.data, args.input)
        if note:
            warnings.warn(MrisrWarning(note))
        lr, affine = degrade_volume(vol.data, vol.affine, scales, kind=args.kind)
        try:
            with atomic_paths([out, *companions], replace=args.overwrite) as (tmp, *copies):
                nib.save(make_nifti(lr, affine, vol.header), str(tmp))
                for path, copy in zip(companions, copies):
                    shutil.copyfile(tables[path.suffix], copy)
        except OSError as exc:
            raise InputError(f"{exc.filename or out}: {exc.strerror or exc}") from None
    sizes = ", ".join(f"{z:.4g}" for z in voxel_sizes(affine))
    print(f"wrote {out} {lr.shape}, voxel size {sizes} mm")
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    from mrisr.data.phantom import write_phantom

    out = Path(args.output)
    if out.is_dir():
        _sweep(out)
    written = write_phantom(out, seed=args.seed, overwrite=args.overwrite)
    for p in written:
        print(f"wrote {p}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mrisr.demo import run_demo
    from mrisr.progress import progress

    # Shown after a second (as upscale's): a demo that fails at once prints its error alone.
    bar = progress(total=0, desc="demo", unit="slice", disable=args.quiet, delay=1.0)

    def grow(n: int) -> None:
        bar.total += n  # shown at the next update (a refresh would show the bar now)
    try:
        result = run_demo(args.output, scale=args.scale, device=args.device,
                          overwrite=args.overwrite,
                          progress=bar.update, on_start=grow, log=bar.write, case=args.case)
    finally:
        bar.close()
    print(result["table"])
    print(f"results in {Path(args.output).resolve()}: " +
          ", ".join(Path(p).name for p in result["files"].values()))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from mrisr.cli.catalog import INTERPOLATIONS, read_presets, weights_path

    print(f"{'preset':<24} {'weights':<8} description")
    for name, preset in sorted(read_presets().items()):
        shipped = "shipped" if weights_path(name).exists() else "-"
        print(f"{name:<24} {shipped:<8} {preset.description}")
    print(f"interpolation baselines (upscale --model): {', '.join(INTERPOLATIONS)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from mrisr.cli.catalog import METHODS, PROTOCOLS, degradations

    from mrisr import __version__

    print(f"mrisr {__version__}")
    print("methods:      " + ", ".join(METHODS))
    print("degradations: " + ", ".join(degradations()))
    print("protocols:    " + ", ".join(PROTOCOLS))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mrisr.cli.catalog import degradations

    parser = _Parser(
        prog="mrisr", description="Arbitrary-scale MRI super-resolution with implicit neural "
        "representations.")
    from mrisr import __version__

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
    p.add_argument("--overwrite", action="store_true", help="replace the report files of an "
                   "earlier run in the output folder")
    p.add_argument("--precision", choices=PRECISIONS, help="arithmetic of every evaluated "
                   "network (default: each method's args.precision, else auto = bf16 where the "
                   "device has fast bf16 units)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train a model from a YAML config (also under torchrun)")
    p.add_argument("config", help="training YAML (see configs/)")
    p.add_argument("-o", "--output", help="run folder (default: the config's 'output')")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", metavar="CKPT", help="continue from a last.pt, or 'auto' to "
                       "continue from <output>/last.pt when present (a run folder that holds a "
                       "run is refused without --resume or --overwrite)")
    again.add_argument("--overwrite", action="store_true", help="start over in a run folder "
                       "that holds a run (its log.csv and checkpoints are replaced)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--precision", choices=PRECISIONS, help="arithmetic of the forward pass "
                   "(default: the config's run.precision, auto = bf16 where the device has "
                   "fast bf16 units)")
    p.add_argument("--session-minutes", type=_positive_float, metavar="MIN",
                   help="stop cleanly after MIN minutes of this invocation, keeping last.pt; "
                   "continue later (on any machine) with --resume auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("upscale", help="super-resolve NIfTI images at any scale or voxel size, "
                       "optionally guided by a reference contrast at its own resolution")
    p.add_argument("target", help="NIfTI file (3D or 4D), a folder of them, or a list file "
                   "with 'target [reference]' per line")
    p.add_argument("--ref", help="reference contrast (any resolution, orientation and FOV)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--scale", type=_parse_scale, help="upscaling factor S or SX,SY,SZ")
    size.add_argument("--voxel-size", type=_numbers(bounds=VOXEL_SIZE_RANGE),
                      help="output voxel size V or VX,VY,VZ (mm, whatever the unit of the "
                      "file's header; the FOV is kept, so the achieved size is "
                      "FOV / round(FOV / V))")
    size.add_argument("--shape", type=_numbers((3,), integer=True, bounds=SHAPE_RANGE),
                      help="output shape NX,NY,NZ")
    p.add_argument("-o", "--output", required=True, help="output NIfTI (a folder for batches)")
    p.add_argument("--model", help="preset with shipped weights, checkpoint path, or an "
                   "interpolation baseline: nearest, linear, cubic, kspace_zerofill (default: "
                   "dualarbnet_robust with --ref, liif_robust without, cubic for a 4D series, "
                   "where no shipped 3D model beats it on other scanners)")
    p.add_argument("--plane", default="auto",
                   choices=["auto", "axial", "coronal", "sagittal", "0", "1", "2"],
                   help="slice plane for 2D models: auto, axial, coronal, sagittal or an axis "
                   "0/1/2 (default auto: the plane of the largest upscaling factors, i.e. the "
                   "acquisition plane for in-plane upscaling)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=_positive_int, help="CPU threads")
    p.add_argument("--tile", type=_tile, default=256, help="output tile size in "
                   "voxels of 2D models (bounded memory; results equal the untiled ones); 3D "
                   "models tile their encoder and decode in chunks of points by themselves")
    p.add_argument("--memmap", action="store_true", help="keep the output array on disk "
                   "(memory-mapped) instead of in memory")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="arithmetic of the network: auto (default: bf16 where the device has "
                   "fast bf16 units, i.e. CUDA or a CPU with AVX-512 BF16 / AMX; fp32 "
                   "elsewhere), fp32 or bf16; recorded in the sidecar")
    p.add_argument("--amp", dest="precision", action="store_const", const="bf16",
                   help=argparse.SUPPRESS)  # the older spelling of --precision bf16
    _add_switch(p, "register",
                help="rigidly register --ref (mutual information; needs dipy) to the input "
                     "(2D models; references from another series, whose headers may be off by a "
                     "millimetre or more) or to the mean b=0 (3D models) before placing it. "
                     "By default 2D models apply the correction only when it moves the "
                     "input's anatomy by more than one reference voxel (without dipy: the "
                     "headers); 3D models as they were trained. --register: always apply it",
                off_help="place --ref through the headers only")
    p.add_argument("--consistency", default="auto",
                   choices=["auto", "none", "kspace", "slice_box", "slice_gaussian"],
                   help="project the output so that the input's acquisition model (k-space crop "
                        "in-plane, slice profile along a thick axis) gives the input back; auto: "
                        "box slice profile along an axis upscaled >= 2x and >= 1.5x more than "
                        "the others, k-space crop otherwise (2D models; default auto)")
    p.add_argument("--tensor-consistency", type=_weight_option, default="auto",
                   metavar="W",
                   help="diffusion series upscaled by a model (with its .bval/.bvec): take the "
                        "weight W in [0, 1] of the part of the model's detail that a tensor fit "
                        "reads as anisotropy out of each shell of >= 7 directions, so the FA "
                        "does not drift from cubic interpolation's (on: 1, off: 0; auto, the "
                        "default: 0.5, which kept the PSNR gain and lowered the FA error on "
                        "held-out series)")
    p.add_argument("--reference-transfer", type=_weight_option, default="auto", metavar="W",
                   help="2D models with --ref (in-plane or thick-slice jobs): move the output "
                        "the weight W in [0, 1] towards the reference's own detail where a "
                        "local linear fit of the input on the reference (on the band the input "
                        "measured) holds, voxel by voxel by the fit's R^2, then project again "
                        "(on: 1, off: 0; auto, the default: 0.4 at x2, 0.6 at x4, 0.8 at x8 "
                        "in-plane, 0.3 for thick slices)")
    _add_switch(p, "calibrate",
                help="scale the detail the model adds (2D models with the k-space "
                     "projection: beyond the measured band; 3D models: its correction to cubic "
                     "interpolation) by a gain in [0, 1] fitted on the input degraded once "
                     "more. By default 2D models without --ref do; with --ref, models trained "
                     "on real pairs alone (e.g. dualarbnet_s) check the reference itself at "
                     "the job's octave and weigh the detail only where a model without the "
                     "reference does worse than zero-filling there; models trained with "
                     "synthetic references (the default dualarbnet_robust) keep it (see "
                     "docs/BENCHMARKS.md for what each gains and costs)",
                off_help="never scale the model's detail")
    p.add_argument("--adapt", nargs="?", type=_adapt_steps, const="default", default="auto",
                   metavar="STEPS",
                   help="test-time adaptation: fine-tune a copy of the model on "
                   "pairs made from the input itself (degraded again by the requested factor, "
                   "with the reference at the input's resolution) before upscaling; a 4D "
                   "series with a 3D model: one copy fine-tuned on all its volumes. STEPS "
                   "defaults to about a minute of work on 2 CPU cores for 2D models, "
                   "100 steps for 3D models; 0: never. Without --adapt (auto): a 2D model "
                   "adapts (40 steps) when the registration had to move --ref, i.e. a "
                   "reference from another series, and thick-slice jobs with --ref (up to 150 "
                   "steps; the copy used only when held-out planes improve by 8 %%), and not "
                   "otherwise")
    p.add_argument("--qc", action="store_true", help="also write <output>_qc.png: three planes "
                   "through the input (nearest), cubic interpolation, the output and the "
                   "reference on one window; a batch also writes qc.html in the output folder")
    p.add_argument("--bids", action="store_true", help="the target is the root of a BIDS "
                   "dataset: upscale its --suffix images, each with the --ref-suffix image of "
                   "its subject and session, into BIDS derivatives under -o (outputs that "
                   "exist are skipped); needs the 'bids' extra")
    p.add_argument("--suffix", metavar="LIST", help="with --bids: comma-separated suffixes "
                   "to upscale (default T2w), e.g. T2w,FLAIR")
    p.add_argument("--ref-suffix", metavar="SUFFIX", help="with --bids: the suffix of each "
                   "target's reference in the same subject and session, e.g. T1w")
    p.add_argument("--shard", metavar="K/N", type=_shard,
                   help="upscale only part K of N of the batch (every N-th input from the "
                   "K-th; N runs with K = 1..N write exactly one run's outputs), or 'slurm': "
                   "the part of this SLURM array task")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--fail-fast", action="store_true", help="batches: stop at the first input "
                   "that fails (default: go on with the others, then list what was written and "
                   f"what failed, and exit with {EXIT_BATCH_FAILED})")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("degrade", help="simulate a low-resolution acquisition of a NIfTI image")
    p.add_argument("input", help="NIfTI volume or 4D series")
    p.add_argument("-o", "--output", required=True, help="output NIfTI")
    p.add_argument("--scale", required=True, type=_parse_scale,
                   help="degradation factor S or SX,SY,SZ (>= 1; 1 keeps an axis)")
    p.add_argument("--allow-upsampling", action="store_true", help="accept scales below 1 "
                   "(the result then has more voxels than the input)")
    p.add_argument("--kind", default="kspace", choices=degradations(),
                   help="the degradation (see 'mrisr info'; default kspace)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_degrade)

    p = sub.add_parser("phantom", help="write the embedded multi-contrast and diffusion phantom "
                       "as NIfTI files")
    p.add_argument("-o", "--output", required=True, help="output folder (created)")
    p.add_argument("--seed", type=_integer_in(*SEED_RANGE), default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("demo", help="degrade the embedded phantom and upscale it with the "
                       "shipped models and cubic interpolation (no data needed)")
    p.add_argument("-o", "--output", default="mrisr-demo", help="output folder (default: "
                   "./mrisr-demo)")
    p.add_argument("--case", default="thick", choices=["thick", "inplane"],
                   help="thick: the T2w averaged into thick slices and upscaled through-plane "
                   "(default); inplane: k-space crop in-plane")
    p.add_argument("--scale", type=_number_in(*DEMO_SCALE_RANGE), default=4.0,
                   help="slice-thickness (thick) or "
                   "in-plane factor (default 4)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier "
                   "demo in the output folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list model presets and which have shipped weights")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="list methods, degradations and metric protocols")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    # Signals are handled from the first statement: Ctrl-C or SIGTERM while the command starts
    # (the parser's imports take a fraction of a second) also ends with one line and its exit
    # status, not a traceback or a silent death.
    try:
        with _signals_as_interrupts():
            return _run(argv)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: temporaries removed on the way
        print("mrisr: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)


def _run(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with _warnings_as_lines(), _library_logs_to_stderr():
        try:
            return args.func(args)
        except MrisrError as exc:
            print(f"mrisr: error: {exc}", file=sys.stderr)
            return 2
        except MemoryError:
            hint = "try --memmap, a smaller output or fewer threads" if \
                args.command == "upscale" else "the config's sizes (data shape, batch, patch) " \
                "ask for more than this machine has"
            print(f"mrisr: error: out of memory ({hint})", file=sys.stderr)
            return 2
        except OSError as exc:  # the system refused something not checked beforehand
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"mrisr: error: {where}{exc.strerror or exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
