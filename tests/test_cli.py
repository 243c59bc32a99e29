import subprocess
import sys

import numpy as np
import pytest

from mrisr.cli.main import main
from mrisr.io import load_nifti, save_nifti


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *needles):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mrisr: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def volume(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "t2.nii.gz"
    save_nifti(rng.random((24, 20, 8)).astype(np.float32) + 0.1, np.diag([1, 1, 3, 1.0]), path)
    return path


def test_degrade_writes_lr_volume_with_fov_affine(tmp_path, volume, capsys):
    out = tmp_path / "lr.nii.gz"
    code, stdout, _ = run(capsys, "degrade", str(volume), "-o", str(out), "--scale", "2,2,1")
    assert code == 0 and "voxel size 2, 2, 3 mm" in stdout
    lr = load_nifti(out)
    assert lr.data.shape == (12, 10, 8)
    np.testing.assert_allclose(lr.affine[:3, 3], [0.5, 0.5, 0.0])


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, volume, capsys):
    out = tmp_path / "out.nii.gz"
    missing = tmp_path / "missing.nii.gz"
    code, _, err = run(capsys, "degrade", str(missing), "-o", str(out), "--scale", "2")
    one_line_error(code, err, str(missing), "not found")
    (tmp_path / "trunc.nii.gz").write_bytes(volume.read_bytes()[:100])
    code, _, err = run(capsys, "degrade", str(tmp_path / "trunc.nii.gz"), "-o", str(out),
                       "--scale", "2")
    one_line_error(code, err, "trunc.nii.gz", "cannot read")
    nan = np.ones((8, 8, 8), np.float32)
    nan[0, 0, 0] = np.inf
    save_nifti(nan, np.eye(4), tmp_path / "nan.nii")
    code, _, err = run(capsys, "degrade", str(tmp_path / "nan.nii"), "-o", str(out),
                       "--scale", "2")
    one_line_error(code, err, "nan.nii", "NaN/Inf")
    code, _, err = run(capsys, "degrade", str(volume), "-o", str(volume), "--scale", "2",
                       "--overwrite")
    one_line_error(code, err, "overwrite an input")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.nii", "t2.nii.gz",
                                                          "trunc.nii.gz"]


@pytest.mark.parametrize("scale", ["0", "-2", "abc"])
def test_bad_scales_are_rejected_by_the_parser(tmp_path, volume, capsys, scale):
    with pytest.raises(SystemExit) as info:
        main(["degrade", str(volume), "-o", str(tmp_path / "o.nii"), "--scale", scale])
    assert info.value.code == 2
    assert "scale" in capsys.readouterr().err


def test_existing_output_needs_overwrite(tmp_path, volume, capsys):
    out = tmp_path / "lr.nii.gz"
    assert run(capsys, "degrade", str(volume), "-o", str(out), "--scale", "2")[0] == 0
    code, _, err = run(capsys, "degrade", str(volume), "-o", str(out), "--scale", "2")
    one_line_error(code, err, "exists")
    assert run(capsys, "degrade", str(volume), "-o", str(out), "--scale", "3",
               "--overwrite")[0] == 0


def test_evaluate_config_errors(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: {kind: phantom}\nscalez: [2]\n")
    code, _, err = run(capsys, "evaluate", str(cfg), "-o", str(tmp_path / "res"))
    one_line_error(code, err, "c.yaml", "unknown key 'scalez'")
    cfg.write_text("dataset: {kind: brats, root: /nonexistent/brats}\n")
    code, _, err = run(capsys, "evaluate", str(cfg), "-o", str(tmp_path / "res"))
    one_line_error(code, err, "/nonexistent/brats", "not found")
    code, _, err = run(capsys, "evaluate", str(tmp_path / "none.yaml"))
    one_line_error(code, err, "none.yaml")
    assert not (tmp_path / "res").exists()


def test_evaluate_embedded_default_end_to_end(tmp_path, capsys):
    code, out, _ = run(capsys, "evaluate", "-q", "-o", str(tmp_path / "r"), "--set",
                       "max_slices=2", "--set", "scales=[2,4]")
    assert code == 0 and "| kspace_zerofill |" in out
    assert (tmp_path / "r" / "comparison.png").exists()


def test_console_entry_point_and_help():
    proc = subprocess.run([sys.executable, "-m", "mrisr.cli.main", "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("evaluate", "degrade", "phantom", "info"):
        assert command in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "mrisr.cli.main", "info"], capture_output=True,
                          text=True)
    assert "kspace_zerofill" in proc.stdout and "dualarbnet" in proc.stdout
