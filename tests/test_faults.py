"""Fault injection: bad inputs, misuse, signals, kills, full disks and concurrent writers.

Each guarantee of README's bad-input paragraph is tested here (issue 16): one line
``mrisr: error: <file or key>: <problem>`` and exit 2 with nothing written and the inputs intact;
SIGTERM and SIGKILL of a running ``mrisr upscale``; stale temporaries removed by the next run;
batches that go on past a bad input; one winner among concurrent writers; a killed training run
resumed to the uninterrupted result; listings and early errors without importing torch.
Small generated data; the subprocess tests wait for a ``.part`` file, then kill.
"""
import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from mrisr.cli import main as cli
from mrisr.cli.main import main
from mrisr.io import load_nifti, save_nifti, write_bvals, write_bvecs
from mrisr.io.atomic import host_id, sweep_stale

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
MRISR = [sys.executable, "-m", "mrisr.cli.main"]
AFFINE = np.diag([2.0, 2.0, 4.0, 1.0])

TRAIN_YAML = """
model: {{name: dualarbnet, args: {{G0: 8, D: 1, C: 2, G: 8, fusion_channels: 8,
                                fusion_convs: 1, skip_hidden: 8, attention_reduction: 4}}}}
data: {{dataset: {{kind: phantom, shape: [64, 64, 12], voxel_size: [2, 2, 4]}}, patch: 12}}
curriculum:
  - {{name: warmup, steps: {warmup}, target_scales: [2, 3]}}
  - {{name: full, steps: {full}, reference: {{hr: 0.3, lr: 0.3, own: 0.4}}}}
optim: {{batch_size: 2, lr: 0.001}}
run: {{checkpoint_every: 5, log_every: 1, seed: 1, threads: 1}}
output: {output}
"""


# -- helpers ----------------------------------------------------------------------------------
def run(capsys, *argv):
    """``mrisr ARGV`` in this process: (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argument errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *needles, forbidden=()):
    assert code == 2, (code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mrisr: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    message = lines[0].split(" (see 'mrisr")[0]  # argument errors end with a pointer to --help
    for word in forbidden:
        assert word not in message, (word, lines[0])
    return lines[0]


def snapshot(folder) -> dict:
    """Every entry under ``folder`` (hidden ones too) with its content."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
            for p in sorted(Path(folder).rglob("*"))}


def names(folder) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


def volume(path, shape=(16, 16, 6), seed=0, scale=1.0):
    data = np.random.default_rng(seed).random(shape, dtype=np.float32) * scale + 0.1
    save_nifti(data, AFFINE, path)
    return Path(path)


def huge_header(path: Path, template: Path) -> Path:
    """A NIfTI whose header claims 30000^3 voxels over a few bytes of data."""
    raw = bytearray(template.read_bytes())
    struct.pack_into("<8h", raw, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)  # dim[0..7]
    if path.name.endswith(".gz"):
        import gzip
        path.write_bytes(gzip.compress(bytes(raw)))
    else:
        path.write_bytes(bytes(raw))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def start(*argv) -> subprocess.Popen:
    return subprocess.Popen(MRISR + [str(a) for a in argv], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"mrisr ended first ({proc.returncode}): "
                                 f"{proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.005)


def has_part(folder: Path, output: str):
    """Whether the temporary file of ``output`` exists: the run is past its checks and its
    set-up, and writing (the checks' own probe file in the folder has another name)."""
    return lambda: any(n.startswith(f".{output}.mrisr-") and ".part" in n
                       for n in os.listdir(folder))


@pytest.fixture(scope="module")
def slow_series(tmp_path_factory) -> Path:
    """A 4D series whose cubic upscaling runs for seconds, in steps of milliseconds (so that
    a signal is handled at once)."""
    path = tmp_path_factory.mktemp("slow") / "series.nii"
    volume(path, shape=(24, 24, 8, 400))
    return path


@pytest.fixture
def case(tmp_path, monkeypatch):
    """A folder of inputs for the bad-input cases; the tests run inside it."""
    volume(tmp_path / "in.nii.gz")
    save_nifti(np.ones((4, 4, 4), np.float32), AFFINE, tmp_path / "small.nii")
    huge_header(tmp_path / "huge.nii", tmp_path / "small.nii")
    huge_header(tmp_path / "huge.nii.gz", tmp_path / "small.nii")
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        volume(tmp_path / sub / "t2.nii.gz")
    (tmp_path / "collide.txt").write_text("a/t2.nii.gz\nb/t2.nii.gz\n")
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    (tmp_path / "cfg.png").write_bytes(png)
    (tmp_path / "list.png").write_bytes(png)
    (tmp_path / "t.yaml").write_text(TRAIN_YAML.format(warmup=2, full=2, output="run"))
    (tmp_path / "afile").write_text("not a folder")
    volume(tmp_path / "thin.nii.gz", shape=(2, 2, 201))
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "comments.yaml").write_text("# settings to come\n")
    (tmp_path / "res").mkdir()
    for name in ("table.md", "metrics.md"):
        (tmp_path / "res" / name).write_text("the user's notes\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


UPSCALE = ["upscale", "in.nii.gz", "-o", "o.nii.gz"]
BAD_INPUTS = {
    "threads": (UPSCALE + ["--scale", "2", "--threads", "-1"], ["--threads", "positive"], []),
    "tile": (UPSCALE + ["--scale", "2", "--tile", "0"], ["--tile", "positive"], []),
    "voxel_size": (UPSCALE + ["--voxel-size", "0"], ["--voxel-size", "> 0"], ["scale"]),
    "shape": (UPSCALE + ["--shape", "0,8,8"], ["--shape", "> 0"], ["scale"]),
    "shape_count": (UPSCALE + ["--shape", "8,8"], ["--shape", "3"], ["scale"]),
    "huge_header_upscale": (["upscale", "huge.nii", "--scale", "2", "-o", "o.nii.gz"],
                            ["huge.nii", "header describes", "30000"], []),
    "huge_header_degrade": (["degrade", "huge.nii.gz", "--scale", "2", "-o", "o.nii.gz"],
                            ["huge.nii.gz", "corrupt header"], []),
    "binary_config": (["evaluate", "cfg.png", "-o", "res"], ["cfg.png", "not a YAML"], []),
    "train_output_is_a_file": (["train", "t.yaml", "-o", "afile"], ["afile", "not a folder"],
                               []),
    "list_names_collide": (["upscale", "collide.txt", "--scale", "2", "-o", "out"],
                           ["collide.txt", "a/t2.nii.gz", "b/t2.nii.gz", "same name"], []),
    "binary_list": (["upscale", "list.png", "--scale", "2", "-o", "out"],
                    ["list.png", "neither a NIfTI file"], []),
    "degrade_below_1": (["degrade", "in.nii.gz", "--scale", "0.5", "-o", "d.nii.gz"],
                        ["--scale", "--allow-upsampling"], []),
    "degrade_too_far": (["degrade", "in.nii.gz", "--scale", "1000", "-o", "d.nii.gz"],
                        ["--scale", "1 voxel"], []),
    "unknown_model": (UPSCALE + ["--scale", "2", "--model", "nope"], ["nope", "not found"],
                      []),
    "output_is_input": (["upscale", "in.nii.gz", "--scale", "2", "-o", "in.nii.gz",
                         "--overwrite"], ["in.nii.gz", "input"], []),
    # Numeric options bounded before any arithmetic (issue 22): no overflow, no endless run.
    "scale_huge": (UPSCALE + ["--scale", "1e308"], ["--scale", "between", "1000"], []),
    "scale_tiny": (UPSCALE + ["--scale", "1e-308"], ["--scale", "between", "0.001"], []),
    "scale_one_axis_huge": (UPSCALE + ["--scale", "1,1,1e4"], ["--scale", "between"], []),
    "voxel_size_tiny": (UPSCALE + ["--voxel-size", "1e-300"], ["--voxel-size", "between"],
                        []),
    "voxel_size_huge": (UPSCALE + ["--voxel-size", "1e300"], ["--voxel-size", "between"], []),
    "shape_beyond_nifti": (UPSCALE + ["--shape", "40000,8,8"], ["--shape", "32767"], []),
    "threads_huge": (UPSCALE + ["--scale", "2", "--threads", "99999999999999"],
                     ["--threads", "at most"], []),
    "tile_huge": (UPSCALE + ["--scale", "2", "--tile", "99999999999999999999"],
                  ["--tile", "at most"], []),
    "adapt_huge": (UPSCALE + ["--scale", "2", "--adapt", "99999999999999999"],
                   ["--adapt", "at most"], []),
    "seed_negative": (["phantom", "-o", "ph", "--seed", "-1"], ["--seed", "0 to"], []),
    "seed_huge": (["phantom", "-o", "ph", "--seed", str(2 ** 70)], ["--seed", "0 to"], []),
    "demo_scale_nan": (["demo", "-o", "dm", "--scale", "nan"], ["--scale", "between"], []),
    "demo_scale_huge": (["demo", "-o", "dm", "--scale", "1000"], ["--scale", "between"], []),
    "degrade_scale_huge": (["degrade", "in.nii.gz", "--scale", "1e308", "-o", "d.nii.gz"],
                           ["--scale", "between"], []),
    "thin_axis_beyond_nifti": (["upscale", "thin.nii.gz", "--scale", "1,1,200", "--model",
                                "cubic", "-o", "o.nii.gz"], ["32767"], []),
    # A switch and its negation together (issue 22).
    "register_and_no_register": (UPSCALE + ["--scale", "2", "--register", "--no-register"],
                                 ["--no-register", "not allowed with", "--register"], []),
    "calibrate_and_no_calibrate": (UPSCALE + ["--scale", "2", "--no-calibrate",
                                              "--calibrate"],
                                   ["--calibrate", "not allowed with", "--no-calibrate"], []),
    # An empty config is a mistake, not the defaults (issue 22).
    "empty_evaluate_config": (["evaluate", "empty.yaml", "-o", "res"],
                              ["empty.yaml", "config is empty"], []),
    "comment_only_train_config": (["train", "comments.yaml"], ["comments.yaml", "empty"], []),
    # Reports and the demo are outputs too: never written over files without --overwrite.
    "evaluate_report_exists": (["evaluate", "-o", "res"], ["table.md", "exists",
                                                           "--overwrite"], []),
    "demo_files_exist": (["demo", "-o", "res"], ["metrics.md", "exists", "--overwrite"], []),
}


# -- one line, exit 2, nothing written ------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_and_writes_nothing(case, capsys, name):
    argv, needles, forbidden = BAD_INPUTS[name]
    before = snapshot(case)
    code, out, err = run(capsys, *argv)
    one_line_error(code, err, *needles, forbidden=forbidden)
    assert snapshot(case) == before


def test_listings_and_early_errors_do_not_import_torch(case):
    argvs = [["models"], ["info"]] + [BAD_INPUTS[n][0] for n in (
        "threads", "huge_header_upscale", "huge_header_degrade", "degrade_below_1",
        "list_names_collide", "unknown_model", "output_is_input")]
    script = ("import contextlib, io, json, sys\n"
              "from mrisr.cli.main import main\n"
              "codes = []\n"
              "for argv in json.loads(sys.argv[1]):\n"
              "    with contextlib.redirect_stdout(io.StringIO()), "
              "contextlib.redirect_stderr(io.StringIO()):\n"
              "        try:\n"
              "            codes.append(main(argv))\n"
              "        except SystemExit as exc:\n"
              "            codes.append(exc.code)\n"
              "print(json.dumps({'codes': codes, 'torch': 'torch' in sys.modules}))\n")
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(argvs)], cwd=case,
                          env=ENV, capture_output=True, text=True, timeout=120)
    result = json.loads(proc.stdout)
    assert result["codes"] == [0, 0] + [2] * (len(argvs) - 2)
    assert result["torch"] is False


