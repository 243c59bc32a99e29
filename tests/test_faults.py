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
    assert len(left) == 3 and ".sr.nii.gz.mrisr-lock" in left  # .part, scratch folder, lock
    code, _, err = run(capsys, "upscale", volume(tmp_path / "small.nii.gz"), "--scale", "2",
                       "--model", "cubic", "-o", out / "sr.nii.gz", "-q")
    assert code == 0, err
    assert "removed 3 temporary file(s)" in err
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
