"""BIDS datasets in and derivatives out (`upscale --bids`), batches split into parts
(`--shard`), and error lines that say what to do."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mrisr.cli.main import main
from mrisr.data.phantom import make_brain_phantom
from mrisr.degradation import degrade_volume
from mrisr.errors import InputError
from mrisr.inference.batch import resolve_shard, upscale_batch
from mrisr.io import load_nifti, save_nifti

VALIDATOR = shutil.which("bids-validator-deno") or shutil.which(
    "bids-validator-deno", path=str(__import__("pathlib").Path(sys.executable).parent))


def _scan(seed: int):
    """(thick-slice T2, T1, T1 affine, T2 affine) of a 32 x 32 x 24 phantom, 2 mm voxels."""
    ph = make_brain_phantom(shape=(32, 32, 24), voxel_size=(2.0, 2.0, 2.0), seed=seed)
    lr, lr_affine = degrade_volume(ph.t2w, ph.affine, (1, 1, 2), kind="thick_slice")
    return lr, lr_affine, ph.t1w, ph.affine


@pytest.fixture
def bids_root(tmp_path):
    """A BIDS dataset made from the phantom: sub-01 (T2w, FLAIR, T1w), sub-02 with a session
    and an acq entity (T2w, T1w), sub-03 (T2w only)."""
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "phantom", "BIDSVersion": "1.9.0", "Authors": ["mrisr tests"]}))
    layout = {"sub-01/anat/sub-01": ("T2w", "FLAIR", "T1w"),
              "sub-02/ses-1/anat/sub-02_ses-1": ("acq-thick_T2w", "T1w"),
              "sub-03/anat/sub-03": ("T2w",)}
    for seed, (stem, images) in enumerate(layout.items()):
        lr, lr_affine, t1, t1_affine = _scan(seed)
        (root / stem).parent.mkdir(parents=True)
        for image in images:
            data, affine = (t1, t1_affine) if image == "T1w" else (lr, lr_affine)
            save_nifti(data, affine, root / f"{stem}_{image}.nii.gz")
    return root


def test_bids_jobs_pair_each_target_with_its_sessions_reference(bids_root, tmp_path):
    pytest.importorskip("ancpbids")
    from mrisr.io.bids import plan_bids_jobs

    out = bids_root / "derivatives" / "mrisr"
    jobs = plan_bids_jobs(bids_root, out, suffixes=["T2w", "FLAIR"], ref_suffix="T1w")
    pairs = {j.output.relative_to(out).as_posix(): j.reference and j.reference.name
             for j in jobs}
    assert pairs == {
        "sub-01/anat/sub-01_desc-sr_FLAIR.nii.gz": "sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_desc-sr_T2w.nii.gz": "sub-01_T1w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_acq-thick_desc-sr_T2w.nii.gz": "sub-02_ses-1_T1w.nii.gz",
        "sub-03/anat/sub-03_desc-sr_T2w.nii.gz": None}
    assert jobs[0].metadata["Sources"] == ["bids:raw:sub-01/anat/sub-01_FLAIR.nii.gz"]


def test_bids_upscale_writes_derivatives_and_a_rerun_skips_them(bids_root, capsys):
    pytest.importorskip("ancpbids")
    out = bids_root / "derivatives" / "mrisr"
    argv = ["upscale", str(bids_root), "--bids", "--suffix", "T2w", "--ref-suffix", "T1w",
            "--scale", "1,1,2", "--model", "cubic", "-o", str(out), "--qc", "-q"]
    assert main(argv) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz"))
    assert written == ["sub-01/anat/sub-01_desc-sr_T2w.nii.gz",
                       "sub-02/ses-1/anat/sub-02_ses-1_acq-thick_desc-sr_T2w.nii.gz",
                       "sub-03/anat/sub-03_desc-sr_T2w.nii.gz"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "mrisr"
    assert (out / description["DatasetLinks"]["raw"]).resolve() == bids_root.resolve()
    sidecar = json.loads((out / "sub-01/anat/sub-01_desc-sr_T2w.json").read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-01/anat/sub-01_T2w.nii.gz"]
    assert sidecar["SkullStripped"] is False and sidecar["model"] == "cubic"
    assert (out / "sub-01/anat/sub-01_desc-sr_T2w_qc.png").is_file()
    assert "qc*.html" in (out / ".bidsignore").read_text()
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    capsys.readouterr()
    # A re-run writes nothing; an output removed (or never finished) is written again.
    (out / "sub-03/anat/sub-03_desc-sr_T2w.nii.gz").unlink()
    assert main(argv) == 0
    assert "2 output(s) exist from an earlier run, skipped" in capsys.readouterr().err
    for path, mtime in first.items():
        if path.exists() and "sub-03" not in path.name:
            assert path.stat().st_mtime_ns == mtime
    assert (out / "sub-03/anat/sub-03_desc-sr_T2w.nii.gz").is_file()
    page = (out / "qc.html").read_text()
    assert page.count("written by an earlier run") == 2 and "sub-03_desc-sr_T2w.nii.gz" in page


@pytest.mark.skipif(VALIDATOR is None, reason="no BIDS validator (pip install "
                    "bids-validator-deno)")
def test_bids_derivatives_pass_the_bids_validator(bids_root):
    pytest.importorskip("ancpbids")
    out = bids_root / "derivatives" / "mrisr"
    assert main(["upscale", str(bids_root), "--bids", "--suffix", "T2w,FLAIR", "--ref-suffix",
                 "T1w", "--scale", "1,1,2", "--model", "cubic", "-o", str(out), "--qc",
                 "-q"]) == 0
    for root in (out, bids_root):  # the derivative dataset alone, and inside the raw one
        result = subprocess.run([VALIDATOR, "--json", str(root)], capture_output=True,
                                text=True, timeout=300)
        issues = json.loads(result.stdout)["issues"]["issues"]
        errors = [i for i in issues if i["severity"] == "error"]
        assert not errors, errors


def _folder(tmp_path, n=5):
    folder = tmp_path / "scans"
    folder.mkdir()
    for seed in range(n):
        lr, lr_affine, _, _ = _scan(seed)
        save_nifti(lr, lr_affine, folder / f"scan{seed}.nii.gz")
    return folder


def test_shards_together_write_exactly_the_unsharded_outputs(tmp_path):
    folder = _folder(tmp_path)
    options = dict(scale=(1, 1, 2), model="cubic", qc=True)
    whole = upscale_batch(folder, tmp_path / "whole", **options)
    parts = [upscale_batch(folder, tmp_path / "parts", shard=(k, 3), **options)
             for k in (1, 2, 3)]
    names = [sorted(p.name for p in part.written) for part in parts]
    assert names == [["scan0.nii.gz", "scan3.nii.gz"], ["scan1.nii.gz", "scan4.nii.gz"],
                     ["scan2.nii.gz"]]
    assert sum(len(n) for n in names) == len(whole.written) == 5
    pages = {p.name for p in (tmp_path / "parts").glob("*.html")}
    assert pages == {"qc-1-of-3.html", "qc-2-of-3.html", "qc-3-of-3.html"}
    files = {p.name for p in (tmp_path / "whole").iterdir()} - {"qc.html"}
    assert files == {p.name for p in (tmp_path / "parts").iterdir()} - pages
    for name in files:
        if name.endswith(".nii.gz"):
            a = load_nifti(tmp_path / "whole" / name).data
            b = load_nifti(tmp_path / "parts" / name).data
            assert np.array_equal(a, b)


def test_shard_from_slurm_array_variables(tmp_path, monkeypatch, capsys):
    env = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10",
           "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert resolve_shard("slurm", env) == (2, 4)
    assert resolve_shard("slurm", {"SLURM_ARRAY_TASK_ID": "0",
                                   "SLURM_ARRAY_TASK_COUNT": "3"}) == (1, 3)
    assert resolve_shard("3/3") == (3, 3) and resolve_shard(None) is None
    for bad in ("0/3", "4/3", "x", "2-3"):
        with pytest.raises(InputError, match=r"--shard: expected K/N"):
            resolve_shard(bad)
    folder = _folder(tmp_path, n=3)
    for key, value in {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1",
                       "SLURM_ARRAY_TASK_COUNT": "3"}.items():
        monkeypatch.setenv(key, value)
    assert main(["upscale", str(folder), "--scale", "1,1,2", "--model", "cubic",
                 "-o", str(tmp_path / "out"), "--shard", "slurm", "-q"]) == 0
    assert "part 3 of 3: 1 of the batch's 3 input(s)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["scan2.nii.gz"]


@pytest.mark.parametrize("argv, fix", [
    (["--suffix", "T2w"], "add --bids"),
    (["--ref-suffix", "T1w"], "add --bids"),
    (["--shard", "4/3"], "e.g. --shard 2/8"),
    (["--shard", "slurm"], "sbatch --array"),
    (["--bids"], "drop --bids"),
    (["--model", "no_such_model"], "give --model"),
    (["--model", "cubic", "--adapt", "5"], "drop --adapt"),
    (["--adapt", "-2"], "e.g. --adapt 40"),
])
def test_errors_that_name_an_option_say_what_to_do(tmp_path, monkeypatch, capsys, argv, fix):
    for key in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(key, raising=False)
    folder = _folder(tmp_path, n=1)
    try:
        rc = main(["upscale", str(folder / "scan0.nii.gz"), "--scale", "1,1,2",
                   "-o", str(tmp_path / "out.nii.gz"), "-q", *argv])
    except SystemExit as exc:  # argparse's own checks
        rc = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("mrisr: error:")
    assert fix in err[0], err[0]