def test_listed_names_equal_the_registries():
    from mrisr.cli import catalog
    from mrisr.degradation import DEGRADATIONS
    from mrisr.evaluation.methods import _REGISTRY, available_methods
    from mrisr.evaluation.metrics import PROTOCOLS
    from mrisr.inference.upscale import INTERPOLATION_MODELS
    from mrisr.models.registry import PRESETS, weights_path

    available_methods()  # loads the plug-ins
    ours = sorted(n for n, factory in _REGISTRY.items()  # other tests register their own
                  if factory.__module__.startswith("mrisr."))
    assert list(catalog.METHODS) == ours
    assert list(catalog.PROTOCOLS) == list(PROTOCOLS)
    assert catalog.degradations() == list(DEGRADATIONS)
    assert list(catalog.INTERPOLATIONS) == list(INTERPOLATION_MODELS)
    presets = catalog.read_presets()
    assert {n: p.description for n, p in presets.items()} == \
        {n: p.description for n, p in PRESETS.items()}
    assert all(catalog.weights_path(n) == weights_path(n) for n in presets)


def test_listed_degradations_and_interpolations_run_from_the_command_line(case, capsys):
    from mrisr.cli.catalog import INTERPOLATIONS, degradations
    from mrisr.evaluation.methods import SRCase, make_method

    code, out, _ = run(capsys, "info")
    listed = [line.split(":", 1)[1].strip().split(", ") for line in out.splitlines()
              if line.startswith("degradations:")][0]
    assert "kspace_centre" in listed and listed == degradations()
    for kind in listed:
        code, out, err = run(capsys, "degrade", "in.nii.gz", "--scale", "1,1,2", "--kind", kind,
                             "-o", f"d_{kind}.nii.gz")
        assert code == 0, (kind, err)
        assert load_nifti(f"d_{kind}.nii.gz").data.shape == (16, 16, 3)
    lr = load_nifti("in.nii.gz").data
    for name in INTERPOLATIONS:
        code, _, err = run(capsys, "upscale", "in.nii.gz", "--scale", "2,2,1", "--model", name,
                           "-o", f"u_{name}.nii.gz", "-q")
        assert code == 0, (name, err)
        # The same numbers as the evaluation's method of that name.
        expected = make_method(name)(SRCase(lr=lr, out_shape=(32, 32, 6)))
        np.testing.assert_allclose(load_nifti(f"u_{name}.nii.gz", allow_all_zero=True).data,
                                   expected, rtol=1e-6, atol=1e-6)


def test_corrupt_checkpoints_get_our_message(case, capsys):
    from mrisr.models.registry import weights_path

    shipped = weights_path("liif_s").read_bytes()
    (case / "truncated.pt").write_bytes(shipped[:len(shipped) // 2])
    (case / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    import torch
    torch.save({"a": np.random.default_rng(0)}, case / "object.pt")  # not weights-only
    for name in ("truncated.pt", "random.pt", "object.pt"):
        code, _, err = run(capsys, *UPSCALE, "--scale", "2", "--model", name, "-q")
        one_line_error(code, err, name, "not a readable mrisr checkpoint",
                       forbidden=["weights_only", "Weights only", "arbitrary code"])
    assert not (case / "o.nii.gz").exists()


# -- outputs that cannot be written ---------------------------------------------------------
def test_unwritable_output_folder(case, capsys, monkeypatch):
    locked = case / "locked"
    locked.mkdir()
    real = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == locked.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    before = snapshot(case)
    for argv in (["upscale", "in.nii.gz", "--scale", "2", "-o", "locked/o.nii.gz"],
                 ["degrade", "in.nii.gz", "--scale", "2", "-o", "locked/o.nii.gz"]):
        code, _, err = run(capsys, *argv)
        one_line_error(code, err, "locked", "cannot write", "Permission denied")
    assert snapshot(case) == before
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # a real read-only folder as well
        monkeypatch.setattr(tempfile, "mkstemp", real)
        locked.chmod(0o555)
        try:
            code, _, err = run(capsys, "upscale", "in.nii.gz", "--scale", "2", "-o",
                               "locked/o.nii.gz")
            one_line_error(code, err, "locked", "cannot write")
        finally:
            locked.chmod(0o755)


def test_full_disk_is_refused_before_work_with_readable_units(case, capsys, monkeypatch):
    usage = shutil.disk_usage(case)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: type(usage)(usage.total,
                                                                       usage.total, 20_000))
    before = snapshot(case)
    code, _, err = run(capsys, *UPSCALE, "--scale", "2", "--model", "cubic", "-q")
    line = one_line_error(code, err, "o.nii.gz", "49.2 kB", "20 kB", forbidden=["0.00 GB"])
    assert "needs" in line
    assert snapshot(case) == before


@pytest.mark.parametrize("memmap", [False, True])
def test_disk_filling_up_during_the_run(case, capsys, monkeypatch, memmap):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if memmap:  # the scratch file of --memmap is allocated up front, not through the map
        monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    else:
        from mrisr.inference.streaming import StreamingNiftiWriter
        monkeypatch.setattr(StreamingNiftiWriter, "write_volume", full)
    before = snapshot(case)
    code, _, err = run(capsys, *UPSCALE, "--scale", "2", "--model", "cubic", "-q",
                       *(["--memmap"] if memmap else []))
    one_line_error(code, err, "o.nii.gz", "No space left on device")
    assert snapshot(case) == before  # no output, no temporary file, no scratch folder, no lock


# -- batches --------------------------------------------------------------------------------
@pytest.fixture
def batch(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    volume(folder / "a.nii.gz", seed=1)
    full = volume(tmp_path / "b.nii.gz", seed=2).read_bytes()
    (folder / "b_data_cut.nii.gz").write_bytes(full[:len(full) * 2 // 3])  # header intact
    (folder / "c_not_nifti.nii.gz").write_bytes(b"not a NIfTI file")
    volume(folder / "d.nii.gz", seed=3)
    # What a killed run left: hidden, so not an input.
    (folder / ".d.nii.gz.mrisr-0badc0de-1.abcd1234.part.nii.gz").write_bytes(b"partial")
    return folder


def test_batch_goes_on_past_bad_inputs_and_ends_with_a_summary(batch, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "upscale", batch, "--scale", "2", "--model", "cubic", "-o",
                            out, "-q")
    assert code == cli.EXIT_BATCH_FAILED == 3
    assert names(out) == ["a.json", "a.nii.gz", "d.json", "d.nii.gz"]
    assert f"wrote {out / 'a.nii.gz'}" in stdout and f"wrote {out / 'd.nii.gz'}" in stdout
    summary = err[err.index("mrisr: batch summary"):]
    assert "2 written, 2 failed" in summary
    assert f"written: {out / 'a.nii.gz'}" in summary and f"written: {out / 'd.nii.gz'}" in summary
    assert "failed:  " + str(batch / "b_data_cut.nii.gz") in summary
    assert "failed:  " + str(batch / "c_not_nifti.nii.gz") in summary
    assert "Traceback" not in err


def test_batch_fail_fast_stops_at_the_first_bad_input(batch, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, "upscale", batch, "--scale", "2", "--model", "cubic", "-o", out,
                       "-q", "--fail-fast")
    one_line_error(code, err, "c_not_nifti.nii.gz")  # found before any work
    assert names(out) == []


def test_batch_output_names_are_checked_before_the_first_volume(tmp_path, capsys):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        volume(tmp_path / sub / "t2.nii")
    volume(tmp_path / "x" / "t1.nii.gz")
    volume(tmp_path / "y" / "t1.nii")  # different file names, one sidecar name t1.json
    for lines in (["x/t2.nii", "y/t2.nii"], ["x/t1.nii.gz", "y/t1.nii"]):
        (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
        code, _, err = run(capsys, "upscale", tmp_path / "list.txt", "--scale", "2", "-o",
                           tmp_path / "out")
        one_line_error(code, err, "list.txt", lines[0], lines[1])
        assert not (tmp_path / "out").exists()


# -- stale temporaries ------------------------------------------------------------------------
def test_stale_temporaries_are_removed_or_reported_by_the_next_run(case, capsys):
    gone = dead_pid()
    me, host = os.getpid(), host_id()
    stale = [f".x.nii.gz.mrisr-{host}-{gone}.abcd1234.part.nii.gz",
             f".mrisr-{host}-{gone}-zz9_y8x7", ".x.nii.gz.mrisr-lock",
             f".old.json.mrisr-{host}-{me}.abcd1234.part.json"]
    live = [f".y.nii.gz.mrisr-{host}-{me}.abcd1234.part.nii.gz", ".y.nii.gz.mrisr-lock"]
    unknown = [".z.nii.gz.mrisr-0badc0de-1.abcd1234.part.nii.gz",
               ".z.nii.gz.k2j4h5g6.part.nii.gz", ".mrisr-k2j4h5g6"]
    other = [".hidden", ".x.nii.gz.part"]
    for name in stale + live + unknown + other:
        (case / name).mkdir() if name.startswith(".mrisr-") else (case / name).write_text("")
    (case / stale[1] / "out.npy").write_bytes(b"\0" * 64)
    (case / ".x.nii.gz.mrisr-lock").write_text(f"{host} {gone}\n")
    (case / ".y.nii.gz.mrisr-lock").write_text(f"{host} {me}\n")
    # Our own process id on a file older than this process: an earlier process's (id reused).
    os.utime(case / stale[3], (time.time() - 86400,) * 2)
    code, _, err = run(capsys, "degrade", "in.nii.gz", "--scale", "2", "-o", "d.nii.gz")
    assert code == 0, err
    left = set(os.listdir(case))
    assert not left & set(stale)
    assert set(live + unknown + other) <= left
    assert f"removed {len(stale)} temporary file(s)" in err
    for name in unknown:
        assert f"mrisr: warning: {case / name}: temporary file of an interrupted" in err
    removed, still_unknown = sweep_stale(case)
    assert removed == [] and sorted(p.name for p in still_unknown) == sorted(unknown)


# -- signals and kills ----------------------------------------------------------------------
def test_second_writer_is_locked_out_and_sigterm_cleans_up(slow_series, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    volume(tmp_path / "small.nii.gz")
    first = start("upscale", slow_series, "--scale", "2", "--model", "cubic", "-o",
                  out / "sr.nii.gz", "-q")
    wait_for(has_part(out, "sr.nii.gz"), first)
    # A second run writing the same output (even with --overwrite) fails at once.
    second = subprocess.run(MRISR + ["upscale", str(tmp_path / "small.nii.gz"), "--scale", "2",
                                     "--model", "cubic", "-o", str(out / "sr.nii.gz"), "-q",
                                     "--overwrite"], env=ENV, capture_output=True, text=True,
                            timeout=120)
    one_line_error(second.returncode, second.stderr, "sr.nii.gz", "another mrisr run",
                   f"process {first.pid}")
    assert first.poll() is None
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines()[-1] == "mrisr: interrupted" and "Traceback" not in err
    assert names(out) == []  # no output, no temporary file, no scratch folder, no lock


def test_sigkill_leftovers_are_removed_by_the_next_run(slow_series, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    proc = start("upscale", slow_series, "--scale", "2", "--model", "cubic", "--memmap", "-o",
                 out / "sr.nii.gz", "-q")
    wait_for(has_part(out, "sr.nii.gz"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    left = names(out)
    assert "sr.nii.gz" not in left and "sr.json" not in left
    # The image's and the sidecar's .part and lock, the scratch folder.
    assert len(left) == 5 and {".sr.nii.gz.mrisr-lock", ".sr.json.mrisr-lock"} <= set(left)
    code, _, err = run(capsys, "upscale", volume(tmp_path / "small.nii.gz"), "--scale", "2",
                       "--model", "cubic", "-o", out / "sr.nii.gz", "-q")
    assert code == 0, err
    assert "removed 5 temporary file(s)" in err
    assert names(out) == ["sr.json", "sr.nii.gz"]


def test_two_writers_of_one_output_one_wins_whole(tmp_path, capsys):
    inputs = [volume(tmp_path / f"in{i}.nii", shape=(16, 16, 8, 12), seed=i, scale=i + 1)
              for i in range(2)]
    for i in range(2):
        write_bvals(tmp_path / f"in{i}.bval", np.full(12, 1000.0))
        write_bvecs(tmp_path / f"in{i}.bvec", np.tile([[1.0], [0.0], [0.0]], 12))
    expected = []
    for i, path in enumerate(inputs):
        assert run(capsys, "upscale", path, "--scale", "2", "--model", "cubic", "-o",
                   tmp_path / f"alone{i}.nii", "-q")[0] == 0
        expected.append(load_nifti(tmp_path / f"alone{i}.nii", ndim=(4,)).data)
    out = tmp_path / "out"
    out.mkdir()
    procs = [start("upscale", path, "--scale", "2", "--model", "cubic", "-o", out / "sr.nii",
                   "-q") for path in inputs]
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        results.append((proc.returncode, err))
    codes = [code for code, _ in results]
    assert sorted(codes) == [0, 2], results
    winner = codes.index(0)
    one_line_error(*results[1 - winner], "sr.nii")
    np.testing.assert_array_equal(load_nifti(out / "sr.nii", ndim=(4,)).data, expected[winner])
    assert names(out) == ["sr.bval", "sr.bvec", "sr.json", "sr.nii"]


def test_output_that_appears_during_the_run_is_not_replaced(case, capsys, monkeypatch):
    from mrisr.inference.streaming import StreamingNiftiWriter

    close = StreamingNiftiWriter.close

    def someone_else_writes(self):
        (case / "o.nii.gz").write_bytes(b"another program's file")
        close(self)
    monkeypatch.setattr(StreamingNiftiWriter, "close", someone_else_writes)
    code, _, err = run(capsys, *UPSCALE, "--scale", "2", "--model", "cubic", "-q")
    one_line_error(code, err, "o.nii.gz", "not replaced")
    assert (case / "o.nii.gz").read_bytes() == b"another program's file"
    assert not [n for n in os.listdir(case) if "mrisr" in n or ".part" in n]


# -- series ---------------------------------------------------------------------------------
def test_series_b_tables_warnings_and_library_logs(tmp_path, capsys):
    series = volume(tmp_path / "dwi.nii.gz", shape=(16, 16, 6, 3))
    code, out, err = run(capsys, "upscale", series, "--scale", "2,2,1", "--model", "linear",
                         "-o", tmp_path / "sr.nii.gz", "-q")
    assert code == 0 and out.strip() == f"wrote {tmp_path / 'sr.nii.gz'}"
    assert err.strip() == (f"mrisr: warning: {series}: 4D series without dwi.bval beside it: "
                           "b-values unknown, so no volume is treated as b=0 and no .bval/.bvec "
                           "is written")
    write_bvals(tmp_path / "dwi.bval", np.array([0, 1000, 1000]))
    write_bvecs(tmp_path / "dwi.bvec", np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0.0]]))
    code, out, err = run(capsys, "degrade", series, "--scale", "2,2,1", "-o",
                         tmp_path / "lr.nii.gz")
    assert code == 0 and err == ""
    for ext in ("bval", "bvec"):
        assert (tmp_path / f"lr.{ext}").read_text() == (tmp_path / f"dwi.{ext}").read_text()


def test_library_logs_go_to_stderr(capsys, monkeypatch):
    from dipy.utils.logging import get_logger

    dipy = get_logger(force=True)  # dipy's own handler, on stdout
    saved = list(dipy.handlers), dipy.propagate

    def noisy(args):
        dipy.info("an INFO line")
        dipy.warning("a WARNING line")
        return 0
    monkeypatch.setattr(cli, "cmd_info", noisy)
    try:
        code, out, err = run(capsys, "info")
    finally:
        dipy.handlers[:] = []
        dipy.propagate = True
    assert code == 0 and out == "" and saved[0]
    assert err == "mrisr: warning: dipy: a WARNING line\n"


# -- training -------------------------------------------------------------------------------
def train_config(folder: Path, name: str, warmup: int, full: int) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(TRAIN_YAML.format(warmup=warmup, full=full, output=folder / name))
    return path


def test_train_refuses_a_run_folder_unless_resume_or_overwrite(tmp_path, capsys):
    cfg = train_config(tmp_path, "run", 2, 2)
    assert run(capsys, "train", cfg, "-q")[0] == 0
    log = (tmp_path / "run" / "log.csv").read_text()
    code, _, err = run(capsys, "train", cfg, "-q")
    one_line_error(code, err, "run", "holds a run", "--resume", "--overwrite")
    assert (tmp_path / "run" / "log.csv").read_text() == log
    assert run(capsys, "train", cfg, "-q", "--overwrite")[0] == 0
    steps = [line.split(",")[0] for line in
             (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4"]


def test_training_killed_and_resumed_equals_an_uninterrupted_run(tmp_path, capsys):
    import torch

    from mrisr.models import load_checkpoint

    killed = train_config(tmp_path, "killed", 10, 20)
    proc = start("train", killed, "-q")
    wait_for(lambda: (tmp_path / "killed" / "last.pt").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "final.pt").exists()
    assert run(capsys, "train", killed, "-q", "--resume", "auto")[0] == 0
    assert run(capsys, "train", train_config(tmp_path, "straight", 10, 20), "-q")[0] == 0
    a = load_checkpoint(tmp_path / "straight" / "final.pt").model.state_dict()
    b = load_checkpoint(tmp_path / "killed" / "final.pt").model.state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)

    def log(name):
        return [row.split(",")[:3] for row in
                (tmp_path / name / "log.csv").read_text().splitlines()]
    assert log("killed") == log("straight") and len(log("straight")) == 31
    assert names(tmp_path / "killed") == ["final.pt", "last.pt", "log.csv"]


# -- issue 22: companions, b-tables, values, data types, extensions, units, signals ----------
def series_with_tables(path: Path, n: int = 4, bval: str | None = None,
                       bvec: str | None = None) -> Path:
    """A small 4D series with ``.bval``/``.bvec`` beside it (valid unless given)."""
    volume(path, shape=(12, 12, 6, n))
    stem = path.name.split(".")[0]
    (path.parent / f"{stem}.bval").write_text(
        bval if bval is not None else " ".join(["0"] + ["1000"] * (n - 1)) + "\n")
    vectors = np.zeros((3, n))
    vectors[0, 1:] = 1.0
    (path.parent / f"{stem}.bvec").write_text(
        bvec if bvec is not None else
        "\n".join(" ".join(f"{v:g}" for v in row) for row in vectors) + "\n")
    return path


COMPANION_CASES = {
    # A user's BIDS sidecar: the output's name differs from the input's only in extension.
    "bids_sidecar": (["upscale", "sub-01_T2w.nii.gz", "--scale", "2", "--model", "cubic", "-o",
                      "sub-01_T2w.nii", "--overwrite"], ["sub-01_T2w.json", "input"]),
    "sidecar_exists": (["upscale", "in.nii.gz", "--scale", "2", "--model", "cubic", "-o",
                        "mine.nii.gz"], ["mine.json", "exists", "--overwrite"]),
    # A run into o.nii after one into o.nii.gz: one sidecar name for two outputs.
    "nii_and_nii_gz_share_a_sidecar": (["upscale", "in.nii.gz", "--scale", "3", "--model",
                                        "cubic", "-o", "earlier.nii"], ["earlier.json"]),
    "series_bval_exists": (["upscale", "dwi.nii.gz", "--scale", "2", "--model", "cubic", "-o",
                            "taken.nii.gz"], ["taken.bval", "exists"]),
    "series_named_like_its_input": (["upscale", "dwi.nii.gz", "--scale", "2", "--model", "cubic",
                                     "-o", "dwi.nii", "--overwrite"], ["dwi.bval", "input"]),
    "degrade_bvec_exists": (["degrade", "dwi.nii.gz", "--scale", "2", "-o", "held.nii.gz"],
                            ["held.bvec", "exists"]),
    "degrade_named_like_its_input": (["degrade", "dwi.nii.gz", "--scale", "2", "-o", "dwi.nii",
                                      "--overwrite"], ["dwi.bvec", "input"]),
    "reference_sidecar": (["upscale", "in.nii.gz", "--ref", "sub-01_T2w.nii.gz", "--scale", "2",
                           "--model", "cubic", "-o", "sub-01_T2w.nii", "--overwrite"],
                          ["sub-01_T2w.json"]),
}


@pytest.fixture
def companions(case):
    volume(case / "sub-01_T2w.nii.gz")
    (case / "sub-01_T2w.json").write_text('{"RepetitionTime": 2.5}\n')
    (case / "mine.json").write_text('{"mine": true}\n')
    series_with_tables(case / "dwi.nii.gz")
    (case / "taken.bval").write_text("someone else's\n")
    (case / "held.bvec").write_text("someone else's\n")
    assert run_quiet(["upscale", "in.nii.gz", "--scale", "2", "--model", "cubic", "-o",
                      "earlier.nii.gz", "-q"]) == 0
    return case


def run_quiet(argv) -> int:
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main([str(a) for a in argv])


@pytest.mark.parametrize("name", sorted(COMPANION_CASES))
def test_companions_are_outputs_never_replaced(companions, capsys, name):
    """Sidecars and b-tables are checked up front like the image; an output's companion is
    never an input's, not even with --overwrite."""
    argv, needles = COMPANION_CASES[name]
    before = snapshot(companions)
    code, _, err = run(capsys, *argv, "-q" if argv[0] == "upscale" else "--allow-upsampling")
    one_line_error(code, err, *needles)
    assert snapshot(companions) == before


def test_companions_are_replaced_only_with_overwrite_and_go_in_with_the_image(companions,
                                                                              capsys):
    code, _, err = run(capsys, "upscale", "in.nii.gz", "--scale", "2", "--model", "cubic",
                       "-o", "mine.nii.gz", "-q", "--overwrite")
    assert code == 0, err
    assert json.loads((companions / "mine.json").read_text())["output"] == "mine.nii.gz"
    # A series into a new name: image, sidecar and both tables, the tables copied as they are.
    code, _, err = run(capsys, "degrade", "dwi.nii.gz", "--scale", "2,2,1", "-o", "lr.nii.gz")
    assert code == 0, err
    code, _, err = run(capsys, "upscale", "lr.nii.gz", "--scale", "2,2,1", "--model", "cubic",
                       "-o", "sr.nii.gz", "-q")
    assert code == 0, err
    for ext in ("bval", "bvec"):
        assert (companions / f"sr.{ext}").read_text() == (companions / f"dwi.{ext}").read_text()
    assert (companions / "sr.json").exists()


def test_batch_job_whose_sidecar_exists_fails_and_the_batch_goes_on(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    for name in ("a", "b"):
        volume(tmp_path / "in" / f"{name}.nii.gz")
    (tmp_path / "out" / "a.json").write_text("{}\n")
    code, _, err = run(capsys, "upscale", tmp_path / "in", "--scale", "2", "--model", "cubic",
                       "-o", tmp_path / "out", "-q")
    assert code == 3 and "1 written, 1 failed" in err and "a.json: exists" in err
    assert names(tmp_path / "out") == ["a.json", "b.json", "b.nii.gz"]
    assert (tmp_path / "out" / "a.json").read_text() == "{}\n"


def test_companion_that_appears_during_the_run_is_not_replaced(case, capsys, monkeypatch):
    """Image, sidecar and b-tables go into place together or not at all: a sidecar that
    another program writes meanwhile stays, and the image written so far is taken back."""
    from mrisr.inference.streaming import StreamingNiftiWriter

    close = StreamingNiftiWriter.close

    def someone_else_writes(self):
        (case / "o.json").write_text("another program's sidecar")
        close(self)
    monkeypatch.setattr(StreamingNiftiWriter, "close", someone_else_writes)
    code, _, err = run(capsys, *UPSCALE, "--scale", "2", "--model", "cubic", "-q")
    one_line_error(code, err, "o.json", "not replaced")
    assert (case / "o.json").read_text() == "another program's sidecar"
    assert not (case / "o.nii.gz").exists()
    assert not [n for n in os.listdir(case) if "mrisr" in n or ".part" in n]


def test_a_sidecar_another_run_is_writing_is_locked(case, capsys):
    """Two runs into o.nii and o.nii.gz share o.json: the second is refused at once."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (case / ".o.json.mrisr-lock").write_text(f"{host_id()} {holder.pid}\n")
        code, _, err = run(capsys, "upscale", "in.nii.gz", "--scale", "2", "--model", "cubic",
                           "-o", "o.nii", "-q")
        one_line_error(code, err, "o.json", "another mrisr run", f"process {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert not (case / "o.nii").exists()


BAD_TABLES = {
    "bval_fewer_than_volumes": ({"bval": "0 1000 1000\n"}, ["dwi.bval", "3 b-values", "4 volumes"]),
    "bval_more_than_volumes": ({"bval": "0 1000 1000 1000 1000\n"}, ["dwi.bval", "5 b-values"]),
    "bval_nan": ({"bval": "0 nan 1000 1000\n"}, ["dwi.bval", "NaN"]),
    "bval_negative": ({"bval": "0 -1000 1000 1000\n"}, ["dwi.bval", "negative"]),
    "bval_words": ({"bval": "0 b1000 1000 1000\n"}, ["dwi.bval", "table of numbers"]),
    "bval_empty": ({"bval": ""}, ["dwi.bval", "empty"]),
    "bvec_words": ({"bvec": "0 1 1 one\n0 0 0 0\n0 0 0 0\n"}, ["dwi.bvec", "table of numbers"]),
    "bvec_two_rows": ({"bvec": "0 1 1 1\n0 0 0 0\n"}, ["dwi.bvec", "3 rows"]),
    "bvec_fewer_than_volumes": ({"bvec": "0 1 1\n0 0 0\n0 0 0\n"}, ["dwi.bvec", "3 b-vectors"]),
    "bvec_not_unit": ({"bvec": "0 2 1 1\n0 0 0 0\n0 0 0 0\n"}, ["dwi.bvec", "length 2"]),
    "bvec_ragged": ({"bvec": "0 1 1 1\n0 0\n0 0 0 0\n"}, ["dwi.bvec", "table of numbers"]),
    "bvec_binary": ({"bvec": "\udcff\udcfe"}, ["dwi.bvec", "table of numbers"]),
}
TABLE_COMMANDS = {
    "upscale_cubic": ["upscale", "dwi.nii.gz", "--scale", "2", "--model", "cubic", "-o",
                      "sr.nii.gz", "-q"],
    "upscale_default": ["upscale", "dwi.nii.gz", "--scale", "2", "-o", "sr.nii.gz", "-q"],
    "upscale_3d_model": ["upscale", "dwi.nii.gz", "--ref", "t1.nii.gz", "--model", "csr_dmri_s",
                         "--scale", "2", "-o", "sr.nii.gz", "-q"],
    "degrade": ["degrade", "dwi.nii.gz", "--scale", "2", "-o", "lr.nii.gz"],
}


def bad_tables_case(folder: Path, monkeypatch, table: str, t1_shape) -> list[str]:
    """A series ``dwi.nii.gz`` in ``folder`` (the working folder) with the fault ``table`` of
    :data:`BAD_TABLES` in its b-tables, and a T1w; returns what the error must say."""
    monkeypatch.chdir(folder)
    series_with_tables(folder / "dwi.nii.gz")
    volume(folder / "t1.nii.gz", shape=t1_shape)
    fix, needles = BAD_TABLES[table]
    for ext, text in fix.items():  # binary content is given as surrogate escapes
        (folder / f"dwi.{ext}").write_bytes(text.encode("utf-8", "surrogateescape"))
    return needles


@pytest.mark.parametrize("command", sorted(TABLE_COMMANDS))
@pytest.mark.parametrize("table", sorted(BAD_TABLES))
def test_b_tables_are_checked_on_every_path(tmp_path, monkeypatch, capsys, command, table):
    """One validation (mrisr.io.dwi) wherever b-tables are read or copied: counts, finite
    numbers, shape 3 x N, unit vectors or zero."""
    needles = bad_tables_case(tmp_path, monkeypatch, table, (24, 24, 12))
    before = snapshot(tmp_path)
    code, _, err = run(capsys, *TABLE_COMMANDS[command])
    one_line_error(code, err, *needles)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("table", ["bval_fewer_than_volumes", "bval_nan", "bvec_words",
                                   "bvec_not_unit"])
@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_b_tables_are_checked_by_evaluation_and_training(tmp_path, monkeypatch, capsys,
                                                          command, table):
    needles = bad_tables_case(tmp_path, monkeypatch, table, (12, 12, 6))
    data = "dmri: {kind: files, subjects: [{dwi: dwi.nii.gz, t1: t1.nii.gz}], bvalue: 1000}\n"
    if command == "evaluate":
        text = f"task: dmri3d\n{data}scales: [2]\nmethods: [{{name: cubic}}]\noutput: res\n"
    else:
        text = (f"task: dmri3d\nmodel: {{name: csr_dmri_s}}\n{data}"
                "curriculum: [{name: a, steps: 2}]\noutput: run\n")
    (tmp_path / "c.yaml").write_text(text)
    code, _, err = run(capsys, command, "c.yaml", "-q")
    one_line_error(code, err, *needles)
    assert not (tmp_path / "res").exists() and not (tmp_path / "run" / "last.pt").exists()


def test_degrading_a_series_without_bval_warns(tmp_path, capsys):
    volume(tmp_path / "dwi.nii.gz", shape=(12, 12, 6, 3))
    code, _, err = run(capsys, "degrade", tmp_path / "dwi.nii.gz", "--scale", "2", "-o",
                       tmp_path / "lr.nii.gz")
    assert code == 0
    assert err.strip() == (f"mrisr: warning: {tmp_path / 'dwi.nii.gz'}: 4D series without "
                           "dwi.bval beside it: b-values unknown, so no .bval/.bvec is written")


def values_file(path: Path, data: np.ndarray, dtype=np.float32) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data).astype(dtype), AFFINE)
    img.set_data_dtype(dtype)
    nib.save(img, str(path))
    return path


RNG = np.random.default_rng(22)
POSITIVE = RNG.random((16, 16, 6)) * 100 + 1
SIGNED_CASES = {
    "all_negative": -POSITIVE,
    "signed": RNG.standard_normal((16, 16, 6)) * 100,
}


@pytest.mark.parametrize("command", ["cubic", "kspace_zerofill", "default", "degrade_kspace",
                                     "degrade_gaussian", "reference"])
@pytest.mark.parametrize("kind", sorted(SIGNED_CASES))
def test_signed_images_are_refused_not_turned_into_zeros(tmp_path, capsys, command, kind):
    """The value policy: magnitude images; an all-negative or signed image is refused in one
    line (it used to come out as zeros, or with its sign flipped by degrade)."""
    bad = values_file(tmp_path / "v.nii.gz", SIGNED_CASES[kind])
    good = volume(tmp_path / "good.nii.gz")
    argv = {"cubic": ["upscale", bad, "--scale", "2", "--model", "cubic"],
            "kspace_zerofill": ["upscale", bad, "--scale", "2", "--model", "kspace_zerofill"],
            "default": ["upscale", bad, "--scale", "2"],
            "reference": ["upscale", good, "--ref", bad, "--scale", "2", "--no-register"],
            "degrade_kspace": ["degrade", bad, "--scale", "2", "--kind", "kspace"],
            "degrade_gaussian": ["degrade", bad, "--scale", "2", "--kind", "gaussian"]}[command]
    code, _, err = run(capsys, *argv, "-o", tmp_path / "o.nii.gz",
                       *(["-q"] if argv[0] == "upscale" else []))
    one_line_error(code, err, str(bad), "signed image", "magnitude")
    assert names(tmp_path) == ["good.nii.gz", "v.nii.gz"]


def test_small_negative_values_are_noise_with_a_warning(tmp_path, capsys):
    data = POSITIVE.copy()
    data[0, 0, :3] = -0.5  # ringing around zero: 0.5 % of the maximum
    path = values_file(tmp_path / "v.nii.gz", data)
    for argv in (["upscale", path, "--scale", "2", "--model", "cubic", "-q"],
                 ["degrade", path, "--scale", "2"]):
        code, _, err = run(capsys, *argv, "-o", tmp_path / f"{argv[0]}.nii.gz")
        assert code == 0, err
        assert err.strip() == (f"mrisr: warning: {path}: 3 negative voxels (0.20%), down to "
                               "-0.5 (0.50% of the maximum): read as noise around zero of a "
                               "magnitude image; the output, a magnitude, has no negative "
                               "values")
        out = load_nifti(tmp_path / f"{argv[0]}.nii.gz").data
        assert out.min() >= 0 and out.max() > 50


def raw_nifti(path: Path, code: int, bitpix: int, payload: bytes, shape=(8, 8, 4)) -> Path:
    """A NIfTI-1 file with any datatype code: a float32 header patched, then ``payload``."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_qform(AFFINE, 1)
    header.set_sform(AFFINE, 1)
    header["vox_offset"] = 352
    raw = bytearray(header.binaryblock + b"\0" * 4)
    struct.pack_into("<hh", raw, 70, code, bitpix)
    path.write_bytes(bytes(raw) + payload)
    return path


DATATYPES = {  # code: (bitpix, accepted, what the message says)
    2: (8, True, None), 4: (16, True, None), 8: (32, True, None), 16: (32, True, None),
    64: (64, True, None), 256: (8, True, None), 512: (16, True, None), 768: (32, True, None),
    1024: (64, True, None), 1280: (64, True, None),
    32: (64, False, "complex data"), 1792: (128, False, "complex data"),
    128: (24, False, "colour data"), 2304: (32, False, "colour data"),
    1: (1, False, "unsupported NIfTI data type"), 1536: (128, False, "unsupported NIfTI data"),
    2048: (256, False, "unsupported NIfTI data type"), 3: (8, False, "unsupported NIfTI data"),
}


@pytest.mark.parametrize("code", sorted(DATATYPES))
def test_every_nifti_data_type_is_handled_or_refused_in_one_line(tmp_path, capsys, code):
    bitpix, accepted, needle = DATATYPES[code]
    n = 8 * 8 * 4
    if accepted:  # small positive numbers in the file's own type
        import nibabel as nib
        dtype = nib.nifti1.data_type_codes.dtype[code]
        payload = (np.arange(n) % 50 + 1).astype(dtype.newbyteorder("<")).tobytes()
    else:
        payload = bytes(RNG.integers(1, 100, max(1, n * bitpix // 8), dtype=np.uint8))
    path = raw_nifti(tmp_path / "v.nii", code, bitpix, payload)
    for argv in (["upscale", path, "--scale", "2", "--model", "nearest", "-q"],
                 ["degrade", path, "--scale", "2"]):
        code_, _, err = run(capsys, *argv, "-o", tmp_path / f"{argv[0]}.nii.gz")
        if accepted:
            assert code_ == 0, err
            if argv[0] == "upscale":  # the input's values, exactly
                out = load_nifti(tmp_path / "upscale.nii.gz").data
                assert set(np.unique(out)) == set(np.arange(1, 51, dtype=np.float32))
        else:
            one_line_error(code_, err, "v.nii", needle)
            assert names(tmp_path) == ["v.nii"]


@pytest.mark.parametrize("values, dtype, needle", [
    (1e300, np.float64, "beyond the range of float32"),
    (1e-300, np.float64, "below the smallest float32"),
    (1e35, np.float32, "outside [1e-30, 1e+30]"),
    (1e-33, np.float32, "outside [1e-30, 1e+30]"),
])
def test_values_float32_cannot_carry_are_refused_in_one_line(tmp_path, capsys, values, dtype,
                                                             needle):
    path = values_file(tmp_path / "v.nii", POSITIVE * values, dtype)
    for argv in (["upscale", path, "--scale", "2", "--model", "cubic", "-q"],
                 ["degrade", path, "--scale", "2"]):
        code, _, err = run(capsys, *argv, "-o", tmp_path / "o.nii.gz")
        one_line_error(code, err, "v.nii", needle)
    assert names(tmp_path) == ["v.nii"]


def is_gzip(path: Path) -> bool:
    return path.read_bytes()[:2] == b"\x1f\x8b"


@pytest.mark.parametrize("output", ["OUT.NII.GZ", "out.Nii.Gz", "out.NII", "out.nii.GZ"])
def test_output_extensions_in_any_case(case, capsys, output):
    code, _, err = run(capsys, "upscale", "in.nii.gz", "--scale", "2", "--model", "cubic",
                       "-o", output, "-q")
    assert code == 0, err
    stem = output[:-7] if output.lower().endswith(".gz") else output[:-4]
    assert names(case).count(output) == 1 and f"{stem}.json" in names(case)
    assert is_gzip(case / output) == output.lower().endswith(".gz")
    assert load_nifti(case / output).data.shape == (32, 32, 12)
    code, _, err = run(capsys, "degrade", output, "--scale", "2", "-o", "D." + output[-6:])
    assert code == 0, err
    assert not [n for n in os.listdir(case) if "mrisr" in n or ".part" in n]


def test_input_extensions_in_any_case_with_their_b_tables(tmp_path, capsys):
    series = series_with_tables(tmp_path / "dwi.nii.gz")
    (tmp_path / "dwi.nii.gz").rename(tmp_path / "DWI.Nii.Gz")
    (tmp_path / "dwi.bval").rename(tmp_path / "DWI.BVAL")
    (tmp_path / "dwi.bvec").rename(tmp_path / "DWI.bvec")
    del series
    code, _, err = run(capsys, "upscale", tmp_path / "DWI.Nii.Gz", "--scale", "2", "--model",
                       "cubic", "-o", tmp_path / "SR.NII.GZ", "-q")
    assert code == 0 and err == "", err
    assert (tmp_path / "SR.bval").read_text() == (tmp_path / "DWI.BVAL").read_text()
    assert (tmp_path / "SR.bvec").exists() and is_gzip(tmp_path / "SR.NII.GZ")
    # A folder of them, in any case, as a batch.
    (tmp_path / "in").mkdir()
    for name in ("A.NII.GZ", "b.Nii", "c.nii.gz"):
        made = volume(tmp_path / "in" / ("x.nii.gz" if name.lower().endswith("gz") else "x.nii"))
        made.rename(tmp_path / "in" / name)
    code, _, err = run(capsys, "upscale", tmp_path / "in", "--scale", "2", "--model", "cubic",
                       "-o", tmp_path / "out", "-q")
    assert code == 0, err
    assert names(tmp_path / "out") == ["A.NII.GZ", "A.json", "b.Nii", "b.json", "c.json",
                                       "c.nii.gz"]


def test_voxel_size_is_in_mm_whatever_the_header_unit(tmp_path, capsys):
    import nibabel as nib

    for unit, per_mm in (("micron", 1000.0), ("meter", 1e-3)):
        img = nib.Nifti1Image(POSITIVE.astype(np.float32), np.diag([2 * per_mm, 2 * per_mm,
                                                                    3 * per_mm, 1]))
        img.header.set_xyzt_units(unit, "sec")
        nib.save(img, str(tmp_path / f"{unit}.nii.gz"))
        out = tmp_path / f"{unit}_1mm.nii.gz"
        code, _, err = run(capsys, "upscale", tmp_path / f"{unit}.nii.gz", "--voxel-size", "1",
                           "--model", "cubic", "-o", out, "-q")
        assert code == 0, err
        written = nib.load(str(out))
        assert written.shape == (32, 32, 18)
        assert written.header.get_xyzt_units()[0] == unit  # the file keeps its unit
        np.testing.assert_allclose(np.abs(np.diag(written.affine)[:3]), per_mm, rtol=1e-6)
        assert json.loads((tmp_path / f"{unit}_1mm.json").read_text())[
            "output_voxel_size"] == pytest.approx([1.0, 1.0, 1.0])
        code, out_text, _ = run(capsys, "degrade", tmp_path / f"{unit}.nii.gz", "--scale", "2",
                                "-o", tmp_path / f"{unit}_lr.nii.gz")
        assert code == 0 and "voxel size 4, 4, 6 mm" in out_text


CHECKPOINT_FAULTS = {
    "shape": ["tensor", "has shape", "needs"],
    "missing": ["tensor", "missing from the checkpoint"],
    "extra": ["tensor 'bogus.weight'", "not part of architecture"],
    "nan": ["tensor", "NaN/Inf"],
    "architecture": ["unknown architecture 'nope'"],
    "args": ["bad arguments"],
    "no_model": ["does not say which model"],
    "no_weights": ["holds no weights"],
}


@pytest.mark.parametrize("fault", sorted(CHECKPOINT_FAULTS))
def test_checkpoint_that_does_not_fit_its_architecture(case, capsys, fault):
    import torch

    from mrisr.models.registry import weights_path

    payload = torch.load(weights_path("liif_s"), weights_only=True)
    state = payload["state_dict"]
    first = sorted(state)[0]
    if fault == "shape":
        state[first] = torch.zeros(tuple(state[first].shape) + (2,))
    elif fault == "missing":
        del state[first]
    elif fault == "extra":
        state["bogus.weight"] = torch.zeros(3)
    elif fault == "nan":
        state[first] = torch.full_like(state[first], float("nan"))
    elif fault == "architecture":
        payload["model"]["architecture"] = "nope"
    elif fault == "args":
        payload["model"]["args"] = {"no_such_argument": 1}
    elif fault == "no_model":
        del payload["model"]
    else:
        payload["state_dict"] = [1, 2]
    torch.save(payload, case / "bad.pt")
    code, _, err = run(capsys, *UPSCALE, "--scale", "2", "--model", "bad.pt", "-q")
    line = one_line_error(code, err, "bad.pt", *CHECKPOINT_FAULTS[fault])
    if fault in ("shape", "missing", "nan"):
        assert f"'{first}'" in line
    assert not (case / "o.nii.gz").exists()


def test_register_without_dipy_says_so(case, capsys, monkeypatch):
    volume(case / "ref.nii.gz", shape=(24, 24, 12))
    monkeypatch.setitem(sys.modules, "dipy.align", None)  # import dipy.align fails
    code, _, err = run(capsys, *UPSCALE, "--ref", "ref.nii.gz", "--register", "--scale", "2",
                       "-q")
    one_line_error(code, err, "ref.nii.gz", "needs dipy", "--no-register",
                   forbidden=["no overlap", "failed"])
    # Without --register, no dipy means the header placement, as README says.
    code, _, err = run(capsys, *UPSCALE, "--ref", "ref.nii.gz", "--scale", "2", "-q")
    assert code == 0, err


@pytest.mark.parametrize("setting, needle", [
    ("min_brain_fraction=1.0", "no slice to evaluate"),
    ("scales=[.nan]", "scales must be numbers from 1"),
    ("scales=[0.001]", "scales must be numbers from 1"),
    ("max_slices=-5", "max_slices must be"),
    ("slice_step=0", "slice_step must be"),
])
def test_evaluation_that_selects_nothing_or_has_absurd_numbers(tmp_path, capsys, setting,
                                                               needle):
    code, _, err = run(capsys, "evaluate", "-o", tmp_path / "res", "-q", "--set", setting,
                       "--set", "dataset.shape=[48,48,8]", "--set", "methods=[{name: cubic}]",
                       "--set", "scales=[2]" if "scales" not in setting else "figure_scale=2")
    one_line_error(code, err, needle)
    assert not (tmp_path / "res").exists()


def test_evaluation_report_is_replaced_with_overwrite(tmp_path, capsys):
    (tmp_path / "table.md").write_text("an earlier report\n")
    code, out, err = run(capsys, "evaluate", "-o", tmp_path, "-q", "--overwrite", "--set",
                         "dataset.shape=[48,48,8]", "--set", "dataset.voxel_size=[4,4,16]",
                         "--set", "methods=[{name: cubic}]", "--set", "scales=[2]", "--set",
                         "figure_scale=2", "--set", "max_slices=1")
    assert code == 0, err
    assert "| cubic |" in (tmp_path / "table.md").read_text()


def proc_catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (Linux: SigCgt in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines()
                if line.startswith("SigCgt:"))
    return bool(mask >> (signum - 1) & 1)


def stop_once_it_catches(proc: subprocess.Popen, signum: int) -> None:
    """Poll (every 0.2 ms) until ``proc`` handles ``signum``, then stop it (SIGSTOP)."""
    deadline = time.monotonic() + 60
    while not proc_catches(proc.pid, signum):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"mrisr never handled signal {signum}")
        time.sleep(0.0002)
    os.kill(proc.pid, signal.SIGSTOP)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_the_command_starts(tmp_path, sig):
    """Ctrl-C or SIGTERM at any instant from mrisr's first statements: its handlers are
    installed before the imports of a cold start (numpy is not loaded yet when they are), and
    a signal then, or at any later moment of the start, gives one line and the exit status."""
    volume(tmp_path / "in.nii.gz")
    argv = ("upscale", tmp_path / "in.nii.gz", "--scale", "2", "--model", "cubic", "-o",
            tmp_path / "o.nii.gz", "-q", "--overwrite")
    early = False
    for delay in (None, None, None, 0.0, 0.02, 0.1, 0.3):
        proc = start(*argv)
        stop_once_it_catches(proc, signal.SIGTERM)  # SIGTERM is mrisr's, not Python's
        if delay is None:  # the instant the handlers are in place: before numpy?
            early = early or "_multiarray_umath" not in Path(f"/proc/{proc.pid}/maps").read_text()
        os.kill(proc.pid, signal.SIGCONT)
        if delay:
            time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0 and delay:  # finished first (a fast machine)
            continue
        assert proc.returncode == 128 + sig, (delay, proc.returncode, err)
        assert err.strip() == "mrisr: interrupted", (delay, err)
    # Three tries, so that a test process descheduled at the wrong moment does not fail it.
    assert early, "the signal handlers were installed only after numpy was imported"
    assert not [n for n in os.listdir(tmp_path) if "mrisr" in n or ".part" in n]
